// Runs CUDA kernel source on the CPU, so that a kernel's indexing, tiling and synchronisation are
// tested on machines without a GPU: one std::thread per CUDA thread of a block, __syncthreads as
// a std::barrier, blocks one after another (so `__shared__` arrays can be statics), atomicAdd as
// std::atomic_ref. It checks the algorithm, not the GPU: timing, occupancy and the hardware's own
// rounding of exp are not modelled. Include it before the kernel source (ops/cuda/*.cuh written
// for it); kernels may use threadIdx, blockIdx, blockDim, gridDim, __shared__, dynamic shared
// memory through the source's own macro, __syncthreads and atomicAdd, nothing warp-level.
#pragma once
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <thread>
#include <utility>
#include <vector>

namespace coil::emu {

struct uint3 {
  unsigned x = 0, y = 0, z = 0;
};
struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

inline thread_local uint3 thread_idx, block_idx;
inline dim3 block_dim, grid_dim;
inline thread_local std::barrier<>* block_barrier = nullptr;
inline std::vector<double> shared_block;  // the launch's dynamic shared memory

inline double* dynamic_shared() { return shared_block.data(); }
inline void syncthreads() { block_barrier->arrive_and_wait(); }

template <class T>
T atomic_add(T* p, T v) {
  return std::atomic_ref<T>(*p).fetch_add(v);
}

// kernel<<<grid, block, smem>>>(args...): every block in turn, each on block.x * block.y *
// block.z threads that meet at a barrier between blocks.
template <class... P, class... A>
void launch(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, A&&... args) {
  const unsigned nt = block.x * block.y * block.z;
  if (nt == 0 || grid.x * grid.y * grid.z == 0) return;
  block_dim = block;
  grid_dim = grid;
  shared_block.assign((smem + sizeof(double) - 1) / sizeof(double), 0.0);
  std::barrier<> bar(nt);
  std::vector<std::thread> threads;
  threads.reserve(nt);
  for (unsigned i = 0; i < nt; ++i)
    threads.emplace_back([&, i] {
      block_barrier = &bar;
      thread_idx = {i % block.x, i / block.x % block.y, i / (block.x * block.y)};
      for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
          for (unsigned bx = 0; bx < grid.x; ++bx) {
            block_idx = {bx, by, bz};
            kernel(static_cast<P>(args)...);
            bar.arrive_and_wait();  // the block's shared memory is the next block's
          }
    });
  for (std::thread& t : threads) t.join();
}

}  // namespace coil::emu

using coil::emu::dim3;
#define threadIdx (::coil::emu::thread_idx)
#define blockIdx (::coil::emu::block_idx)
#define blockDim (::coil::emu::block_dim)
#define gridDim (::coil::emu::grid_dim)
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(n)
#define __shared__ static
#define __syncthreads() ::coil::emu::syncthreads()
#define atomicAdd(p, v) ::coil::emu::atomic_add(p, v)
