// ssd_scan (Mamba-2) on the GPU in chunked matrix form, f32: the state is materialised only at
// chunk starts and everything within a chunk of kQ steps is a product of small matrices, as in
// mamba_ssm's chunked SSD (ops/cpu/ssd_scan.cpp derives the same backward).
//
// Within a chunk (steps t, s < len), with l = d A, lc_t = l_0 + ... + l_t, alpha_t = exp(lc_t),
// w_ts = exp(lc_t - lc_s) for s <= t, beta_s = w_{last,s}, X_s = d_s x_s and S0 the state
// entering the chunk ([P][N] per head):
//   y_t   = alpha_t S0 C_t + sum_{s <= t} w_ts (C_t . B_s) X_s + D x_t
//   S_end = alpha_last S0 + sum_s beta_s X_s B_s^T
// Forward: chunk_state (each chunk's own sum_s beta_s X_s B_s^T), state_pass (S0 of every chunk,
// in place, and the final state), chunk_output (y). Backward, from gy = dL/dy_pre and G = dL/dS_end
// (the next chunk's dL/dS0; dfinal for the last):
//   dL/dS0 = alpha_last G + sum_t alpha_t gy_t C_t^T        (chunk_state and state_pass again)
//   dX_s   = beta_s G B_s + sum_{t >= s} w_ts (C_t . B_s) gy_t,  dx = d dX + D gy
//   dC_t   = alpha_t S0^T gy_t + sum_{s <= t} w_ts (gy_t . X_s) B_s
//   dB_s   = beta_s G^T X_s + sum_{t >= s} w_ts (gy_t . X_s) C_t
// and run_t = dL/dl_t is the sum of alpha_last G . S0, sum_{s >= t} alpha_s C_s . (S0^T gy_s),
// sum_{u < t} beta_u X_u . (G B_u) and sum_{s >= t > u} w_su (C_s . B_u)(gy_s . X_u) (terms that
// do not cancel), so dd_t = x_t . dX_t + A run_t and dA = sum d_t run_t.
//
// This file is CUDA source that also compiles as C++ for the CPU emulation of the tests
// (tests/cuda/cuda_emu.h, included first): see kernel_source.cuh; the tensor cores' mma goes
// through mma_3xtf32.
#pragma once
#include <cstdint>

#include "kernel_source.cuh"
#include "scan_math.cuh"

// Internal linkage: the test binary compiles this source for the CPU beside libcoil's own.
namespace coil::cuda::ssd {
namespace {

constexpr int kQ = 64;          // steps per chunk
constexpr int kThreads = 256;   // threads per block: a 16 x 16 grid, 4 x 4 outputs each
constexpr int kTile = 64;       // rows and columns of a block's product tile
constexpr int kDepth = 16;      // depth of a product staged in shared memory per round
constexpr int kLd = kTile + 1;  // padded row of a tile in shared memory (no bank conflicts)

// Operands as ops/cpu/kernels.h's SsdScanInputs, contiguous f32: x, z [batch][L][H][P], dt
// [batch][L][H], A, D, dt_bias [H], B, C [batch][L][G][N], init [batch][H][P][N]; optional ones
// null.
struct Args {
  int64_t batch = 0, L = 0, H = 0, P = 0, N = 0, G = 1;
  bool softplus = false;
  const float *x = nullptr, *dt = nullptr, *A = nullptr, *B = nullptr, *C = nullptr;
  const float *D = nullptr, *z = nullptr, *dt_bias = nullptr, *init = nullptr;
};
// Backward outputs: dx, ddt, dz, dinit written whole (dz, dinit may be null); dB, dC, dA, dD,
// ddt_bias summed into (zero on entry; dD, ddt_bias may be null).
struct Grads {
  const float *dy = nullptr, *dfinal = nullptr, *y_pre = nullptr;
  float *dx = nullptr, *ddt = nullptr, *dz = nullptr, *dinit = nullptr;
  float *dB = nullptr, *dC = nullptr, *dA = nullptr, *dD = nullptr, *ddt_bias = nullptr;
};

__host__ __device__ inline int64_t chunks(int64_t L) { return (L + kQ - 1) / kQ; }
// Floats of scratch: per (batch, chunk, head) step values (d and lc, kQ each) and states [P][N].
inline int64_t step_floats(const Args& a) { return a.batch * chunks(a.L) * a.H * kQ; }
inline int64_t state_floats(const Args& a) { return a.batch * chunks(a.L) * a.H * a.P * a.N; }

// A block's (batch, chunk, head) from blockIdx.x, and its chunk's rows.
struct Site {
  int64_t b, c, h, g, nc, t0;
  int len;
  __device__ __forceinline__ Site(const Args& a, int64_t bid) {
    nc = chunks(a.L);
    h = bid % a.H;
    c = (bid / a.H) % nc;
    b = bid / (a.H * nc);
    g = h / (a.H / a.G);
    t0 = c * kQ;
    len = static_cast<int>(a.L - t0 < kQ ? a.L - t0 : kQ);
  }
  __device__ __forceinline__ int64_t step_row(const Args& a) const {  // (b, c, h) of d / lc
    return (b * nc + c) * a.H + h;
  }
  // rows of the chunk's step q (q < len)
  __device__ __forceinline__ int64_t x_row(const Args& a, int q) const {
    return ((b * a.L + t0 + q) * a.H + h) * a.P;
  }
  __device__ __forceinline__ int64_t bc_row(const Args& a, int q) const {
    return ((b * a.L + t0 + q) * a.G + g) * a.N;
  }
};

// The thread's share of a 64 x 64 product tile: acc[i][j] (R x C of them) at row row(i) and
// column col(j). SIMT: a 16 x 16 grid of threads, 4 x 4 outputs each, 16 apart.
template <bool kTC>
struct Frag {
  static constexpr int R = 4, C = 4;
  static constexpr int kStageLd = kLd;
  __device__ __forceinline__ static int row(int i) { return threadIdx.x / 16 + 16 * i; }
  __device__ __forceinline__ static int col(int j) { return threadIdx.x % 16 + 16 * j; }
};
// Tensor cores (mma m16n8k8): warp w holds rows 16 (w % 4) .. + 15 and columns 32 (w / 4) .. +
// 31 as four 16 x 8 tiles; lane (g = lane / 4, t = lane % 4) holds rows g and g + 8 and columns
// 2t and 2t + 1 of each (PTX's accumulator layout). A staging row of 72 floats keeps the
// fragment loads free of bank conflicts.
template <>
struct Frag<true> {
  static constexpr int R = 2, C = 8;
  static constexpr int kStageLd = kTile + 8;
  __device__ __forceinline__ static int row(int i) {
    return 16 * (threadIdx.x / 32 % 4) + threadIdx.x % 32 / 4 + 8 * i;
  }
  __device__ __forceinline__ static int col(int j) {
    return 32 * (threadIdx.x / 128) + 8 * (j / 2) + 2 * (threadIdx.x % 4) + j % 2;
  }
};
constexpr int kStageFloats = kDepth * (kTile + 8);  // one staging tile, either layout

template <class F>
using Acc = float[F::R][F::C];

template <class F>
__device__ __forceinline__ void zero(Acc<F>& acc) {
  COIL_UNROLL
  for (int i = 0; i < F::R; ++i) COIL_UNROLL
  for (int j = 0; j < F::C; ++j) acc[i][j] = 0.0f;
}

// A float as tf32 (round to nearest, ties away: cvt.rna), in a 32-bit register.
__device__ __forceinline__ uint32_t to_tf32(float x) {
#ifdef __CUDACC__
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
  return r;
#else
  return ::coil::emu::tf32_rna(x);
#endif
}
__device__ __forceinline__ float tf32_value(uint32_t r) {
#ifdef __CUDACC__
  return __uint_as_float(r);
#else
  return ::coil::emu::as_float(r);
#endif
}
// d[q] += A B_q for the four 16 x 8 tiles of a warp's 16 x 32 block, each product as three tf32
// ones (lo hi, hi lo, hi hi: float32's accuracy), in PTX's fragment layout for mma m16n8k8 (a: A's
// rows g, g + 8 at columns t, t + 4; b[q]: B_q's rows t, t + 4 at column g; d[q] as Frag<true>).
__device__ __forceinline__ void mma_3xtf32(float (&d)[4][4], const uint32_t (&ah)[4],
                                           const uint32_t (&al)[4], const uint32_t (&bh)[4][2],
                                           const uint32_t (&bl)[4][2]) {
#ifdef __CUDACC__
  auto mma = [](float(&c)[4], const uint32_t(&a)[4], const uint32_t(&b)[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  };
  COIL_UNROLL
  for (int q = 0; q < 4; ++q) {
    mma(d[q], al, bh[q]);
    mma(d[q], ah, bl[q]);
    mma(d[q], ah, bh[q]);
  }
#else
  ::coil::emu::mma_3xtf32_x4(d, ah, al, bh, bl);
#endif
}
// x as hi + lo, both tf32: three tf32 products (lo hi, hi lo, hi hi) keep float32's accuracy.
__device__ __forceinline__ void split_tf32(float x, uint32_t& hi, uint32_t& lo) {
  hi = to_tf32(x);
  lo = to_tf32(x - tf32_value(hi));
}

// acc += sum_{k < K} fa(r, k) fb(k, c) over the block's 64 x 64 tile (the thread's share as
// Frag<kTC>), staged through shared As, Bs (kStageFloats each). fa, fb return 0 outside their
// operand. kAk / kBk: the operand is contiguous along k (else along r / c), so that consecutive
// threads load neighbours.
template <bool kTC, bool kAk, bool kBk, class FA, class FB>
__device__ __forceinline__ void block_product(Acc<Frag<kTC>>& acc, int K, const FA& fa,
                                              const FB& fb, float* As, float* Bs) {
  using F = Frag<kTC>;
  constexpr int ld = F::kStageLd;
  const int tid = threadIdx.x;
  for (int k0 = 0; k0 < K; k0 += kDepth) {
    for (int e = tid; e < kDepth * kTile; e += kThreads) {
      const int ka = kAk ? e % kDepth : e / kTile, ra = kAk ? e / kDepth : e % kTile;
      As[ka * ld + ra] = k0 + ka < K ? fa(ra, k0 + ka) : 0.0f;
      const int kb = kBk ? e % kDepth : e / kTile, cb = kBk ? e / kDepth : e % kTile;
      Bs[kb * ld + cb] = k0 + kb < K ? fb(k0 + kb, cb) : 0.0f;
    }
    __syncthreads();
    if constexpr (kTC) {
      const int lane = tid % 32, g = lane / 4, t = lane % 4;
      const int r0 = 16 * (tid / 32 % 4), c0 = 32 * (tid / 128);
      COIL_UNROLL
      for (int k8 = 0; k8 < kDepth; k8 += 8) {
        uint32_t ah[4], al[4], bh[4][2], bl[4][2];
        COIL_UNROLL
        for (int r = 0; r < 4; ++r)
          split_tf32(As[(k8 + t + 4 * (r / 2)) * ld + r0 + g + 8 * (r % 2)], ah[r], al[r]);
        COIL_UNROLL
        for (int q = 0; q < 4; ++q) COIL_UNROLL
        for (int r = 0; r < 2; ++r)
          split_tf32(Bs[(k8 + t + 4 * r) * ld + c0 + 8 * q + g], bh[q][r], bl[q][r]);
        float d[4][4];
        COIL_UNROLL
        for (int q = 0; q < 4; ++q) {
          d[q][0] = acc[0][2 * q];
          d[q][1] = acc[0][2 * q + 1];
          d[q][2] = acc[1][2 * q];
          d[q][3] = acc[1][2 * q + 1];
        }
        mma_3xtf32(d, ah, al, bh, bl);
        COIL_UNROLL
        for (int q = 0; q < 4; ++q) {
          acc[0][2 * q] = d[q][0];
          acc[0][2 * q + 1] = d[q][1];
          acc[1][2 * q] = d[q][2];
          acc[1][2 * q + 1] = d[q][3];
        }
      }
    } else {
      const int tx = tid % 16, ty = tid / 16;
      COIL_UNROLL
      for (int k = 0; k < kDepth; ++k) {
        float av[4], bv[4];
        COIL_UNROLL
        for (int i = 0; i < 4; ++i) {
          av[i] = As[k * ld + ty + 16 * i];
          bv[i] = Bs[k * ld + tx + 16 * i];
        }
        COIL_UNROLL
        for (int i = 0; i < 4; ++i) COIL_UNROLL
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
      }
    }
    __syncthreads();
  }
}

// d = softplus(dt + bias) (or dt + bias) and lc (the running sum of d A within the chunk) of
// every step, one thread per (batch, chunk, head); steps past L get d = 0 and repeat the last lc.
__global__ void cumsum_kernel(Args a, float* dd, float* lc) {
  const int64_t nc = chunks(a.L);
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= a.batch * nc * a.H) return;
  const int64_t h = i % a.H, c = (i / a.H) % nc, b = i / (a.H * nc);
  const int64_t t0 = c * kQ;
  const float A = a.A[h], bias = a.dt_bias ? a.dt_bias[h] : 0.0f;
  float run = 0.0f;
  for (int q = 0; q < kQ; ++q) {
    float d = 0.0f;
    if (t0 + q < a.L) {
      const float v = a.dt[(b * a.L + t0 + q) * a.H + h] + bias;
      d = softplus_of(v, a.softplus, nullptr);
      run += d * A;
    }
    dd[i * kQ + q] = d;
    lc[i * kQ + q] = run;
  }
}

// out[b][c][h] ([P][N]) = sum_{q < len} coef_q U_q V_q^T, with U rows of [batch][L][H][P] and V
// rows of [batch][L][G][N]: the forward's own end state (U = x, V = B, coef = beta d) when
// to_end, else the backward's sum_t alpha_t gy_t C_t^T (U = gy, V = C). Grid: (batch * chunks *
// H, P tiles * N tiles).
template <bool kTC>
__global__ void __launch_bounds__(kThreads)
    chunk_state_kernel(Args a, const float* U, const float* V, bool to_end, const float* dd,
                       const float* lc, float* out) {
  __shared__ float As[kStageFloats], Bs[kStageFloats], coef[kQ];
  const Site st(a, blockIdx.x);
  const int64_t sr = st.step_row(a);
  const int tid = threadIdx.x;
  using F = Frag<kTC>;
  if (tid < kQ) {
    const float* l = lc + sr * kQ;
    coef[tid] = tid >= st.len ? 0.0f
                : to_end      ? expf(l[st.len - 1] - l[tid]) * dd[sr * kQ + tid]
                              : expf(l[tid]);
  }
  __syncthreads();
  const int64_t tiles_n = (a.N + kTile - 1) / kTile;
  const int64_t p0 = blockIdx.y / tiles_n * kTile, n0 = blockIdx.y % tiles_n * kTile;
  Acc<F> acc;
  zero<F>(acc);
  block_product<kTC, false, false>(
      acc, st.len,
      [&](int r, int q) { return p0 + r < a.P ? coef[q] * U[st.x_row(a, q) + p0 + r] : 0.0f; },
      [&](int q, int c) { return n0 + c < a.N ? V[st.bc_row(a, q) + n0 + c] : 0.0f; }, As, Bs);
  float* o = out + sr * a.P * a.N;
  COIL_UNROLL
  for (int i = 0; i < F::R; ++i) COIL_UNROLL
  for (int j = 0; j < F::C; ++j) {
    const int64_t p = p0 + F::row(i), n = n0 + F::col(j);
    if (p < a.P && n < a.N) o[p * a.N + n] = acc[i][j];
  }
}

// The pass over chunks, one thread per (batch, head, state element): S[c] holds chunk c's own
// term on entry and the running value entering chunk c on exit (forward: the state entering the
// chunk; reverse: G of the chunk), where each chunk multiplies the running value by its
// alpha_last. start (may be null: zeros) and end (may be null) are [batch][H][P][N].
__global__ void state_pass_kernel(int64_t batch, int64_t nc, int64_t H, int64_t PN, const float* lc,
                                  float* S, const float* start, float* end, bool reverse) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= batch * H * PN) return;
  const int64_t e = i % PN, h = i / PN % H, b = i / (PN * H);
  float run = start ? start[i] : 0.0f;
  for (int64_t k = 0; k < nc; ++k) {
    const int64_t c = reverse ? nc - 1 - k : k, row = (b * nc + c) * H + h;
    float* s = S + row * PN + e;
    const float own = *s;
    *s = run;
    run = fmaf(expf(lc[row * kQ + kQ - 1]), run, own);
  }
  if (end) end[i] = run;
}

// y_pre_t = alpha_t S0 C_t + sum_{s <= t} w_ts d_s (C_t . B_s) x_s + D x_t, y = y_pre silu(z).
// Grid: (batch * chunks * H, P tiles).
template <bool kTC>
__global__ void __launch_bounds__(kThreads)
    chunk_output_kernel(Args a, const float* dd, const float* lc, const float* S0s, float* y,
                        float* y_pre) {
  __shared__ float As[kStageFloats], Bs[kStageFloats], W[kTile * kLd], lcs[kQ], dds[kQ];
  const Site st(a, blockIdx.x);
  const int64_t sr = st.step_row(a);
  const int tid = threadIdx.x;
  using F = Frag<kTC>;
  if (tid < kQ) {
    lcs[tid] = lc[sr * kQ + tid];
    dds[tid] = dd[sr * kQ + tid];
  }
  const int len = st.len;
  const float* S0 = S0s + sr * a.P * a.N;
  const int64_t p0 = blockIdx.y * kTile;
  auto c_at = [&](int t, int n) { return t < len ? a.C[st.bc_row(a, t) + n] : 0.0f; };
  // W[t][s] = w_ts d_s (C_t . B_s)
  Acc<F> acc;
  zero<F>(acc);
  block_product<kTC, true, true>(
      acc, static_cast<int>(a.N), c_at,
      [&](int n, int s) { return s < len ? a.B[st.bc_row(a, s) + n] : 0.0f; }, As, Bs);
  COIL_UNROLL
  for (int i = 0; i < F::R; ++i) COIL_UNROLL
  for (int j = 0; j < F::C; ++j) {
    const int t = F::row(i), s = F::col(j);
    W[t * kLd + s] = s <= t && t < len ? expf(lcs[t] - lcs[s]) * dds[s] * acc[i][j] : 0.0f;
  }
  __syncthreads();
  // the state's part, alpha_t (C_t S0^T)
  Acc<F> out;
  zero<F>(out);
  block_product<kTC, true, true>(
      out, static_cast<int>(a.N), c_at,
      [&](int n, int p) { return p0 + p < a.P ? S0[(p0 + p) * a.N + n] : 0.0f; }, As, Bs);
  COIL_UNROLL
  for (int i = 0; i < F::R; ++i) {
    const float alpha = expf(lcs[F::row(i)]);
    COIL_UNROLL
    for (int j = 0; j < F::C; ++j) out[i][j] *= alpha;
  }
  block_product<kTC, false, false>(
      out, len, [&](int t, int s) { return W[t * kLd + s]; },
      [&](int s, int p) { return p0 + p < a.P ? a.x[st.x_row(a, s) + p0 + p] : 0.0f; }, As, Bs);
  const float Dh = a.D ? a.D[st.h] : 0.0f;
  COIL_UNROLL
  for (int i = 0; i < F::R; ++i) COIL_UNROLL
  for (int j = 0; j < F::C; ++j) {
    const int t = F::row(i);
    const int64_t p = p0 + F::col(j);
    if (t >= len || p >= a.P) continue;
    const int64_t at = st.x_row(a, t) + p;
    const float v = fmaf(Dh, a.x[at], out[i][j]);
    if (y_pre) y_pre[at] = v;
    y[at] = a.z ? v * a.z[at] * sigmoid_of(a.z[at]) : v;
  }
}

// gy = dy silu(z), dz = dy y_pre silu'(z), over n elements.
__global__ void gate_grad_kernel(int64_t n, const float* dy, const float* z, const float* y_pre,
                                 float* gy, float* dz) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  const float zv = z[i], sg = sigmoid_of(zv);
  gy[i] = dy[i] * zv * sg;
  if (dz) dz[i] = dy[i] * y_pre[i] * sg * (1.0f + zv * (1.0f - sg));
}

// Shared memory of backward_kernel: W1, W2, M (kTile x kLd each), the staging tiles, the per-step
// values and sums.
constexpr int kBackwardSharedFloats = 3 * kTile * kLd + 2 * kStageFloats + 5 * kQ;
constexpr size_t kBackwardSharedBytes = 2 * sizeof(double) + kBackwardSharedFloats * sizeof(float);

// Every gradient of one (batch, chunk, head) from its S0, its G and gy (the file's comment has
// the math). Grid: batch * chunks * H; kBackwardSharedBytes of dynamic shared memory.
template <bool kTC>
__global__ void __launch_bounds__(kThreads)
    backward_kernel(Args a, const float* dd, const float* lc, const float* S0s, const float* Gs,
                    const float* gy, Grads g) {
  COIL_DYNAMIC_SHARED(double, smem_raw);
  double* sums = smem_raw;                             // [0]: alpha_last G . S0, [1]: dD's part
  float* W1 = reinterpret_cast<float*>(smem_raw + 2);  // w_ts (C_t . B_s)
  float* W2 = W1 + kTile * kLd;                        // w_ts d_s (gy_t . x_s)
  float* M = W2 + kTile * kLd;  // s < t: w_ts d_s (C_t . B_s)(gy_t . x_s), then prefix sums
  float* As = M + kTile * kLd;
  float* Bs = As + kStageFloats;
  float* lcs = Bs + kStageFloats;
  float* dds = lcs + kQ;
  float* T2 = dds + kQ;  // alpha_t C_t . (S0^T gy_t)
  float* T3 = T2 + kQ;   // beta_s X_s . (G B_s)
  float* XD = T3 + kQ;   // x_s . dX_s
  const Site st(a, blockIdx.x);
  const int64_t sr = st.step_row(a);
  const int tid = threadIdx.x;
  using F = Frag<kTC>;
  const int len = st.len;
  if (tid < kQ) {
    lcs[tid] = lc[sr * kQ + tid];
    dds[tid] = dd[sr * kQ + tid];
    T2[tid] = T3[tid] = XD[tid] = 0.0f;
  }
  if (tid < 2) sums[tid] = 0.0;
  const float* S0 = S0s + sr * a.P * a.N;
  const float* G = Gs + sr * a.P * a.N;
  const float lc_last = lc[sr * kQ + kQ - 1];
  const int P = static_cast<int>(a.P), N = static_cast<int>(a.N);
  auto x_at = [&](int s, int p) { return s < len && p < P ? a.x[st.x_row(a, s) + p] : 0.0f; };
  auto gy_at = [&](int t, int p) { return t < len && p < P ? gy[st.x_row(a, t) + p] : 0.0f; };
  auto b_at = [&](int s, int n) { return s < len && n < N ? a.B[st.bc_row(a, s) + n] : 0.0f; };
  auto c_at = [&](int t, int n) { return t < len && n < N ? a.C[st.bc_row(a, t) + n] : 0.0f; };
  __syncthreads();

  // W1, W2 and M from C . B and gy . x
  {
    Acc<F> cb, gx;
    zero<F>(cb);
    zero<F>(gx);
    block_product<kTC, true, true>(
        cb, N, c_at, [&](int n, int s) { return b_at(s, n); }, As, Bs);
    block_product<kTC, true, true>(
        gx, P, gy_at, [&](int p, int s) { return x_at(s, p); }, As, Bs);
    COIL_UNROLL
    for (int i = 0; i < F::R; ++i) COIL_UNROLL
    for (int j = 0; j < F::C; ++j) {
      const int t = F::row(i), s = F::col(j);
      const float w = s <= t && t < len ? expf(lcs[t] - lcs[s]) : 0.0f;
      const float w1 = w * cb[i][j], w2 = w * dds[s] * gx[i][j];
      W1[t * kLd + s] = w1;
      W2[t * kLd + s] = w2;
      M[t * kLd + s] = s < t ? w2 * cb[i][j] : 0.0f;
    }
  }
  __syncthreads();

  // dX = beta (B G^T) + W1^T gy per tile of P columns; dx, x . dX, T3, dD's part
  const float Dh = a.D ? a.D[st.h] : 0.0f;
  float dd_part = 0.0f;
  for (int p0 = 0; p0 < P; p0 += kTile) {
    Acc<F> acc;
    zero<F>(acc);
    block_product<kTC, true, true>(
        acc, N, b_at,
        [&](int n, int p) { return p0 + p < P ? G[static_cast<int64_t>(p0 + p) * N + n] : 0.0f; },
        As, Bs);
    COIL_UNROLL
    for (int i = 0; i < F::R; ++i) {
      const int s = F::row(i);
      const float beta = s < len ? expf(lc_last - lcs[s]) : 0.0f;
      float t3 = 0.0f;
      COIL_UNROLL
      for (int j = 0; j < F::C; ++j) {
        acc[i][j] *= beta;
        t3 = fmaf(x_at(s, p0 + F::col(j)), acc[i][j], t3);
      }
      if (s < len) atomicAdd(&T3[s], dds[s] * t3);
    }
    block_product<kTC, false, false>(
        acc, len, [&](int s, int t) { return W1[t * kLd + s]; },
        [&](int t, int p) { return gy_at(t, p0 + p); }, As, Bs);
    COIL_UNROLL
    for (int i = 0; i < F::R; ++i) {
      const int s = F::row(i);
      if (s >= len) continue;
      float xd = 0.0f;
      COIL_UNROLL
      for (int j = 0; j < F::C; ++j) {
        const int p = p0 + F::col(j);
        if (p >= P) continue;
        const int64_t at = st.x_row(a, s) + p;
        const float xv = a.x[at], gv = gy[at];
        xd = fmaf(xv, acc[i][j], xd);
        dd_part = fmaf(gv, xv, dd_part);
        g.dx[at] = fmaf(dds[s], acc[i][j], Dh * gv);
      }
      atomicAdd(&XD[s], xd);
    }
  }
  if (g.dD) atomicAdd(&sums[1], static_cast<double>(dd_part));

  // dC = alpha (gy S0) + W2 B, and T2; dB = beta d (x G) + W2^T C; per tile of N columns
  for (int n0 = 0; n0 < N; n0 += kTile) {
    Acc<F> acc;
    zero<F>(acc);
    block_product<kTC, true, false>(
        acc, P, gy_at,
        [&](int p, int n) { return n0 + n < N ? S0[static_cast<int64_t>(p) * N + n0 + n] : 0.0f; },
        As, Bs);
    COIL_UNROLL
    for (int i = 0; i < F::R; ++i) {
      const int t = F::row(i);
      const float alpha = t < len ? expf(lcs[t]) : 0.0f;
      float t2 = 0.0f;
      COIL_UNROLL
      for (int j = 0; j < F::C; ++j) {
        acc[i][j] *= alpha;
        t2 = fmaf(c_at(t, n0 + F::col(j)), acc[i][j], t2);
      }
      if (t < len) atomicAdd(&T2[t], t2);
    }
    block_product<kTC, false, false>(
        acc, len, [&](int t, int s) { return W2[t * kLd + s]; },
        [&](int s, int n) { return b_at(s, n0 + n); }, As, Bs);
    COIL_UNROLL
    for (int i = 0; i < F::R; ++i) COIL_UNROLL
    for (int j = 0; j < F::C; ++j) {
      const int t = F::row(i), n = n0 + F::col(j);
      if (t < len && n < N) atomicAdd(&g.dC[st.bc_row(a, t) + n], acc[i][j]);
    }

    zero<F>(acc);
    block_product<kTC, true, false>(
        acc, P, x_at,
        [&](int p, int n) { return n0 + n < N ? G[static_cast<int64_t>(p) * N + n0 + n] : 0.0f; },
        As, Bs);
    COIL_UNROLL
    for (int i = 0; i < F::R; ++i) {
      const int s = F::row(i);
      const float f = s < len ? expf(lc_last - lcs[s]) * dds[s] : 0.0f;
      COIL_UNROLL
      for (int j = 0; j < F::C; ++j) acc[i][j] *= f;
    }
    block_product<kTC, false, false>(
        acc, len, [&](int s, int t) { return W2[t * kLd + s]; },
        [&](int t, int n) { return c_at(t, n0 + n); }, As, Bs);
    COIL_UNROLL
    for (int i = 0; i < F::R; ++i) COIL_UNROLL
    for (int j = 0; j < F::C; ++j) {
      const int s = F::row(i), n = n0 + F::col(j);
      if (s < len && n < N) atomicAdd(&g.dB[st.bc_row(a, s) + n], acc[i][j]);
    }
  }

  // alpha_last G . S0
  {
    double part = 0.0;
    for (int64_t e = tid; e < a.P * a.N; e += kThreads)
      part += static_cast<double>(G[e]) * static_cast<double>(S0[e]);
    atomicAdd(&sums[0], part * exp(static_cast<double>(lc_last)));
  }
  // the pairs: row s of M becomes its exclusive prefix sums, then column t sums rows s >= t
  if (tid < kQ) {
    float run = 0.0f;
    for (int u = 0; u < kQ; ++u) {
      const float m = M[tid * kLd + u];
      M[tid * kLd + u] = run;
      run += m;
    }
  }
  __syncthreads();
  if (tid < kQ) {
    float pairs = 0.0f;
    for (int s = tid; s < len; ++s) pairs += M[s * kLd + tid];
    W1[tid] = pairs;  // W1 is free now: its first row holds the pair sums
  }
  __syncthreads();
  if (tid == 0) {
    const float A = a.A[st.h], bias = a.dt_bias ? a.dt_bias[st.h] : 0.0f;
    double suffix2 = 0.0, prefix3 = 0.0, dA = 0.0, dbias = 0.0;
    for (int t = len - 1; t >= 0; --t) suffix2 += T2[t];
    for (int t = 0; t < len; ++t) {
      if (t > 0) {
        suffix2 -= T2[t - 1];
        prefix3 += T3[t - 1];
      }
      const double run = sums[0] + suffix2 + prefix3 + W1[t];
      dA += dds[t] * run;
      double ddv = XD[t] + A * run;
      if (a.softplus) {
        const float v = a.dt[(st.b * a.L + st.t0 + t) * a.H + st.h] + bias;
        if (v <= 20.0f) ddv *= sigmoid_of(v);
      }
      g.ddt[(st.b * a.L + st.t0 + t) * a.H + st.h] = static_cast<float>(ddv);
      dbias += ddv;
    }
    atomicAdd(&g.dA[st.h], static_cast<float>(dA));
    if (g.ddt_bias) atomicAdd(&g.ddt_bias[st.h], static_cast<float>(dbias));
    if (g.dD) atomicAdd(&g.dD[st.h], static_cast<float>(sums[1]));
  }
}

// ---- host side: the kernels in order on one stream, on scratch the caller allocated ----
inline unsigned blocks_of(int64_t n) {
  return static_cast<unsigned>((n + kThreads - 1) / kThreads);
}
inline unsigned tiles(int64_t n) { return static_cast<unsigned>((n + kTile - 1) / kTile); }

// d and lc (step_floats each) of every step.
template <class Stream>
void steps_forward(const Args& a, float* dd, float* lc, [[maybe_unused]] Stream s) {
  COIL_LAUNCH(cumsum_kernel, dim3(blocks_of(a.batch * chunks(a.L) * a.H)), dim3(kThreads), 0, s, a,
              dd, lc);
}
// steps_forward, then S (state_floats): the state entering every chunk, kept for the backward.
// final_state may be null.
// The products run on the tensor cores (3xTF32: float32's accuracy) when tc, else in float32
// FMAs; COIL_SSD_SIMT=1 in the environment picks the latter (the host side reads it).
template <class Stream>
void chunk_state(bool tc, const Args& a, const float* U, const float* V, bool to_end,
                 const float* dd, const float* lc, float* out, [[maybe_unused]] Stream s) {
  const dim3 grid(static_cast<unsigned>(a.batch * chunks(a.L) * a.H), tiles(a.P) * tiles(a.N));
  if (tc)
    COIL_LAUNCH(chunk_state_kernel<true>, grid, dim3(kThreads), 0, s, a, U, V, to_end, dd, lc, out);
  else
    COIL_LAUNCH(chunk_state_kernel<false>, grid, dim3(kThreads), 0, s, a, U, V, to_end, dd, lc,
                out);
}

template <class Stream>
void states_forward(bool tc, const Args& a, float* dd, float* lc, float* S, float* final_state,
                    [[maybe_unused]] Stream s) {
  const int64_t nc = chunks(a.L);
  steps_forward(a, dd, lc, s);
  chunk_state(tc, a, a.x, a.B, true, dd, lc, S, s);
  COIL_LAUNCH(state_pass_kernel, dim3(blocks_of(a.batch * a.H * a.P * a.N)), dim3(kThreads), 0, s,
              a.batch, nc, a.H, a.P * a.N, lc, S, a.init, final_state, false);
}

// y (and y_pre when not null) from the states states_forward left.
template <class Stream>
void output_forward(bool tc, const Args& a, const float* dd, const float* lc, const float* S,
                    float* y, float* y_pre, [[maybe_unused]] Stream s) {
  const dim3 grid(static_cast<unsigned>(a.batch * chunks(a.L) * a.H), tiles(a.P));
  if (tc)
    COIL_LAUNCH(chunk_output_kernel<true>, grid, dim3(kThreads), 0, s, a, dd, lc, S, y, y_pre);
  else
    COIL_LAUNCH(chunk_output_kernel<false>, grid, dim3(kThreads), 0, s, a, dd, lc, S, y, y_pre);
}

// Every gradient from states_forward's dd, lc and S. Gbuf: state_floats of scratch; gy:
// batch * L * H * P floats of scratch when z (else unused).
template <class Stream>
void backward(bool tc, const Args& a, const float* dd, const float* lc, const float* S,
              const Grads& g, float* Gbuf, float* gy, [[maybe_unused]] Stream s) {
  const int64_t nc = chunks(a.L), sites = a.batch * nc * a.H;
  const float* gyp = g.dy;
  if (a.z) {
    const int64_t n = a.batch * a.L * a.H * a.P;
    COIL_LAUNCH(gate_grad_kernel, dim3(blocks_of(n)), dim3(kThreads), 0, s, n, g.dy, a.z, g.y_pre,
                gy, g.dz);
    gyp = gy;
  }
  chunk_state(tc, a, gyp, a.C, false, dd, lc, Gbuf, s);
  COIL_LAUNCH(state_pass_kernel, dim3(blocks_of(a.batch * a.H * a.P * a.N)), dim3(kThreads), 0, s,
              a.batch, nc, a.H, a.P * a.N, lc, Gbuf, g.dfinal, g.dinit, true);
#ifdef __CUDACC__
  cudaFuncSetAttribute(backward_kernel<true>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                       static_cast<int>(kBackwardSharedBytes));
  cudaFuncSetAttribute(backward_kernel<false>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                       static_cast<int>(kBackwardSharedBytes));
#endif
  if (tc)
    COIL_LAUNCH(backward_kernel<true>, dim3(static_cast<unsigned>(sites)), dim3(kThreads),
                kBackwardSharedBytes, s, a, dd, lc, S, Gbuf, gyp, g);
  else
    COIL_LAUNCH(backward_kernel<false>, dim3(static_cast<unsigned>(sites)), dim3(kThreads),
                kBackwardSharedBytes, s, a, dd, lc, S, Gbuf, gyp, g);
}

}  // namespace
}  // namespace coil::cuda::ssd
