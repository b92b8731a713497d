// CUDA indexing, cumulative scans and random draws. Indexing kernels check every index and
// report the first bad one through a device flag (the host turns it into coil::Error); the
// accumulating ones add with atomics. Random draws are ops/cpu/random.cpp's, counter for counter.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "../kernel_ops.h"
#include "device_util.cuh"
#include "launch.h"

namespace coil::cuda {
namespace {

__device__ bool index_ok(int64_t v, int64_t n, int64_t* bad) {
  if (v >= 0 && v < n) return true;
  if (atomicCAS(reinterpret_cast<unsigned long long*>(bad), 0ull, 1ull) == 0ull) bad[1] = v;
  return false;
}

// Copies one element of `bytes` bytes.
__device__ void copy_elem(char* dst, const char* src, int bytes) {
  switch (bytes) {
    case 1:
      *dst = *src;
      return;
    case 2:
      *reinterpret_cast<uint16_t*>(dst) = *reinterpret_cast<const uint16_t*>(src);
      return;
    case 4:
      *reinterpret_cast<uint32_t*>(dst) = *reinterpret_cast<const uint32_t*>(src);
      return;
    default:
      *reinterpret_cast<uint64_t*>(dst) = *reinterpret_cast<const uint64_t*>(src);
  }
}

__global__ void index_select_k(IndexDims d, int eb, char* out, const char* x, const int64_t* index,
                               int64_t* bad) {
  COIL_GRID_LOOP(e, d.outer * d.m * d.inner) {
    const int64_t i = e % d.inner, r = e / d.inner, j = r % d.m, o = r / d.m;
    const int64_t v = index[j];
    if (!index_ok(v, d.n, bad)) continue;
    copy_elem(out + e * eb, x + ((o * d.n + v) * d.inner + i) * eb, eb);
  }
}

__global__ void gather_k(IndexDims d, int eb, char* out, const char* x, const int64_t* index,
                         int64_t* bad) {
  COIL_GRID_LOOP(e, d.outer * d.m * d.inner) {
    const int64_t i = e % d.inner, o = e / (d.m * d.inner);
    const int64_t v = index[e];
    if (!index_ok(v, d.n, bad)) continue;
    copy_elem(out + e * eb, x + ((o * d.n + v) * d.inner + i) * eb, eb);
  }
}

template <class T>
__device__ void atomic_add(T* p, T v) {
  if constexpr (std::is_same_v<T, int64_t>) {
    atomicAdd(reinterpret_cast<unsigned long long*>(p), static_cast<unsigned long long>(v));
  } else if constexpr (std::is_same_v<T, uint8_t>) {  // bool: logical or
    if (v) {
      const uintptr_t a = reinterpret_cast<uintptr_t>(p);
      atomicOr(reinterpret_cast<unsigned*>(a & ~uintptr_t(3)), 1u << ((a & 3) * 8));
    }
  } else {
    atomicAdd(p, v);
  }
}

template <class T>
__global__ void index_add_k(IndexDims d, T* out, const T* src, const int64_t* index, T alpha,
                            bool unit, int64_t* bad) {
  COIL_GRID_LOOP(e, d.outer * d.m * d.inner) {
    const int64_t i = e % d.inner, r = e / d.inner, j = r % d.m, o = r / d.m;
    const int64_t v = index[j];
    if (!index_ok(v, d.n, bad)) continue;
    T add = src[e];
    if constexpr (std::is_same_v<T, uint8_t>)
      add = add && alpha;
    else if (!unit)
      add = static_cast<T>(alpha * add);
    atomic_add(out + (o * d.n + v) * d.inner + i, add);
  }
}

template <class T>
__global__ void scatter_add_k(IndexDims d, T* out, const T* src, const int64_t* index,
                              int64_t* bad) {
  COIL_GRID_LOOP(e, d.outer * d.m * d.inner) {
    const int64_t i = e % d.inner, o = e / (d.m * d.inner);
    const int64_t v = index[e];
    if (!index_ok(v, d.n, bad)) continue;
    atomic_add(out + (o * d.n + v) * d.inner + i, src[e]);
  }
}

__global__ void one_hot_k(int64_t* out, const int64_t* ids, int64_t count, int64_t classes,
                          int64_t* bad) {
  COIL_GRID_LOOP(e, count * classes) {
    const int64_t r = e / classes, c = e - r * classes;
    const int64_t v = ids[r];
    if (c == 0 && !index_ok(v, classes, bad)) continue;
    out[e] = v == c;
  }
}

template <class T>
__global__ void cumulative_k(ScanOp op, T* out, const T* x, const T* g, int64_t outer, int64_t n,
                             int64_t inner, bool reverse) {
  using A = std::conditional_t<std::is_floating_point_v<T>, double, T>;
  COIL_GRID_LOOP(col, outer * inner) {
    const int64_t r = col / inner, c = col - r * inner;
    const T* xr = x + r * n * inner + c;
    T* orow = out + r * n * inner + c;
    if (op == ScanOp::cumprod_grad) {  // dx_k = P_{k-1} S_k, S_k = g_k + x_{k+1} S_{k+1}
      const T* gr = g + r * n * inner + c;
      A acc = 0;
      for (int64_t t = n - 1; t >= 0; --t) {
        const A next_x = t + 1 < n ? static_cast<A>(xr[(t + 1) * inner]) : A(0);
        acc = static_cast<A>(gr[t * inner]) + next_x * acc;
        orow[t * inner] = static_cast<T>(acc);
      }
      A pre = 1;
      for (int64_t t = 0; t < n; ++t) {
        orow[t * inner] = static_cast<T>(pre * static_cast<A>(orow[t * inner]));
        pre *= static_cast<A>(xr[t * inner]);
      }
      continue;
    }
    A acc = op == ScanOp::cumsum ? A(0) : A(1);
    for (int64_t s = 0; s < n; ++s) {
      const int64_t t = reverse ? n - 1 - s : s;
      const A v = static_cast<A>(xr[t * inner]);
      acc = op == ScanOp::cumsum ? acc + v : acc * v;
      orow[t * inner] = static_cast<T>(acc);
    }
  }
}

// ---- Philox4x32-10, as core/rng.h ----
struct U4 {
  uint32_t v[4];
};
__device__ U4 philox(uint64_t seed, uint64_t counter) {
  uint32_t c0 = static_cast<uint32_t>(counter), c1 = static_cast<uint32_t>(counter >> 32), c2 = 0,
           c3 = 0;
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int r = 0; r < 10; ++r) {
    const uint32_t hi0 = __umulhi(0xD2511F53u, c0), lo0 = 0xD2511F53u * c0;
    const uint32_t hi1 = __umulhi(0xCD9E8D57u, c2), lo1 = 0xCD9E8D57u * c2;
    const uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return {{c0, c1, c2, c3}};
}
__device__ double unit_f64(uint32_t hi, uint32_t lo) {
  const uint64_t v = (static_cast<uint64_t>(hi) << 21) ^ lo;
  return static_cast<double>(v & ((uint64_t(1) << 53) - 1)) * (1.0 / 9007199254740992.0);
}

template <class T>
__device__ void store_value(T* o, int64_t i, double v) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>)
    o[i] = __float2bfloat16_rn(static_cast<float>(v));
  else if constexpr (std::is_same_v<T, __half>)
    o[i] = __float2half_rn(static_cast<float>(v));
  else
    o[i] = static_cast<T>(v);
}

template <class T>
__global__ void random_k(RandomKind kind, T* out, int64_t n, double a, double b, uint64_t seed,
                         uint64_t offset, uint64_t first) {
  if (kind == RandomKind::normal) {  // elements 2j, 2j+1 share counter offset + j
    const int64_t f = static_cast<int64_t>(first), j0 = f / 2, j1 = (f + n - 1) / 2 + 1;
    COIL_GRID_LOOP(k, j1 - j0) {
      const int64_t j = j0 + k;
      const U4 r = philox(seed, offset + static_cast<uint64_t>(j));
      const double u1 = 1.0 - unit_f64(r.v[0], r.v[1]);
      const double u2 = 6.283185307179586 * unit_f64(r.v[2], r.v[3]);
      const double rad = b * sqrt(-2.0 * log(u1));
      if (2 * j >= f) store_value(out, 2 * j - f, a + rad * cos(u2));
      if (2 * j + 1 < f + n) store_value(out, 2 * j + 1 - f, a + rad * sin(u2));
    }
    return;
  }
  COIL_GRID_LOOP(i, n) {
    const U4 r = philox(seed, offset + first + static_cast<uint64_t>(i));
    double v = 0;
    if (kind == RandomKind::uniform) {
      v = a + (b - a) * unit_f64(r.v[0], r.v[1]);
    } else if (kind == RandomKind::randint) {
      const uint64_t span = static_cast<uint64_t>(b - a);
      const uint64_t x = (static_cast<uint64_t>(r.v[0]) << 32) | r.v[1];
      v = a + static_cast<double>(x % span);
    } else {
      v = unit_f64(r.v[0], r.v[1]) < a ? 1.0 : 0.0;
    }
    store_value(out, i, v);
  }
}

template <class T, class C>
__global__ void dropout_k(T* out, uint8_t* mask, const T* in, int64_t n, uint64_t threshold,
                          C scale, uint64_t seed, uint64_t offset, uint64_t first) {
  COIL_GRID_LOOP(i, n) {
    const uint64_t e = first + static_cast<uint64_t>(i);
    const U4 r = philox(seed, offset + e / 4);
    const bool keep = r.v[e % 4] >= threshold;
    mask[i] = keep;
    out[i] = keep ? static_cast<T>(static_cast<C>(in[i]) * scale) : static_cast<T>(C(0));
  }
}

// Does a come strictly before b in descending order (NaN the largest)?
template <class T>
__device__ bool greater(T a, T b) {
  if constexpr (std::is_floating_point_v<T>) {
    if (a != a) return b == b;
    if (b != b) return false;
  }
  return a > b;
}

template <class T>
__global__ void sort_rank_k(T* values, int64_t* indices, const T* in, int64_t outer, int64_t n,
                            int64_t k, bool descending) {
  COIL_GRID_LOOP(e, outer * n) {
    const int64_t r = e / n, i = e - r * n;
    const T* row = in + r * n;
    const T v = row[i];
    int64_t rank = 0;
    for (int64_t j = 0; j < n; ++j) {
      const T w = row[j];
      const bool before = descending ? greater(w, v) : greater(v, w);
      const bool tie = !greater(w, v) && !greater(v, w);
      rank += before || (tie && j < i);
    }
    if (rank < k) {
      values[r * k + rank] = v;
      indices[r * k + rank] = i;
    }
  }
}

}  // namespace

void launch_sort(Ty t, void* values, int64_t* indices, const void* in, int64_t outer, int64_t n,
                 int64_t k, bool descending, cudaStream_t s) {
  if (outer * n == 0 || k == 0) return;
  by_type</*kWithBool=*/true>(t, [&](auto z) {
    using T = decltype(z);
    sort_rank_k<T><<<blocks_for(outer * n), 256, 0, s>>>(
        static_cast<T*>(values), indices, static_cast<const T*>(in), outer, n, k, descending);
  });
}

void launch_index_select(const IndexDims& d, int eb, void* out, const void* x, const int64_t* index,
                         int64_t* bad, cudaStream_t s) {
  const int64_t total = d.outer * d.m * d.inner;
  if (total == 0) return;
  index_select_k<<<blocks_for(total), 256, 0, s>>>(d, eb, static_cast<char*>(out),
                                                   static_cast<const char*>(x), index, bad);
}

void launch_gather(const IndexDims& d, int eb, void* out, const void* x, const int64_t* index,
                   int64_t* bad, cudaStream_t s) {
  const int64_t total = d.outer * d.m * d.inner;
  if (total == 0) return;
  gather_k<<<blocks_for(total), 256, 0, s>>>(d, eb, static_cast<char*>(out),
                                             static_cast<const char*>(x), index, bad);
}

void launch_index_add(Ty t, const IndexDims& d, void* out, const void* src, const int64_t* index,
                      double alpha, int64_t* bad, cudaStream_t s) {
  const int64_t total = d.outer * d.m * d.inner;
  if (total == 0) return;
  by_type</*kWithBool=*/true>(t, [&](auto z) {
    using T = decltype(z);
    index_add_k<T><<<blocks_for(total), 256, 0, s>>>(d, static_cast<T*>(out),
                                                     static_cast<const T*>(src), index,
                                                     static_cast<T>(alpha), alpha == 1, bad);
  });
}

void launch_scatter_add(Ty t, const IndexDims& d, void* out, const void* src, const int64_t* index,
                        int64_t* bad, cudaStream_t s) {
  const int64_t total = d.outer * d.m * d.inner;
  if (total == 0) return;
  by_type</*kWithBool=*/true>(t, [&](auto z) {
    using T = decltype(z);
    scatter_add_k<T><<<blocks_for(total), 256, 0, s>>>(d, static_cast<T*>(out),
                                                       static_cast<const T*>(src), index, bad);
  });
}

void launch_one_hot(int64_t* out, const int64_t* ids, int64_t count, int64_t classes, int64_t* bad,
                    cudaStream_t s) {
  if (count * classes == 0) return;
  one_hot_k<<<blocks_for(count * classes), 256, 0, s>>>(out, ids, count, classes, bad);
}

void launch_cumulative(int op, Ty t, void* out, const void* in, const void* aux, int64_t outer,
                       int64_t n, int64_t inner, bool reverse, cudaStream_t s) {
  if (outer * n * inner == 0) return;
  if (t == Ty::b8) return;
  by_type(t, [&](auto z) {
    using T = decltype(z);
    if constexpr (!std::is_same_v<T, uint8_t>)
      cumulative_k<T><<<blocks_for(outer * inner), 256, 0, s>>>(
          static_cast<ScanOp>(op), static_cast<T*>(out), static_cast<const T*>(in),
          static_cast<const T*>(aux), outer, n, inner, reverse);
  });
}

void launch_random(int kind, Ty t, void* out, int64_t n, double a, double b, uint64_t seed,
                   uint64_t offset, uint64_t first, cudaStream_t s) {
  if (n == 0) return;
  const RandomKind k = static_cast<RandomKind>(kind);
  auto run = [&](auto z) {
    using T = decltype(z);
    random_k<T>
        <<<blocks_for(n), 256, 0, s>>>(k, static_cast<T*>(out), n, a, b, seed, offset, first);
  };
  if (t == Ty::bf16)
    run(__nv_bfloat16{});
  else if (t == Ty::f16)
    run(__half{});
  else
    by_type</*kWithBool=*/true>(t, run);
}

void launch_dropout(Ty t, void* out, uint8_t* mask, const void* in, int64_t n, double p,
                    double scale, uint64_t seed, uint64_t offset, uint64_t first, cudaStream_t s) {
  if (n == 0) return;
  const uint64_t threshold = static_cast<uint64_t>(ceil(p * 4294967296.0));
  if (t == Ty::f64)
    dropout_k<double, double><<<blocks_for(n), 256, 0, s>>>(static_cast<double*>(out), mask,
                                                            static_cast<const double*>(in), n,
                                                            threshold, scale, seed, offset, first);
  else if (t == Ty::f32)
    dropout_k<float, float><<<blocks_for(n), 256, 0, s>>>(
        static_cast<float*>(out), mask, static_cast<const float*>(in), n, threshold,
        static_cast<float>(scale), seed, offset, first);
  else if (t == Ty::bf16)
    dropout_k<__nv_bfloat16, float><<<blocks_for(n), 256, 0, s>>>(
        static_cast<__nv_bfloat16*>(out), mask, static_cast<const __nv_bfloat16*>(in), n, threshold,
        static_cast<float>(scale), seed, offset, first);
  else if (t == Ty::f16)
    dropout_k<__half, float><<<blocks_for(n), 256, 0, s>>>(
        static_cast<__half*>(out), mask, static_cast<const __half*>(in), n, threshold,
        static_cast<float>(scale), seed, offset, first);
}

}  // namespace coil::cuda
