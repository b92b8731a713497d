// CUDA reductions over the last dim of a contiguous [outer, r] view (one block of 256 threads per
// row: strided partial results, then a tree in shared memory), and softmax / log_softmax along n
// of [outer, n, inner]. Semantics as ops/cpu/reduce.cpp: float sums accumulate in double, NaN
// wins max/min (the first NaN's index for arg ops), ties keep the first index.
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <limits>

#include "../kernel_ops.h"
#include "device_util.cuh"
#include "launch.h"

namespace coil::cuda {
namespace {

constexpr int kThreads = 256;

template <class T>
struct Best {
  T v;
  int64_t i;
};

// Is candidate c better than b for max (is_max) or min, NaN first, then the first index?
template <class T>
__device__ bool better(const Best<T>& c, const Best<T>& b, bool is_max) {
  if (c.i < 0) return false;
  if (b.i < 0) return true;
  if constexpr (std::is_floating_point_v<T>) {
    const bool cn = c.v != c.v, bn = b.v != b.v;
    if (cn || bn) return cn && (!bn || c.i < b.i);
  }
  if (c.v == b.v) return c.i < b.i;
  return is_max ? c.v > b.v : c.v < b.v;
}

template <class T>
__global__ void reduce_k(int op_i, T* out, int64_t* idx, const T* in, int64_t r) {
  using A = std::conditional_t<std::is_floating_point_v<T>, double, int64_t>;
  const ReduceOp op = static_cast<ReduceOp>(op_i);
  const T* row = in + blockIdx.x * r;
  const int t = threadIdx.x;
  __shared__ A acc[kThreads];
  __shared__ Best<T> best[kThreads];
  if (op == ReduceOp::max || op == ReduceOp::min || op == ReduceOp::argmax ||
      op == ReduceOp::argmin) {
    const bool is_max = op == ReduceOp::max || op == ReduceOp::argmax;
    Best<T> b{T(0), -1};
    for (int64_t i = t; i < r; i += kThreads) {
      const Best<T> c{row[i], i};
      if (better(c, b, is_max)) b = c;
    }
    best[t] = b;
    __syncthreads();
    for (int s = kThreads / 2; s > 0; s /= 2) {
      if (t < s && better(best[t + s], best[t], is_max)) best[t] = best[t + s];
      __syncthreads();
    }
    if (t == 0) {
      if (op == ReduceOp::max || op == ReduceOp::min) out[blockIdx.x] = best[0].v;
      if (idx) idx[blockIdx.x] = best[0].i;
    }
    return;
  }
  if (op == ReduceOp::logsumexp) {
    if constexpr (std::is_floating_point_v<T>) {
      double m = -INFINITY;
      bool nan = false;
      for (int64_t i = t; i < r; i += kThreads) {
        const double v = row[i];
        nan |= v != v;
        if (v > m) m = v;
      }
      acc[t] = m;
      best[t] = Best<T>{T(0), nan ? 1 : 0};
      __syncthreads();
      for (int s = kThreads / 2; s > 0; s /= 2) {
        if (t < s) {
          acc[t] = fmax(acc[t], acc[t + s]);
          best[t].i |= best[t + s].i;
        }
        __syncthreads();
      }
      const double mx = acc[0];
      const bool any_nan = best[0].i != 0;
      __syncthreads();
      if (isinf(mx)) {
        if (t == 0) out[blockIdx.x] = any_nan ? T(NAN) : T(mx);
        return;
      }
      double s = 0;
      for (int64_t i = t; i < r; i += kThreads) s += exp(static_cast<double>(row[i]) - mx);
      acc[t] = s;
      __syncthreads();
      for (int k = kThreads / 2; k > 0; k /= 2) {
        if (t < k) acc[t] += acc[t + k];
        __syncthreads();
      }
      if (t == 0) out[blockIdx.x] = static_cast<T>(mx + log(acc[0]));
    }
    return;
  }
  A a = op == ReduceOp::prod ? A(1) : A(0);
  for (int64_t i = t; i < r; i += kThreads) {
    const A v = static_cast<A>(row[i]);
    if (op == ReduceOp::sum)
      a += v;
    else if (op == ReduceOp::prod)
      a *= v;
    else if constexpr (std::is_floating_point_v<T>)
      a = a != 0 || !isfinite(v) ? A(1) : A(0);  // any_nonfinite
  }
  acc[t] = a;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s /= 2) {
    if (t < s) {
      if (op == ReduceOp::prod)
        acc[t] *= acc[t + s];
      else if (op == ReduceOp::sum)
        acc[t] += acc[t + s];
      else
        acc[t] = acc[t] != 0 || acc[t + s] != 0;
    }
    __syncthreads();
  }
  if (t == 0) out[blockIdx.x] = static_cast<T>(acc[0]);
}

// Sums of a few long rows (a gradient's squared norm, a loss): one block per row would leave the
// GPU idle, so kSumParts blocks per row each sum a fixed slice into parts[row][part] (double or
// int64), and one thread per row adds its parts in order: the result does not depend on timing.
constexpr int kSumParts = 256;
template <class T>
using SumAcc = std::conditional_t<std::is_floating_point_v<T>, double, int64_t>;

template <class T>
__global__ void sum_parts_k(SumAcc<T>* parts, const T* in, int64_t r, int64_t chunk) {
  using A = SumAcc<T>;
  const T* row = in + blockIdx.y * r;
  const int64_t lo = blockIdx.x * chunk, hi = lo + chunk < r ? lo + chunk : r;
  const int t = threadIdx.x;
  __shared__ A acc[kThreads];
  A a = 0;
  for (int64_t i = lo + t; i < hi; i += kThreads) a += static_cast<A>(row[i]);
  acc[t] = a;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s /= 2) {
    if (t < s) acc[t] += acc[t + s];
    __syncthreads();
  }
  if (t == 0) parts[blockIdx.y * int64_t(gridDim.x) + blockIdx.x] = acc[0];
}

template <class T>
__global__ void sum_finish_k(T* out, const SumAcc<T>* parts, int64_t outer, int nparts) {
  const int64_t row = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (row >= outer) return;
  SumAcc<T> a = 0;
  for (int p = 0; p < nparts; ++p) a += parts[row * nparts + p];
  out[row] = static_cast<T>(a);
}

// One block per row of a last-dim softmax (inner == 1).
template <class T>
__global__ void softmax_rows_k(T* out, const T* in, int64_t n, bool log_out) {
  const T* row = in + blockIdx.x * n;
  T* orow = out + blockIdx.x * n;
  const int t = threadIdx.x;
  __shared__ double acc[kThreads];
  double m = -INFINITY;
  for (int64_t i = t; i < n; i += kThreads) m = fmax(m, static_cast<double>(row[i]));
  acc[t] = m;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s /= 2) {
    if (t < s) acc[t] = fmax(acc[t], acc[t + s]);
    __syncthreads();
  }
  const T mx = static_cast<T>(acc[0]);
  __syncthreads();
  double sum = 0;
  for (int64_t i = t; i < n; i += kThreads) sum += exp(static_cast<double>(row[i] - mx));
  acc[t] = sum;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s /= 2) {
    if (t < s) acc[t] += acc[t + s];
    __syncthreads();
  }
  const double total = acc[0];
  for (int64_t i = t; i < n; i += kThreads) {
    const T z = row[i] - mx;
    orow[i] = log_out ? static_cast<T>(z - log(total)) : static_cast<T>(exp(double(z)) / total);
  }
}

// One thread per (outer, inner) column otherwise.
template <class T>
__global__ void softmax_cols_k(T* out, const T* in, int64_t outer, int64_t n, int64_t inner,
                               bool log_out) {
  for (int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; c < outer * inner;
       c += int64_t(blockDim.x) * gridDim.x) {
    const int64_t o = c / inner, j = c - o * inner;
    const T* col = in + o * n * inner + j;
    T* ocol = out + o * n * inner + j;
    double m = -INFINITY;
    for (int64_t i = 0; i < n; ++i) m = fmax(m, static_cast<double>(col[i * inner]));
    const T mx = static_cast<T>(m);
    double sum = 0;
    for (int64_t i = 0; i < n; ++i) sum += exp(static_cast<double>(col[i * inner] - mx));
    for (int64_t i = 0; i < n; ++i) {
      const T z = col[i * inner] - mx;
      ocol[i * inner] =
          log_out ? static_cast<T>(z - log(sum)) : static_cast<T>(exp(double(z)) / sum);
    }
  }
}

}  // namespace

int64_t reduce_scratch_bytes(int op, int64_t outer, int64_t r) {
  const bool split = static_cast<ReduceOp>(op) == ReduceOp::sum && outer <= 64 && r >= (1 << 16);
  return split ? outer * kSumParts * 8 : 0;
}

void launch_reduce(int op, Ty t, void* out, int64_t* idx, const void* in, int64_t outer, int64_t r,
                   void* scratch, cudaStream_t s) {
  if (outer == 0) return;
  by_type(t, [&](auto z) {
    using T = decltype(z);
    if (scratch && reduce_scratch_bytes(op, outer, r) > 0) {
      auto* parts = static_cast<SumAcc<T>*>(scratch);
      const int64_t chunk = (r + kSumParts - 1) / kSumParts;
      sum_parts_k<T><<<dim3(kSumParts, static_cast<unsigned>(outer)), kThreads, 0, s>>>(
          parts, static_cast<const T*>(in), r, chunk);
      sum_finish_k<T><<<static_cast<unsigned>((outer + 63) / 64), 64, 0, s>>>(
          static_cast<T*>(out), parts, outer, kSumParts);
      return;
    }
    reduce_k<T><<<static_cast<unsigned>(outer), kThreads, 0, s>>>(op, static_cast<T*>(out), idx,
                                                                  static_cast<const T*>(in), r);
  });
}

void launch_softmax(Ty t, void* out, const void* in, int64_t outer, int64_t n, int64_t inner,
                    bool log, cudaStream_t s) {
  if (outer * n * inner == 0) return;
  auto run = [&](auto z) {
    using T = decltype(z);
    if (inner == 1) {
      softmax_rows_k<T><<<static_cast<unsigned>(outer), kThreads, 0, s>>>(
          static_cast<T*>(out), static_cast<const T*>(in), n, log);
    } else {
      const int64_t cols = outer * inner;
      const int blocks = static_cast<int>(std::min<int64_t>((cols + 255) / 256, 65535));
      softmax_cols_k<T><<<blocks, 256, 0, s>>>(static_cast<T*>(out), static_cast<const T*>(in),
                                               outer, n, inner, log);
    }
  };
  if (t == Ty::f32)
    run(float{});
  else if (t == Ty::f64)
    run(double{});
}

}  // namespace coil::cuda
