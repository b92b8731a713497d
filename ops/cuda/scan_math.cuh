// The scalar math both scans' kernel source shares (selective_scan.cuh, ssd_chunked.cuh): the
// step's softplus and the gate's sigmoid, in f32, as the CPU kernels compute them.
#pragma once
#include <cmath>

#include "kernel_source.cuh"

namespace coil::cuda {
namespace {

// The step's delta after bias and softplus (threshold 20) and d(delta)/d(raw).
__device__ __forceinline__ float softplus_of(float raw, bool on, float* deriv) {
  if (!on || raw > 20.f) {
    if (deriv) *deriv = 1.f;
    return raw;
  }
  const float ex = expf(raw);
  if (deriv) *deriv = ex / (1.f + ex);
  return log1pf(ex);
}

__device__ __forceinline__ float sigmoid_of(float v) { return 1.f / (1.f + expf(-v)); }

}  // namespace
}  // namespace coil::cuda
