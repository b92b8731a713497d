// Fast selective_scan kernels (Mamba-1, f32) for the common shapes; scan.cu keeps the plain
// kernels for the rest (scan_args.h's selective_scan_fast_fits says which). CUDA source that the
// tests also run on the CPU (kernel_source.cuh); selective_scan.cu has the launchers.
//
// A block is one batch row and 32 consecutive channels of one group: lane = channel, so every
// token-major load and store (u, delta, z, y, dy, du, ...) is one 128-byte row per warp, and
// B_t, C_t are the same for the whole warp (broadcast reads from shared memory). The warps split
// time: a chunk of T = W * I steps, warp w owning the I consecutive steps [w I, (w + 1) I).
// For each state n a thread forms a_t = exp(delta_t A[n]) (one exp per element) and
// b_t = delta_t u_t B_t[n] for its steps, composes them into one affine map (A, B), and the
// warps exchange the maps through shared memory: warp w combines those of warps < w with the
// chunk's incoming state, then walks its steps again with the true state. Sums over n (y, du,
// ddelta) stay in registers. The chunk's outgoing state is carried to the next chunk.
//
// Forward: W = kFwdWarps, I = 16. It writes the state before every kCkpt-th step (the spacing
// of the CPU's checkpoints, so the op's tensor fits) as (batch, ceil(L / kCkpt), N, dim).
// Backward: T = kCkpt (W = 8, I = 8), chunks from the last: the forward maps of the chunk from
// its checkpoint and the reverse maps of dL/dh (from the next chunk's carry) are exchanged in
// one round, then one reverse walk gives every gradient. dB and dC sum over channels: the 32
// lanes' values of a warp's 8 steps are reduced by an xor-shuffle reduce-scatter (16 values,
// one per lane pair), stored in a chunk tile, and the tile goes out as coalesced atomics (one
// per (step, state) and block of 32 channels). dA, dD, ddelta_bias: per-thread sums, atomics
// at the end.
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "kernel_source.cuh"
#include "scan_args.h"
#include "scan_math.cuh"

// Internal linkage: the test binary compiles this source for the CPU beside libcoil's own.
namespace coil::cuda {
namespace {

constexpr float kLog2e = 1.4426950408889634f;
constexpr int kFwdWarps = 5, kFwdItems = 16;
constexpr int kBwdWarps = 8, kBwdItems = 8;
constexpr int kCkpt = static_cast<int>(kSelectiveFastCkpt);
static_assert(kBwdWarps * kBwdItems == kCkpt, "the backward's chunk is the checkpoint spacing");
static_assert(kFwdItems % 4 == 0 && kBwdItems % 4 == 0, "B and C are read as float4");
static_assert(kCkpt % kFwdItems == 0, "every checkpoint starts a forward warp's steps");

// 2^x on the special-function unit: one instruction, a few ulp, well inside the f32 tolerance.
__device__ __forceinline__ float fast_exp2(float x) {
#ifdef __CUDACC__
  float r;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
  return r;
#else
  return std::exp2(x);
#endif
}

struct Geometry {
  int64_t L, dim, N, G;
  int64_t b, c;  // batch row, this lane's channel
  int64_t g;     // the block's group of B and C
  int64_t nck;   // checkpoints per row
};

__device__ Geometry geometry(const ScanArgs& a) {
  Geometry q;
  q.L = a.L;
  q.dim = a.dim;
  q.N = a.N;
  q.G = a.G;
  q.b = blockIdx.y;
  q.c = int64_t(blockIdx.x) * 32 + (threadIdx.x & 31);
  q.g = int64_t(blockIdx.x) * 32 / (a.dim / a.G);
  q.nck = (a.L + kCkpt - 1) / kCkpt;
  return q;
}

// Stages the chunk's B and C rows [t0, t0 + T) transposed, [n][t] with row stride S, zero past L.
template <int T>
__device__ void stage_bc(const Geometry& q, const float* B, const float* C, int64_t t0, float* Bs,
                         float* Cs) {
  constexpr int S = T + 4;
  const int64_t N = q.N;
  for (int64_t i = threadIdx.x; i < T * N; i += blockDim.x) {
    const int64_t t = i / N, n = i - t * N;
    float bv = 0.f, cv = 0.f;
    if (t0 + t < q.L) {
      const int64_t off = ((q.b * q.L + t0 + t) * q.G + q.g) * N + n;
      bv = B[off];
      cv = C[off];
    }
    Bs[n * S + t] = bv;
    Cs[n * S + t] = cv;
  }
}

// ---- forward ----

template <int W, int I>
__global__ void __launch_bounds__(W * 32, 3)
    selective_fwd_k(ScanArgs a, float* __restrict__ y, float* __restrict__ fin,
                    float* __restrict__ ckpt) {
  constexpr int T = W * I, S = T + 4;
  COIL_DYNAMIC_SHARED(float4, smem4);
  float* sm = reinterpret_cast<float*>(smem4);
  const Geometry q = geometry(a);
  const int N = static_cast<int>(q.N);  // 32-bit shared-memory indexing in the hot loop
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  float* Bs = sm;               // [N][S]
  float* Cs = Bs + N * S;       // [N][S]
  float* As2 = Cs + N * S;      // [N][32]: A * log2(e)
  float* carry = As2 + N * 32;  // [2][N][32]: state entering the chunk, by chunk parity
  float2* agg = reinterpret_cast<float2*>(carry + 2 * N * 32);  // [2][W][32], by step parity

  const float* u = static_cast<const float*>(a.u);
  const float* delta = static_cast<const float*>(a.delta);
  const float* z = static_cast<const float*>(a.z);
  const float* A = static_cast<const float*>(a.A);
  const float* init = static_cast<const float*>(a.init);
  const int64_t c0 = int64_t(blockIdx.x) * 32;
  for (int64_t i = threadIdx.x; i < N * 32; i += blockDim.x) {
    const int64_t n = i / 32, l = i % 32;
    As2[i] = A[(c0 + l) * N + n] * kLog2e;
    carry[i] = init ? init[(q.b * q.dim + c0 + l) * N + n] : 0.f;
  }
  const float Dv = a.D ? static_cast<const float*>(a.D)[q.c] : 0.f;
  const float bias = a.bias ? static_cast<const float*>(a.bias)[q.c] : 0.f;

  int p = 0, par = 0;
  for (int64_t t0 = 0; t0 < q.L; t0 += T) {
    __syncthreads();  // the previous chunk is done with Bs, Cs
    stage_bc<T>(q, static_cast<const float*>(a.B), static_cast<const float*>(a.C), t0, Bs, Cs);
    float dt[I], dtu[I], yacc[I], dt_sum = 0.f;
    COIL_UNROLL
    for (int j = 0; j < I; ++j) {
      const int64_t t = t0 + w * I + j;
      dt[j] = dtu[j] = yacc[j] = 0.f;  // steps past L are the identity map
      if (t < q.L) {
        const int64_t r = (q.b * q.L + t) * q.dim + q.c;
        const float uv = u[r];
        dt[j] = softplus_of(delta[r] + bias, a.softplus, nullptr);
        dtu[j] = dt[j] * uv;
        yacc[j] = Dv * uv;
      }
      dt_sum += dt[j];
    }
    __syncthreads();
    const int64_t ts = t0 + w * I;  // this warp's first step
    float* ck_out = ckpt && ts % kCkpt == 0 && ts < q.L
                        ? ckpt + (q.b * q.nck + ts / kCkpt) * N * q.dim + q.c
                        : nullptr;
    const float* c_in = carry + p * N * 32 + lane;
    float* c_out = carry + (p ^ 1) * N * 32 + lane;
    for (int n = 0; n < N; ++n) {
      const float A2 = As2[n * 32 + lane];
      float2* ag = agg + par * W * 32 + lane;
      const float4* Bq = reinterpret_cast<const float4*>(Bs + n * S + w * I);
      // the product of the steps' decays is one exp of the summed deltas
      const float Aagg = fast_exp2(dt_sum * A2);
      float av[I], bv[I], Bagg = 0.f;
      COIL_UNROLL
      for (int k = 0; k < I / 4; ++k) {
        const float4 b4 = Bq[k];
        const float bb[4] = {b4.x, b4.y, b4.z, b4.w};
        COIL_UNROLL
        for (int r = 0; r < 4; ++r) {
          const int j = 4 * k + r;
          av[j] = fast_exp2(dt[j] * A2);
          bv[j] = dtu[j] * bb[r];
          Bagg = fmaf(av[j], Bagg, bv[j]);
        }
      }
      ag[w * 32] = make_float2(Aagg, Bagg);
      __syncthreads();
      float h = c_in[n * 32];
      COIL_UNROLL
      for (int w2 = 0; w2 < W - 1; ++w2)
        if (w2 < w) {
          const float2 m = ag[w2 * 32];
          h = fmaf(m.x, h, m.y);
        }
      if (ck_out) ck_out[int64_t(n) * q.dim] = h;
      if (w == W - 1) c_out[n * 32] = fmaf(Aagg, h, Bagg);
      const float4* Cq = reinterpret_cast<const float4*>(Cs + n * S + w * I);
      COIL_UNROLL
      for (int k = 0; k < I / 4; ++k) {
        const float4 c4 = Cq[k];
        const float cc[4] = {c4.x, c4.y, c4.z, c4.w};
        COIL_UNROLL
        for (int r = 0; r < 4; ++r) {
          const int j = 4 * k + r;
          h = fmaf(av[j], h, bv[j]);
          yacc[j] = fmaf(cc[r], h, yacc[j]);
        }
      }
      par ^= 1;
    }
    p ^= 1;
    COIL_UNROLL
    for (int j = 0; j < I; ++j) {
      const int64_t t = t0 + w * I + j;
      if (t < q.L) {
        const int64_t r = (q.b * q.L + t) * q.dim + q.c;
        float v = yacc[j];
        if (z) {
          const float zv = z[r];
          v *= zv * sigmoid_of(zv);
        }
        y[r] = v;
      }
    }
  }
  if (fin) {
    __syncthreads();
    for (int64_t i = threadIdx.x; i < N * 32; i += blockDim.x) {
      const int64_t n = i / 32, l = i % 32;
      fin[(q.b * q.dim + c0 + l) * N + n] = carry[p * N * 32 + i];
    }
  }
}

// ---- backward ----

// One halving level of the reduce-scatter below: keep one half of v[0..2h), trade the other half
// with the lane kMask away.
template <int kMask, int kH>
__device__ __forceinline__ void reduce_scatter_level(float (&v)[16], int lane) {
  const bool upper = lane & kMask;
  COIL_UNROLL
  for (int i = 0; i < kH; ++i) {
    const float send = upper ? v[i] : v[i + kH];
    const float keep = upper ? v[i + kH] : v[i];
    v[i] = keep + __shfl_xor_sync(0xffffffffu, send, kMask);
  }
}

// Sums v[0..15] over the warp's 32 lanes: afterwards lanes 2i and 2i + 1 hold the sum of v[i].
// 4 * 15 + 2 instructions per lane, against 10 per value for a plain warp sum of each.
__device__ __forceinline__ float lane_reduce_scatter16(float (&v)[16], int lane) {
  reduce_scatter_level<16, 8>(v, lane);
  reduce_scatter_level<8, 4>(v, lane);
  reduce_scatter_level<4, 2>(v, lane);
  reduce_scatter_level<2, 1>(v, lane);
  return v[0] + __shfl_xor_sync(0xffffffffu, v[0], 1);
}

template <int W, int I>
__global__ void __launch_bounds__(W * 32, 2)
    selective_bwd_k(ScanArgs a, const float* __restrict__ ckpt, ScanGrads gr) {
  constexpr int T = W * I, S = T + 4;
  static_assert(2 * I == 16, "the lane reduce-scatter takes 16 values: dB and dC of 8 steps");
  COIL_DYNAMIC_SHARED(float4, smem4);
  float* sm = reinterpret_cast<float*>(smem4);
  const Geometry q = geometry(a);
  const int N = static_cast<int>(q.N), NP = N + 1;  // NP: padded row of the dB/dC tiles
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  float* Bs = sm;                    // [N][S]
  float* Cs = Bs + N * S;            // [N][S]
  float* Acol = Cs + N * S;          // [N][32]
  float* ecarry = Acol + N * 32;     // [2][N][32]: dL/dh of the state leaving the chunk
  float* dAs = ecarry + 2 * N * 32;  // [W][N][32]: per-thread sums of dA
  float* tileB = dAs + W * N * 32;   // [T][NP]
  float* tileC = tileB + T * NP;     // [T][NP]
  float* aggR = tileC + T * NP;      // [2][W][32]: reverse maps' offsets
  float2* aggF = reinterpret_cast<float2*>(aggR + 2 * W * 32);  // [2][W][32]

  const float* u = static_cast<const float*>(a.u);
  const float* delta = static_cast<const float*>(a.delta);
  const float* z = static_cast<const float*>(a.z);
  const float* A = static_cast<const float*>(a.A);
  const float* dy = static_cast<const float*>(gr.dy);
  const float* dfin = static_cast<const float*>(gr.dfinal);
  float* du = static_cast<float*>(gr.du);
  float* ddelta = static_cast<float*>(gr.ddelta);
  float* dz = static_cast<float*>(gr.dz);
  float* dB = static_cast<float*>(gr.dB);
  float* dC = static_cast<float*>(gr.dC);
  const int64_t c0 = int64_t(blockIdx.x) * 32;
  for (int64_t i = threadIdx.x; i < N * 32; i += blockDim.x) {
    const int64_t n = i / 32, l = i % 32;
    Acol[i] = A[(c0 + l) * N + n];
    ecarry[i] = dfin ? dfin[(q.b * q.dim + c0 + l) * N + n] : 0.f;
  }
  for (int64_t i = threadIdx.x; i < W * N * 32; i += blockDim.x) dAs[i] = 0.f;
  const float Dv = a.D ? static_cast<const float*>(a.D)[q.c] : 0.f;
  const float bias = a.bias ? static_cast<const float*>(a.bias)[q.c] : 0.f;
  float dD_acc = 0.f, dbias_acc = 0.f;
  // After the lane reduce-scatter, even lane 2i holds value i: dB (i < I) or dC of step i % I.
  float* my_tile =
      lane & 1 ? nullptr : ((lane >> 1) < I ? tileB : tileC) + (w * I + (lane >> 1) % I) * NP;

  int p = 0, par = 0;
  for (int64_t ck = q.nck - 1; ck >= 0; --ck) {
    const int64_t t0 = ck * T;
    __syncthreads();  // the previous chunk is done with Bs, Cs and its tiles are out
    stage_bc<T>(q, static_cast<const float*>(a.B), static_cast<const float*>(a.C), t0, Bs, Cs);
    float dt[I], dtu[I], gy[I], S1[I], S2[I], ypre[I], dt_sum = 0.f;
    COIL_UNROLL
    for (int j = 0; j < I; ++j) {
      const int64_t t = t0 + w * I + j;
      dt[j] = dtu[j] = gy[j] = ypre[j] = S1[j] = S2[j] = 0.f;  // past L: identity, no gradient
      if (t < q.L) {
        const int64_t r = (q.b * q.L + t) * q.dim + q.c;
        const float uv = u[r];
        dt[j] = softplus_of(delta[r] + bias, a.softplus, nullptr);
        dtu[j] = dt[j] * uv;
        gy[j] = dy[r];
        if (z) {
          const float zv = z[r];
          gy[j] *= zv * sigmoid_of(zv);
        }
        ypre[j] = Dv * uv;
      }
      dt_sum += dt[j];
    }
    __syncthreads();
    const float* ck_row = ckpt + (q.b * q.nck + ck) * N * q.dim + q.c;  // state n at n * dim
    const float* e_in = ecarry + p * N * 32 + lane;
    float* e_out = ecarry + (p ^ 1) * N * 32 + lane;
    for (int n = 0; n < N; ++n) {
      const float hin_chunk = ck_row[int64_t(n) * q.dim];
      float2* agF = aggF + par * W * 32 + lane;
      float* agR = aggR + par * W * 32 + lane;
      const float An = Acol[n * 32 + lane], A2 = An * kLog2e;
      const float4* Bq = reinterpret_cast<const float4*>(Bs + n * S + w * I);
      const float4* Cq = reinterpret_cast<const float4*>(Cs + n * S + w * I);
      float Bj[I], Cj[I];
      COIL_UNROLL
      for (int k = 0; k < I / 4; ++k) {
        const float4 b4 = Bq[k], c4 = Cq[k];
        Bj[4 * k] = b4.x, Bj[4 * k + 1] = b4.y, Bj[4 * k + 2] = b4.z, Bj[4 * k + 3] = b4.w;
        Cj[4 * k] = c4.x, Cj[4 * k + 1] = c4.y, Cj[4 * k + 2] = c4.z, Cj[4 * k + 3] = c4.w;
      }
      // This warp's steps as maps: forward h -> Aagg h + Bagg, reverse e -> Aagg e + E.
      const float Aagg = fast_exp2(dt_sum * A2);
      float av[I], hs[I], Bagg = 0.f, E = 0.f;
      COIL_UNROLL
      for (int j = 0; j < I; ++j) {
        av[j] = fast_exp2(dt[j] * A2);
        hs[j] = dtu[j] * Bj[j];  // b_j for now, the state h_j after the walk below
        Bagg = fmaf(av[j], Bagg, hs[j]);
      }
      COIL_UNROLL
      for (int j = I - 1; j >= 0; --j) E = av[j] * fmaf(gy[j], Cj[j], E);
      agF[w * 32] = make_float2(Aagg, Bagg);
      agR[w * 32] = E;
      __syncthreads();
      float h = hin_chunk;
      COIL_UNROLL
      for (int w2 = 0; w2 < W - 1; ++w2)
        if (w2 < w) {
          const float2 m = agF[w2 * 32];
          h = fmaf(m.x, h, m.y);
        }
      float e = e_in[n * 32];
      COIL_UNROLL
      for (int w2 = W - 1; w2 > 0; --w2)
        if (w2 > w) e = fmaf(agF[w2 * 32].x, e, agR[w2 * 32]);
      if (w == 0) e_out[n * 32] = fmaf(Aagg, e, E);
      const float hin = h;
      COIL_UNROLL
      for (int j = 0; j < I; ++j) {
        h = fmaf(av[j], h, hs[j]);
        hs[j] = h;
        ypre[j] = fmaf(Cj[j], h, ypre[j]);
      }
      float vals[16], dA_part = 0.f;  // vals: dB terms of the 8 steps, then dC terms
      COIL_UNROLL
      for (int j = I - 1; j >= 0; --j) {
        const float Gt = fmaf(gy[j], Cj[j], e);  // dL/dh_j
        vals[j] = Gt * dtu[j];
        S1[j] = fmaf(Gt, Bj[j], S1[j]);
        e = av[j] * Gt;
        const float gh = e * (j > 0 ? hs[j - 1] : hin);  // dL/d(delta A) of step j
        S2[j] = fmaf(gh, An, S2[j]);
        dA_part = fmaf(gh, dt[j], dA_part);
        vals[I + j] = gy[j] * hs[j];
      }
      const float red = lane_reduce_scatter16(vals, lane);
      if (my_tile) my_tile[n] = red;
      dAs[(w * N + n) * 32 + lane] += dA_part;
      par ^= 1;
    }
    p ^= 1;
    COIL_UNROLL
    for (int j = 0; j < I; ++j) {
      const int64_t t = t0 + w * I + j;
      if (t >= q.L) continue;
      const int64_t r = (q.b * q.L + t) * q.dim + q.c;
      const float uv = u[r];
      float dsp;
      softplus_of(delta[r] + bias, a.softplus, &dsp);
      const float draw = fmaf(uv, S1[j], S2[j]) * dsp;
      ddelta[r] = draw;
      du[r] = fmaf(dt[j], S1[j], Dv * gy[j]);
      if (z && dz) {
        const float zv = z[r], sg = sigmoid_of(zv);
        dz[r] = dy[r] * ypre[j] * sg * (1.f + zv * (1.f - sg));
      }
      dD_acc = fmaf(gy[j], uv, dD_acc);
      dbias_acc += draw;
    }
    __syncthreads();  // the tiles are complete
    for (int64_t i = threadIdx.x; i < T * N; i += blockDim.x) {
      const int64_t t = i / N, n = i - t * N;
      if (t0 + t >= q.L) break;  // i grows with t
      const int64_t off = ((q.b * q.L + t0 + t) * q.G + q.g) * N + n;
      atomicAdd(dB + off, tileB[t * NP + n]);
      atomicAdd(dC + off, tileC[t * NP + n]);
    }
  }
  __syncthreads();
  for (int64_t i = threadIdx.x; i < N * 32; i += blockDim.x) {
    const int64_t n = i / 32, l = i % 32;
    if (gr.dinit)
      static_cast<float*>(gr.dinit)[(q.b * q.dim + c0 + l) * N + n] = ecarry[p * N * 32 + i];
    if (gr.dA) {
      float s = 0.f;
      for (int w2 = 0; w2 < W; ++w2) s += dAs[w2 * N * 32 + i];
      atomicAdd(static_cast<float*>(gr.dA) + (c0 + l) * N + n, s);
    }
  }
  if (gr.dD) atomicAdd(static_cast<float*>(gr.dD) + q.c, dD_acc);
  if (gr.dbias) atomicAdd(static_cast<float*>(gr.dbias) + q.c, dbias_acc);
}

template <int W, int I>
size_t fwd_smem(int64_t N) {
  constexpr int S = W * I + 4;
  return sizeof(float) * (2 * N * S + 3 * N * 32 + 2 * 2 * W * 32);
}

template <int W, int I>
size_t bwd_smem(int64_t N) {
  constexpr int T = W * I, S = T + 4;
  return sizeof(float) *
         (2 * N * S + 3 * N * 32 + W * N * 32 + 2 * T * (N + 1) + 2 * W * 32 + 2 * 2 * W * 32);
}

// Shared memory above the default 48 KiB needs the kernel's opt-in, once per process.
template <class K>
void allow_smem([[maybe_unused]] K kernel, [[maybe_unused]] size_t bytes) {
#ifdef __CUDACC__
  if (bytes > 48 * 1024)
    cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                         static_cast<int>(bytes));
#endif
}

// The launches, on the given stream (launch.h's launchers; the tests' emulation).
template <class Stream>
void fast_forward(const ScanArgs& a, float* y, float* final_state, float* checkpoints,
                  [[maybe_unused]] Stream s) {
  constexpr int W = kFwdWarps, I = kFwdItems;
  const size_t smem = fwd_smem<W, I>(a.N);
  auto* k = &selective_fwd_k<W, I>;
  allow_smem(k, smem);
  const dim3 grid(static_cast<unsigned>(a.dim / 32), static_cast<unsigned>(a.batch));
  COIL_LAUNCH(k, grid, dim3(W * 32), smem, s, a, y, final_state, checkpoints);
}
template <class Stream>
void fast_backward(const ScanArgs& a, const float* checkpoints, const ScanGrads& g,
                   [[maybe_unused]] Stream s) {
  constexpr int W = kBwdWarps, I = kBwdItems;
  const size_t smem = bwd_smem<W, I>(a.N);
  auto* k = &selective_bwd_k<W, I>;
  allow_smem(k, smem);
  const dim3 grid(static_cast<unsigned>(a.dim / 32), static_cast<unsigned>(a.batch));
  COIL_LAUNCH(k, grid, dim3(W * 32), smem, s, a, checkpoints, g);
}

}  // namespace
}  // namespace coil::cuda
