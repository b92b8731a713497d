// CUDA scans of the Mamba mixers: the diagonal state-space recurrence behind selective_scan and
// ssd_scan (launch.h states the shared form), and the depthwise causal conv.
//
// Scans: one warp per (batch, channel); lane l holds states n = l, l + 32, ... (kPer per lane),
// steps run in order, y's sum over n is a warp reduction. The forward keeps the state before
// every kScanChunk-th step; the backward walks the chunks from the last, recomputes a chunk's
// states from its checkpoint into per-lane local memory, then runs the chunk in reverse carrying
// G = dLoss/dh. Sums over channels (dB, dC, and per-entry parameters) use atomics.
// This is the plain, correct form; the speed work of issue 9 comes on top of it.
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "device_util.cuh"
#include "launch.h"

namespace coil::cuda {
namespace {

template <class T>
__device__ T warp_sum(T v) {
  for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <class T>
struct Ptrs {
  const T *u, *delta, *A, *B, *C, *D, *z, *bias, *init;
};
template <class T>
__device__ Ptrs<T> ptrs(const ScanArgs& a) {
  return {
      static_cast<const T*>(a.u), static_cast<const T*>(a.delta), static_cast<const T*>(a.A),
      static_cast<const T*>(a.B), static_cast<const T*>(a.C),     static_cast<const T*>(a.D),
      static_cast<const T*>(a.z), static_cast<const T*>(a.bias),  static_cast<const T*>(a.init)};
}

// The step's delta (after bias and softplus) and its derivative with respect to the raw delta.
template <class T>
__device__ void step_delta(const ScanArgs& a, const Ptrs<T>& p, int64_t b, int64_t t, int64_t e,
                           T& d, T& dd) {
  const T raw = p.delta[(b * a.L + t) * (a.dim / a.pdiv) + e] + (p.bias ? p.bias[e] : T(0));
  d = raw;
  dd = 1;
  if (a.softplus && raw <= T(20)) {
    const T ex = exp(raw);
    d = log1p(ex);
    dd = ex / (T(1) + ex);
  }
}

template <class T>
__device__ T decay_rate(const ScanArgs& a, const Ptrs<T>& p, int64_t e, int64_t n) {
  return a.a_per_state ? p.A[e * a.N + n] : p.A[e];
}

template <class T>
__device__ T silu_of(T v) {
  return v / (T(1) + exp(-v));
}

template <class T, int kPer>
__global__ void scan_forward_k(ScanArgs a, T* y, T* y_pre, T* fin, T* ckpt) {
  const int lane = threadIdx.x & 31;
  const int64_t w = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) >> 5;
  if (w >= a.batch * a.dim) return;
  const int64_t b = w / a.dim, c = w - b * a.dim, e = c / a.pdiv, g = c / (a.dim / a.G);
  const int64_t nchunk = (a.L + kScanChunk - 1) / kScanChunk;
  const Ptrs<T> p = ptrs<T>(a);
  T h[kPer], rate[kPer];
#pragma unroll
  for (int k = 0; k < kPer; ++k) {
    const int64_t n = lane + 32 * k;
    h[k] = n < a.N && p.init ? p.init[(b * a.dim + c) * a.N + n] : T(0);
    rate[k] = n < a.N ? decay_rate(a, p, e, n) : T(0);
  }
  for (int64_t t = 0; t < a.L; ++t) {
    if (ckpt && t % kScanChunk == 0) {
      T* dst = ckpt + ((b * a.dim + c) * nchunk + t / kScanChunk) * a.N;
#pragma unroll
      for (int k = 0; k < kPer; ++k)
        if (lane + 32 * k < a.N) dst[lane + 32 * k] = h[k];
    }
    T d, dd;
    step_delta(a, p, b, t, e, d, dd);
    const T uv = p.u[(b * a.L + t) * a.dim + c];
    const T* Bt = p.B + ((b * a.L + t) * a.G + g) * a.N;
    const T* Ct = p.C + ((b * a.L + t) * a.G + g) * a.N;
    T acc = 0;
#pragma unroll
    for (int k = 0; k < kPer; ++k) {
      const int64_t n = lane + 32 * k;
      if (n < a.N) {
        h[k] = exp(d * rate[k]) * h[k] + d * Bt[n] * uv;
        acc += Ct[n] * h[k];
      }
    }
    acc = warp_sum(acc);
    if (lane == 0) {
      const int64_t r = (b * a.L + t) * a.dim + c;
      const T pre = acc + (p.D ? p.D[e] : T(0)) * uv;
      if (y_pre) y_pre[r] = pre;
      y[r] = p.z ? pre * silu_of(p.z[r]) : pre;
    }
  }
  if (fin) {
#pragma unroll
    for (int k = 0; k < kPer; ++k)
      if (lane + 32 * k < a.N) fin[(b * a.dim + c) * a.N + lane + 32 * k] = h[k];
  }
}

template <class T>
__device__ void atomic_add_t(T* p, T v) {
  atomicAdd(p, v);
}

template <class T, int kPer>
__global__ void scan_backward_k(ScanArgs a, const T* ckpt, ScanGrads gr) {
  const int lane = threadIdx.x & 31;
  const int64_t w = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) >> 5;
  if (w >= a.batch * a.dim) return;
  const int64_t b = w / a.dim, c = w - b * a.dim, e = c / a.pdiv, g = c / (a.dim / a.G);
  const int64_t nchunk = (a.L + kScanChunk - 1) / kScanChunk, E = a.dim / a.pdiv;
  const Ptrs<T> p = ptrs<T>(a);
  const T* dy = static_cast<const T*>(gr.dy);
  const T* dfin = static_cast<const T*>(gr.dfinal);
  T* du = static_cast<T*>(gr.du);
  T* ddelta = static_cast<T*>(gr.ddelta);
  T* dB = static_cast<T*>(gr.dB);
  T* dC = static_cast<T*>(gr.dC);
  T* dz = static_cast<T*>(gr.dz);
  T G[kPer], rate[kPer], dA_acc[kPer];
  T hs[kScanChunk + 1][kPer];  // states before each step of the chunk, and after its last
#pragma unroll
  for (int k = 0; k < kPer; ++k) {
    const int64_t n = lane + 32 * k;
    G[k] = n < a.N && dfin ? dfin[(b * a.dim + c) * a.N + n] : T(0);
    rate[k] = n < a.N ? decay_rate(a, p, e, n) : T(0);
    dA_acc[k] = 0;
  }
  T dD_acc = 0, dbias_acc = 0;
  const T Dv = p.D ? p.D[e] : T(0);
  for (int64_t chunk = nchunk - 1; chunk >= 0; --chunk) {
    const int64_t t0 = chunk * kScanChunk, t1 = min(a.L, t0 + kScanChunk);
    const T* ck = ckpt + ((b * a.dim + c) * nchunk + chunk) * a.N;
#pragma unroll
    for (int k = 0; k < kPer; ++k) hs[0][k] = lane + 32 * k < a.N ? ck[lane + 32 * k] : T(0);
    for (int64_t t = t0; t < t1; ++t) {
      T d, dd;
      step_delta(a, p, b, t, e, d, dd);
      const T uv = p.u[(b * a.L + t) * a.dim + c];
      const T* Bt = p.B + ((b * a.L + t) * a.G + g) * a.N;
#pragma unroll
      for (int k = 0; k < kPer; ++k) {
        const int64_t n = lane + 32 * k;
        hs[t - t0 + 1][k] = n < a.N ? exp(d * rate[k]) * hs[t - t0][k] + d * Bt[n] * uv : T(0);
      }
    }
    for (int64_t t = t1 - 1; t >= t0; --t) {
      T d, dd;
      step_delta(a, p, b, t, e, d, dd);
      const int64_t r = (b * a.L + t) * a.dim + c, rb = ((b * a.L + t) * a.G + g) * a.N;
      const T uv = p.u[r];
      const T* Bt = p.B + rb;
      const T* Ct = p.C + rb;
      T dyp = dy[r];
      if (p.z) {  // y = pre * silu(z): recompute pre
        T acc = 0;
#pragma unroll
        for (int k = 0; k < kPer; ++k)
          if (lane + 32 * k < a.N) acc += Ct[lane + 32 * k] * hs[t - t0 + 1][k];
        const T pre = warp_sum(acc) + Dv * uv;
        const T zv = p.z[r], sg = T(1) / (T(1) + exp(-zv));
        if (lane == 0 && dz) dz[r] = dyp * pre * sg * (T(1) + zv * (T(1) - sg));
        dyp *= zv * sg;
      }
      dD_acc += dyp * uv;
      T du_part = 0, dd_part = 0;
#pragma unroll
      for (int k = 0; k < kPer; ++k) {
        const int64_t n = lane + 32 * k;
        if (n >= a.N) continue;
        const T h = hs[t - t0 + 1][k], hprev = hs[t - t0][k];
        const T decay = exp(d * rate[k]);
        G[k] += dyp * Ct[n];
        atomic_add_t(dC + rb + n, dyp * h);
        atomic_add_t(dB + rb + n, G[k] * d * uv);
        du_part += G[k] * d * Bt[n];
        const T gd = G[k] * hprev * decay;  // d/d(d * rate) of h, times G
        dd_part += gd * rate[k] + G[k] * Bt[n] * uv;
        dA_acc[k] += gd * d;
        G[k] *= decay;
      }
      du_part = warp_sum(du_part);
      dd_part = warp_sum(dd_part);
      if (lane == 0) {
        du[r] = du_part + dyp * Dv;
        const T draw = dd_part * dd;
        if (a.pdiv == 1)
          ddelta[(b * a.L + t) * E + e] = draw;
        else
          atomic_add_t(ddelta + (b * a.L + t) * E + e, draw);
        dbias_acc += draw;
      }
    }
  }
#pragma unroll
  for (int k = 0; k < kPer; ++k) {
    const int64_t n = lane + 32 * k;
    if (n >= a.N) continue;
    if (gr.dinit) static_cast<T*>(gr.dinit)[(b * a.dim + c) * a.N + n] = G[k];
  }
  if (gr.dA) {
    T* dA = static_cast<T*>(gr.dA);
    if (a.a_per_state) {
#pragma unroll
      for (int k = 0; k < kPer; ++k)
        if (lane + 32 * k < a.N) atomic_add_t(dA + e * a.N + lane + 32 * k, dA_acc[k]);
    } else {
      T s = 0;
#pragma unroll
      for (int k = 0; k < kPer; ++k) s += dA_acc[k];
      s = warp_sum(s);
      if (lane == 0) atomic_add_t(dA + e, s);
    }
  }
  if (lane == 0) {
    if (gr.dD) atomic_add_t(static_cast<T*>(gr.dD) + e, dD_acc);
    if (gr.dbias) atomic_add_t(static_cast<T*>(gr.dbias) + e, dbias_acc);
  }
}

// Calls go(std::integral_constant<int, kPer>) with the states per lane that N needs (N <= 256).
template <class F>
void by_states_per_lane(int64_t N, F&& go) {
  if (N <= 32)
    go(std::integral_constant<int, 1>{});
  else if (N <= 64)
    go(std::integral_constant<int, 2>{});
  else if (N <= 128)
    go(std::integral_constant<int, 4>{});
  else
    go(std::integral_constant<int, 8>{});
}

template <class T>
void scan_forward(const ScanArgs& a, void* y, void* y_pre, void* fin, void* ckpt, cudaStream_t s) {
  const int64_t threads = a.batch * a.dim * 32;
  const int blocks = static_cast<int>((threads + 127) / 128);
  auto go = [&](auto per) {
    constexpr int kPer = decltype(per)::value;
    scan_forward_k<T, kPer><<<blocks, 128, 0, s>>>(a, static_cast<T*>(y), static_cast<T*>(y_pre),
                                                   static_cast<T*>(fin), static_cast<T*>(ckpt));
  };
  by_states_per_lane(a.N, go);
}

template <class T>
void scan_backward(const ScanArgs& a, const void* ckpt, const ScanGrads& g, cudaStream_t s) {
  const int64_t threads = a.batch * a.dim * 32;
  const int blocks = static_cast<int>((threads + 127) / 128);
  auto go = [&](auto per) {
    constexpr int kPer = decltype(per)::value;
    scan_backward_k<T, kPer><<<blocks, 128, 0, s>>>(a, static_cast<const T*>(ckpt), g);
  };
  by_states_per_lane(a.N, go);
}

// ---- causal conv ----
template <class T>
__device__ T conv_input(const T* x, const T* win, int64_t b, int64_t s, int64_t c, int64_t L,
                        int64_t C, int64_t K) {
  if (s >= 0) return x[(b * L + s) * C + c];
  return win ? win[(b * (K - 1) + (K - 1 + s)) * C + c] : T(0);
}

template <class T>
__device__ T conv_pre(const T* x, const T* w, const T* bias, const T* win, int64_t b, int64_t t,
                      int64_t c, int64_t L, int64_t C, int64_t K) {
  T acc = bias ? bias[c] : T(0);
  for (int64_t k = 0; k < K; ++k)
    acc += w[c * K + k] * conv_input(x, win, b, t + k - (K - 1), c, L, C, K);
  return acc;
}

template <class T>
__global__ void conv_forward_k(int64_t B, int64_t L, int64_t C, int64_t K, T* y, const T* x,
                               const T* w, const T* bias, const T* win, bool silu) {
  COIL_GRID_LOOP(i, B * L * C) {
    const int64_t c = i % C, bt = i / C, t = bt % L, b = bt / L;
    const T v = conv_pre(x, w, bias, win, b, t, c, L, C, K);
    y[i] = silu ? silu_of(v) : v;
  }
}

// ds = dy * silu'(pre)
template <class T>
__global__ void conv_ds_k(int64_t B, int64_t L, int64_t C, int64_t K, T* ds, const T* dy,
                          const T* x, const T* w, const T* bias, const T* win, bool silu) {
  COIL_GRID_LOOP(i, B * L * C) {
    if (!silu) {
      ds[i] = dy[i];
      continue;
    }
    const int64_t c = i % C, bt = i / C, t = bt % L, b = bt / L;
    const T v = conv_pre(x, w, bias, win, b, t, c, L, C, K);
    const T sg = T(1) / (T(1) + exp(-v));
    ds[i] = dy[i] * sg * (T(1) + v * (T(1) - sg));
  }
}

// input time s in [-(K-1), L) feeds outputs t = s + (K-1) - k
template <class T>
__global__ void conv_dinput_k(int64_t B, int64_t L, int64_t C, int64_t K, T* dx, T* dwin,
                              const T* ds, const T* w) {
  const int64_t S = L + K - 1;
  COIL_GRID_LOOP(i, B * S * C) {
    const int64_t c = i % C, bs = i / C, j = bs % S, b = bs / S, s = j - (K - 1);
    if (s < 0 && !dwin) continue;
    T acc = 0;
    for (int64_t k = 0; k < K; ++k) {
      const int64_t t = s + (K - 1) - k;
      if (t >= 0 && t < L) acc += w[c * K + k] * ds[(b * L + t) * C + c];
    }
    if (s >= 0)
      dx[(b * L + s) * C + c] = acc;
    else
      dwin[(b * (K - 1) + j) * C + c] = acc;
  }
}

// dw and dbias in two passes: sums over (b, t) are long (batch x L tokens) and there are only
// (K + 1) x C of them, so each thread first sums one slice of kDwChunk tokens for one channel
// (all K taps and the bias, in double) into parts[slice][k][c], then one thread per (k, c) adds
// the slices in order (no atomics: the result does not depend on timing).
constexpr int kDwMaxK = 8;
constexpr int64_t kDwChunk = 256;
int64_t dw_slices(int64_t B, int64_t L) { return (B * L + kDwChunk - 1) / kDwChunk; }

template <class T>
__global__ void conv_dw_parts_k(int64_t B, int64_t L, int64_t C, int64_t K, double* parts,
                                const T* ds, const T* x, const T* win, int64_t slices) {
  COIL_GRID_LOOP(i, slices * C) {
    const int64_t c = i % C, p = i / C;
    double acc[kDwMaxK + 1] = {};
    const int64_t lo = p * kDwChunk, hi = lo + kDwChunk < B * L ? lo + kDwChunk : B * L;
    for (int64_t bt = lo; bt < hi; ++bt) {
      const int64_t b = bt / L, t = bt - b * L;
      const double g = ds[bt * C + c];
#pragma unroll
      for (int k = 0; k < kDwMaxK; ++k)
        if (k < K) acc[k] += g * conv_input(x, win, b, t + k - (K - 1), c, L, C, K);
      acc[kDwMaxK] += g;
    }
    for (int64_t k = 0; k < K; ++k) parts[(p * (K + 1) + k) * C + c] = acc[k];
    parts[(p * (K + 1) + K) * C + c] = acc[kDwMaxK];
  }
}

template <class T>
__global__ void conv_dw_finish_k(int64_t C, int64_t K, T* dw, T* dbias, const double* parts,
                                 int64_t slices) {
  COIL_GRID_LOOP(i, (K + 1) * C) {
    const int64_t c = i % C, k = i / C;  // k == K: the bias
    if ((k == K && !dbias) || (k < K && !dw)) continue;
    double acc = 0;
    for (int64_t p = 0; p < slices; ++p) acc += parts[(p * (K + 1) + k) * C + c];
    if (k == K)
      dbias[c] = static_cast<T>(acc);
    else
      dw[c * K + k] = static_cast<T>(acc);
  }
}

// dw[c, k] and dbias[c]: one thread per (k or bias, c), summing over (b, t) in double (taps
// past kDwMaxK)
template <class T>
__global__ void conv_dw_k(int64_t B, int64_t L, int64_t C, int64_t K, T* dw, T* dbias, const T* ds,
                          const T* x, const T* win) {
  COIL_GRID_LOOP(i, (K + 1) * C) {
    const int64_t c = i % C, k = i / C;  // k == K: the bias
    if (k == K && !dbias) continue;
    if (k < K && !dw) continue;
    double acc = 0;
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < L; ++t) {
        const double g = ds[(b * L + t) * C + c];
        acc += k == K ? g : g * conv_input(x, win, b, t + k - (K - 1), c, L, C, K);
      }
    if (k == K)
      dbias[c] = static_cast<T>(acc);
    else
      dw[c * K + k] = static_cast<T>(acc);
  }
}

}  // namespace

void launch_scan_forward(bool f64, const ScanArgs& a, void* y, void* y_pre, void* fin, void* ckpt,
                         cudaStream_t s) {
  if (a.batch * a.dim == 0) return;
  if (f64)
    scan_forward<double>(a, y, y_pre, fin, ckpt, s);
  else
    scan_forward<float>(a, y, y_pre, fin, ckpt, s);
}

void launch_scan_backward(bool f64, const ScanArgs& a, const void* ckpt, const ScanGrads& g,
                          cudaStream_t s) {
  if (a.batch * a.dim == 0) return;
  if (f64)
    scan_backward<double>(a, ckpt, g, s);
  else
    scan_backward<float>(a, ckpt, g, s);
}

void launch_conv_forward(bool f64, int64_t B, int64_t L, int64_t C, int64_t K, void* y,
                         const void* x, const void* w, const void* bias, const void* window,
                         bool silu, cudaStream_t s) {
  if (B * L * C == 0) return;
  auto go = [&](auto z) {
    using T = decltype(z);
    conv_forward_k<T><<<blocks_for(B * L * C), 256, 0, s>>>(
        B, L, C, K, static_cast<T*>(y), static_cast<const T*>(x), static_cast<const T*>(w),
        static_cast<const T*>(bias), static_cast<const T*>(window), silu);
  };
  if (f64)
    go(double{});
  else
    go(float{});
}

int64_t conv_dw_parts_bytes(int64_t B, int64_t L, int64_t C, int64_t K) {
  return K <= kDwMaxK ? dw_slices(B, L) * (K + 1) * C * 8 : 0;
}

void launch_conv_backward(bool f64, int64_t B, int64_t L, int64_t C, int64_t K, void* dx, void* dw,
                          void* dbias, void* dwindow, void* ds, const void* dy, const void* x,
                          const void* w, const void* bias, const void* window, bool silu,
                          void* dw_parts, cudaStream_t s) {
  auto go = [&](auto z) {
    using T = decltype(z);
    const T *xp = static_cast<const T*>(x), *wp = static_cast<const T*>(w);
    const T *bp = static_cast<const T*>(bias), *winp = static_cast<const T*>(window);
    T* dsp = static_cast<T*>(ds);
    if (B * L * C > 0)
      conv_ds_k<T><<<blocks_for(B * L * C), 256, 0, s>>>(B, L, C, K, dsp, static_cast<const T*>(dy),
                                                         xp, wp, bp, winp, silu);
    if (B * (L + K - 1) * C > 0)
      conv_dinput_k<T><<<blocks_for(B * (L + K - 1) * C), 256, 0, s>>>(
          B, L, C, K, static_cast<T*>(dx), static_cast<T*>(dwindow), dsp, wp);
    if ((K + 1) * C == 0) return;
    if (dw_parts && B * L > 0) {
      const int64_t slices = dw_slices(B, L);
      auto* parts = static_cast<double*>(dw_parts);
      conv_dw_parts_k<T>
          <<<blocks_for(slices * C), 256, 0, s>>>(B, L, C, K, parts, dsp, xp, winp, slices);
      conv_dw_finish_k<T><<<blocks_for((K + 1) * C), 256, 0, s>>>(
          C, K, static_cast<T*>(dw), static_cast<T*>(dbias), parts, slices);
    } else {
      conv_dw_k<T><<<blocks_for((K + 1) * C), 256, 0, s>>>(B, L, C, K, static_cast<T*>(dw),
                                                           static_cast<T*>(dbias), dsp, xp, winp);
    }
  };
  if (f64)
    go(double{});
  else
    go(float{});
}

}  // namespace coil::cuda
