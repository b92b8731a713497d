// What CUDA kernel source that the tests also run on the CPU (tests/cuda/cuda_emu.h, included
// first there) writes instead of CUDA's own syntax: launches, dynamic shared memory, unrolling.
// Such source (ssd_chunked.cuh, selective_scan.cuh) otherwise uses threadIdx, blockIdx,
// blockDim, gridDim, __shared__, __syncthreads, atomicAdd, __shfl_xor_sync, float2 / float4 and
// the wrappers of its own for inline PTX, each with an #else for the emulation.
#pragma once

#ifdef __CUDACC__
#include <cuda_runtime.h>
#define COIL_LAUNCH(kernel, grid, block, smem, stream, ...) \
  kernel<<<grid, block, smem, stream>>>(__VA_ARGS__)
#define COIL_DYNAMIC_SHARED(type, name) extern __shared__ type name[]
#define COIL_UNROLL _Pragma("unroll")
#else
#define COIL_LAUNCH(kernel, grid, block, smem, stream, ...) \
  ::coil::emu::launch(kernel, grid, block, smem, __VA_ARGS__)
#define COIL_DYNAMIC_SHARED(type, name) \
  type* name = reinterpret_cast<type*>(::coil::emu::dynamic_shared())
#define COIL_UNROLL
#endif
