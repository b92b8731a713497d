// Runs CUDA kernel source on the CPU, so that a kernel's indexing, tiling and synchronisation are
// tested on machines without a GPU: one std::thread per CUDA thread of a block, __syncthreads as
// a std::barrier, blocks one after another (so `__shared__` arrays can be statics), atomicAdd as
// std::atomic_ref. It checks the algorithm, not the GPU: timing, occupancy and the hardware's own
// rounding of exp are not modelled. Include it before the kernel source (ops/cuda/*.cuh written
// for it: ops/cuda/kernel_source.cuh); kernels may use threadIdx, blockIdx, blockDim, gridDim,
// __shared__, dynamic shared memory, __syncthreads, atomicAdd, __shfl_xor_sync, float2/float4,
// and the tensor cores' tf32 mma through the source's own wrapper (mma_3xtf32_x4 below, in
// PTX's fragment layout).
#pragma once
#include <atomic>
#include <algorithm>
#include <barrier>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <memory>
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

struct float2 {
  float x, y;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
inline float2 make_float2(float x, float y) { return {x, y}; }

inline thread_local uint3 thread_idx, block_idx;
inline dim3 block_dim, grid_dim;
inline thread_local std::barrier<>* block_barrier = nullptr;
inline std::vector<double> shared_block;  // the launch's dynamic shared memory

inline double* dynamic_shared() { return shared_block.data(); }

// Warp-collective instructions: the warp's 32 threads meet at a barrier of their own and exchange
// registers through the warp's slots.
struct Warp {
  explicit Warp(unsigned lanes) : bar(lanes) {}
  std::barrier<> bar;
  uint32_t a[2][32][4] = {}, b[8][32][2] = {};  // a: hi, lo; b: hi of 4 tiles, lo of 4
  float f[32] = {};                             // __shfl_xor_sync's values
};
inline thread_local Warp* this_warp = nullptr;

// __shfl_xor_sync(mask, v, m): lane l gets lane (l ^ m)'s v (the whole warp takes part).
inline float shfl_xor_sync(unsigned, float v, int m) {
  Warp& w = *this_warp;
  const unsigned lane = thread_idx.x % 32;
  w.f[lane] = v;
  w.bar.arrive_and_wait();
  const float r = w.f[lane ^ static_cast<unsigned>(m)];
  w.bar.arrive_and_wait();
  return r;
}

inline float as_float(uint32_t r) { return std::bit_cast<float>(r); }
// cvt.rna.tf32.f32: round the low 13 mantissa bits away, to nearest, ties away from zero.
inline uint32_t tf32_rna(float x) {
  uint32_t r = std::bit_cast<uint32_t>(x);
  if ((r & 0x7f800000u) != 0x7f800000u) r += 0x1000u;  // not inf or NaN
  return r & 0xffffe000u;
}
// mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 as PTX lays out its fragments: lane l (g =
// l / 4, t = l % 4) holds A (16 x 8) at (g + 8 (r % 2), t + 4 (r / 2)) in a[r], B (8 x 8) at
// (t + 4 r, g) in b[r], and D (16 x 8) at (g + 8 (r / 2), 2 t + r % 2) in d[r]. A and B come from
// the warp's slots (ai, bi: which of them), in the order the hardware sums: k = 0 .. 7 onto d.
inline void mma_from_slots(const Warp& w, unsigned lane, int ai, int bi, float (&d)[4]) {
  const unsigned g = lane / 4, t = lane % 4;
  for (int r = 0; r < 4; ++r) {
    const unsigned row = g + 8 * (r / 2), col = 2 * t + r % 2;
    float acc = d[r];
    for (unsigned k = 0; k < 8; ++k) {
      const uint32_t a = w.a[ai][(row % 8) * 4 + k % 4][row / 8 + 2 * (k / 4)];
      const uint32_t b = w.b[bi][col * 4 + k % 4][k / 4];
      acc = std::fma(as_float(a & 0xffffe000u), as_float(b & 0xffffe000u), acc);
    }
    d[r] = acc;
  }
}
// The kernel source's mma_3xtf32: per tile q, mma(lo, hi), mma(hi, lo), mma(hi, hi), with one
// exchange for all twelve.
inline void mma_3xtf32_x4(float (&d)[4][4], const uint32_t (&ah)[4], const uint32_t (&al)[4],
                          const uint32_t (&bh)[4][2], const uint32_t (&bl)[4][2]) {
  Warp& w = *this_warp;
  const unsigned lane = thread_idx.x % 32;
  for (int r = 0; r < 4; ++r) {
    w.a[0][lane][r] = ah[r];
    w.a[1][lane][r] = al[r];
  }
  for (int q = 0; q < 4; ++q)
    for (int r = 0; r < 2; ++r) {
      w.b[q][lane][r] = bh[q][r];
      w.b[4 + q][lane][r] = bl[q][r];
    }
  w.bar.arrive_and_wait();
  for (int q = 0; q < 4; ++q) {
    mma_from_slots(w, lane, 1, q, d[q]);      // lo hi
    mma_from_slots(w, lane, 0, 4 + q, d[q]);  // hi lo
    mma_from_slots(w, lane, 0, q, d[q]);      // hi hi
  }
  w.bar.arrive_and_wait();  // every lane has read the slots before they are written again
}

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
  std::vector<std::unique_ptr<Warp>> warps;
  for (unsigned w = 0; w * 32 < nt; ++w)
    warps.push_back(std::make_unique<Warp>(std::min(32u, nt - w * 32)));
  std::vector<std::thread> threads;
  threads.reserve(nt);
  for (unsigned i = 0; i < nt; ++i)
    threads.emplace_back([&, i] {
      block_barrier = &bar;
      this_warp = warps[i / 32].get();
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
using coil::emu::float2;
using coil::emu::float4;
using coil::emu::make_float2;
#define threadIdx (::coil::emu::thread_idx)
#define blockIdx (::coil::emu::block_idx)
#define blockDim (::coil::emu::block_dim)
#define gridDim (::coil::emu::grid_dim)
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __syncthreads() ::coil::emu::syncthreads()
#define atomicAdd(p, v) ::coil::emu::atomic_add(p, v)
#define __shfl_xor_sync(mask, v, m) ::coil::emu::shfl_xor_sync(mask, v, m)
