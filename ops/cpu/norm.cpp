// CPU RMSNorm, fused: the forward in one pass per row (sum of squares, then scale), the backward
// in one pass per row plus the weight's gradient, instead of the composite's square, mean, add,
// rsqrt and two multiplies and their backwards (the weight's gradient there is a broadcast
// reduction that copies dy * xhat transposed).
//
// Layout: x, y, dy, dx (R, D) contiguous, f32 or f64; weight, dweight (D) or undefined; rstd (R):
// r_i = 1 / sqrt(mean_j x_ij^2 + eps), sums of squares accumulated in f64.
//   y_ij  = x_ij r_i w_j
//   dx_ij = r_i w_j dy_ij - x_ij r_i^3 / D sum_k w_k dy_ik x_ik
//   dw_j  = sum_i dy_ij x_ij r_i
// dw is summed over fixed blocks of kRowBlock rows, then the blocks in order, so it does not
// depend on the thread count.
#include <algorithm>
#include <cmath>
#include <vector>

#include "../../core/parallel.h"
#include "kernels.h"

namespace coil::cpu {

namespace {

constexpr int64_t kRowBlock = 64;

template <class T>
void forward(const Tensor& y, const Tensor& rstd, const Tensor& x, const Tensor& w, double eps) {
  const int64_t D = x.sizes().back(), R = D ? x.numel() / D : 0;
  const T* xp = x.data_ptr<T>();
  const T* wp = w.defined() ? w.data_ptr<T>() : nullptr;
  T* yp = y.data_ptr<T>();
  T* rp = rstd.data_ptr<T>();
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 14) / std::max<int64_t>(D, 1));
  parallel_for(0, R, grain, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const T* xr = xp + i * D;
      T* yr = yp + i * D;
      double ss = 0;
#pragma omp simd reduction(+ : ss)
      for (int64_t j = 0; j < D; ++j) ss += static_cast<double>(xr[j]) * xr[j];
      const T r = static_cast<T>(1.0 / std::sqrt(ss / static_cast<double>(D) + eps));
      rp[i] = r;
      if (wp) {
#pragma omp simd
        for (int64_t j = 0; j < D; ++j) yr[j] = xr[j] * r * wp[j];
      } else {
#pragma omp simd
        for (int64_t j = 0; j < D; ++j) yr[j] = xr[j] * r;
      }
    }
  });
}

template <class T>
void backward(const Tensor& dx, const Tensor& dw, const Tensor& dy, const Tensor& x,
              const Tensor& w, const Tensor& rstd) {
  const int64_t D = x.sizes().back(), R = D ? x.numel() / D : 0;
  const T* xp = x.data_ptr<T>();
  const T* gp = dy.data_ptr<T>();
  const T* wp = w.defined() ? w.data_ptr<T>() : nullptr;
  const T* rp = rstd.data_ptr<T>();
  T* dxp = dx.defined() ? dx.data_ptr<T>() : nullptr;
  const int64_t nblocks = (R + kRowBlock - 1) / kRowBlock;
  // per row block, its part of dw (only when dw is asked for)
  std::vector<T> part(dw.defined() ? static_cast<size_t>(nblocks * D) : 0, T(0));
  parallel_for(0, nblocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t blk = b0; blk < b1; ++blk) {
      T* pw = part.empty() ? nullptr : part.data() + blk * D;
      const int64_t i1 = std::min(R, (blk + 1) * kRowBlock);
      for (int64_t i = blk * kRowBlock; i < i1; ++i) {
        const T* xr = xp + i * D;
        const T* gr = gp + i * D;
        const T r = rp[i];
        if (pw) {
#pragma omp simd
          for (int64_t j = 0; j < D; ++j) pw[j] += gr[j] * xr[j] * r;
        }
        if (!dxp) continue;
        double dot = 0;  // sum_k w_k dy_k x_k
        if (wp) {
#pragma omp simd reduction(+ : dot)
          for (int64_t j = 0; j < D; ++j) dot += static_cast<double>(wp[j] * gr[j]) * xr[j];
        } else {
#pragma omp simd reduction(+ : dot)
          for (int64_t j = 0; j < D; ++j) dot += static_cast<double>(gr[j]) * xr[j];
        }
        const T c = static_cast<T>(dot * static_cast<double>(r) * r * r / static_cast<double>(D));
        T* dr = dxp + i * D;
        if (wp) {
#pragma omp simd
          for (int64_t j = 0; j < D; ++j) dr[j] = r * wp[j] * gr[j] - xr[j] * c;
        } else {
#pragma omp simd
          for (int64_t j = 0; j < D; ++j) dr[j] = r * gr[j] - xr[j] * c;
        }
      }
    }
  });
  if (dw.defined()) {
    T* dwp = dw.data_ptr<T>();
    parallel_for(0, D, 256, [&](int64_t j0, int64_t j1) {
      for (int64_t j = j0; j < j1; ++j) {
        double s = 0;
        for (int64_t blk = 0; blk < nblocks; ++blk) s += part[static_cast<size_t>(blk * D + j)];
        dwp[j] = static_cast<T>(s);
      }
    });
  }
}

}  // namespace

void rms_norm_kernel(const Tensor& y, const Tensor& rstd, const Tensor& x, const Tensor& weight,
                     double eps) {
  if (x.dtype() == kF32)
    forward<float>(y, rstd, x, weight, eps);
  else if (x.dtype() == kF64)
    forward<double>(y, rstd, x, weight, eps);
  else
    fail("rms_norm: the fused CPU kernel takes f32 or f64, got ", x.dtype());
}

void rms_norm_backward_kernel(const Tensor& dx, const Tensor& dweight, const Tensor& dy,
                              const Tensor& x, const Tensor& weight, const Tensor& rstd) {
  if (x.dtype() == kF32)
    backward<float>(dx, dweight, dy, x, weight, rstd);
  else if (x.dtype() == kF64)
    backward<double>(dx, dweight, dy, x, weight, rstd);
  else
    fail("rms_norm: the fused CPU kernel takes f32 or f64, got ", x.dtype());
}

}  // namespace coil::cpu
