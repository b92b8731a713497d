// CPU kernels of ssd_scan (Mamba-2's scan). The forward is a per-head recurrence whose state
// stays in L1: per step S = exp(d A) S + d x B^T (one scalar exp per head), y = S C + D x. The
// backward works on chunks of kChunk steps in matrix form, from the states the forward kept at
// chunk starts (see "backward" below). Both are the same function as mamba_ssm's chunked SSD.
//
// Memory layout. Operands are contiguous, row-major, in the compute type T (float or double):
//   x, z, y, y_pre, dy, dx, dz: [batch][L][heads][P]      dt, ddt: [batch][L][heads]
//   B, C, dB, dC: [batch][L][groups][N]                    A, D, dt_bias (and grads): [heads]
//   initial/final state and their grads: [batch][heads][P][N]
//   kept states: [batch][chunk][heads][Pp][Np]
// Rows are padded to whole SIMD vectors, Pp and Np (padding lanes stay zero). The forward splits
// its work over (batch, head) pairs and keeps its state as S[N][Pp], vectorised over P: y =
// sum_n C_n S[n][:] needs no horizontal sums. d = softplus(dt + dt_bias) and the decay
// a = exp(d A) of all (batch, step, head) are computed first, vectorised, into scratch laid out
// like dt.
//
// Scaled state. The forward holds its state as S = scale * S' with a scalar scale, so a step is
// one FMA per element (S' += B (X / scale)^T) instead of a multiply and an FMA; the decay goes
// into the scalar. When scale leaves [kMinScale, 1 / kMinScale] it is folded back into S' (rare:
// every ~27 / |d A| steps in f32), and a decay too strong for any scale is applied to S' directly.
//
// One step (L = 1, decoding) has a path of its own: step_head.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <vector>

#if defined(__AVX512F__) || defined(__AVX__)
#include <immintrin.h>
#endif

#include "../../core/allocator.h"
#include "../../core/parallel.h"
#include "../../core/simd.h"
#include "kernels.h"

namespace coil::cpu {

namespace {

// 64-byte aligned, zeroed scratch from the caching allocator: a large block freed by the last
// call is reused instead of being mapped (and its pages faulted in) again.
template <class T>
class Scratch {
 public:
  explicit Scratch(int64_t n, bool zero = true)
      : bytes_((static_cast<size_t>(std::max<int64_t>(n, 1)) * sizeof(T) + 63) / 64 * 64) {
    p_ = static_cast<T*>(get_allocator(kCPU)->allocate(bytes_));
    if (zero) std::memset(p_, 0, bytes_);
  }
  ~Scratch() { get_allocator(kCPU)->deallocate(p_, bytes_); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  T* get() const { return p_; }

 private:
  size_t bytes_;
  T* p_;
};

// Rows of x, y and dy are H * P apart in time, beyond what the hardware prefetchers follow: each
// step asks for rows a few steps ahead.
constexpr int64_t kPrefetchSteps = 6;
template <class T>
void prefetch_row(const T* p, int64_t n, bool write) {
  if (!p) return;
  const char* c = reinterpret_cast<const char*>(p);
  const char* e = c + n * static_cast<int64_t>(sizeof(T));
  if (write)
    for (; c < e; c += 64) __builtin_prefetch(c, 1);
  else
    for (; c < e; c += 64) __builtin_prefetch(c, 0);
}

template <class T>
const T* ptr_or_null(const Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}
template <class T>
T* mut_or_null(const Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

// Double-precision vectors for the sums that feed dA and dt (they cancel heavily).
constexpr int WD = simd::kWidth / 2;
typedef double VecD __attribute__((vector_size(simd::kWidth * 4)));
typedef float HalfF __attribute__((vector_size(simd::kWidth * 2)));

VecD load_d(const double* p) {
  VecD v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
void store_d(double* p, VecD v) { std::memcpy(p, &v, sizeof(v)); }
// Sum of the lanes of a vector by halving (log2 lanes dependent adds, not one per lane).
template <class V>
auto lane_sum(V v) {
  using E = std::remove_cvref_t<decltype(v[0])>;
  constexpr int n = sizeof(V) / sizeof(E);
  if constexpr (n == 1) {
    return v[0];
  } else {
    typedef E H __attribute__((vector_size(sizeof(V) / 2)));
    H lo, hi;
    std::memcpy(&lo, &v, sizeof(H));
    std::memcpy(&hi, reinterpret_cast<const char*>(&v) + sizeof(H), sizeof(H));
    return lane_sum(lo + hi);
  }
}

// sum_i a[i] * b[i] over n entries (n a multiple of the vector width), in double.
double dot_d(const float* a, const float* b, int64_t n) {
  VecD acc0{}, acc1{};
  for (int64_t i = 0; i < n; i += 2 * WD) {
    HalfF a0, a1, b0, b1;
    std::memcpy(&a0, a + i, sizeof(a0));
    std::memcpy(&a1, a + i + WD, sizeof(a1));
    std::memcpy(&b0, b + i, sizeof(b0));
    std::memcpy(&b1, b + i + WD, sizeof(b1));
    acc0 += __builtin_convertvector(a0, VecD) * __builtin_convertvector(b0, VecD);
    acc1 += __builtin_convertvector(a1, VecD) * __builtin_convertvector(b1, VecD);
  }
  return lane_sum(acc0 + acc1);
}
double dot_d(const double* a, const double* b, int64_t n) {
  VecD acc0{}, acc1{};
  int64_t i = 0;
  for (; i + 2 * WD <= n; i += 2 * WD) {
    acc0 += load_d(a + i) * load_d(b + i);
    acc1 += load_d(a + i + WD) * load_d(b + i + WD);
  }
  if (i < n) acc0 += load_d(a + i) * load_d(b + i);
  return lane_sum(acc0 + acc1);
}

// sum_i a[i] * b[i] over n entries (a multiple of the vector width): f32 sums over blocks of 256
// products, added up in double (double: dot_d).
double dot_blocked(const float* a, const float* b, int64_t n) {
  typedef float V __attribute__((vector_size(simd::kWidth * 4)));
  double total = 0;
  for (int64_t i0 = 0; i0 < n; i0 += 256) {
    V s0{}, s1{};
    const int64_t e = std::min<int64_t>(n, i0 + 256);
    int64_t i = i0;
    for (; i + 2 * simd::kWidth <= e; i += 2 * simd::kWidth) {
      s0 += simd::load(a + i) * simd::load(b + i);
      s1 += simd::load(a + i + simd::kWidth) * simd::load(b + i + simd::kWidth);
    }
    for (; i < e; i += simd::kWidth) s0 += simd::load(a + i) * simd::load(b + i);
    total += static_cast<double>(lane_sum(s0 + s1));
  }
  return total;
}
double dot_blocked(const double* a, const double* b, int64_t n) { return dot_d(a, b, n); }

// Adds the lanes of a float or double vector of simd::kWidth * 4 bytes to double lanes held in
// two vectors (hi stays zero for double).
template <class V>
void to_double(V v, VecD& lo, VecD& hi) {
  if constexpr (sizeof(v[0]) == 4) {
    HalfF a, b;
    std::memcpy(&a, &v, sizeof(a));
    std::memcpy(&b, reinterpret_cast<const char*>(&v) + sizeof(a), sizeof(b));
    lo += __builtin_convertvector(a, VecD);
    hi += __builtin_convertvector(b, VecD);
  } else {
    VecD a;
    std::memcpy(&a, &v, sizeof(a));
    lo += a;
  }
}

// W x W tiles transposed in registers (log2 W levels of two-vector shuffles, W per level), and
// whole matrices of such tiles.
template <class T>
struct Transpose {
  static constexpr int W = simd::kWidth * 4 / static_cast<int>(sizeof(T));
  static constexpr int kLevels = __builtin_ctz(W);
  typedef T Vec __attribute__((vector_size(simd::kWidth * 4)));
  typedef std::conditional_t<sizeof(T) == 4, int32_t, int64_t> Index;
  typedef Index Mask __attribute__((vector_size(simd::kWidth * 4)));
  Mask lo[kLevels], hi[kLevels];
  // Level h swaps the off-diagonal h x h blocks of the row pairs (i, i + h), i & h == 0.
  Transpose() {
    for (int lv = 0, h = W / 2; lv < kLevels; ++lv, h /= 2)
      for (int l = 0; l < W; ++l) {
        lo[lv][l] = (l & h) == 0 ? l : W + l - h;
        hi[lv][l] = (l & h) == 0 ? l + h : W + l;
      }
  }
  void tile(Vec* v) const {  // v[i] = row i in, column i out
#pragma GCC unroll 8
    for (int lv = 0, h = W / 2; lv < kLevels; ++lv, h /= 2)
#pragma GCC unroll 16
      for (int i = 0; i < W; ++i)
        if ((i & h) == 0) {
          const Vec a = v[i], c = v[i + h];
          v[i] = shuffle(a, c, lo[lv]);
          v[i + h] = shuffle(a, c, hi[lv]);
        }
  }
  // GCC's two-vector shuffle by a run-time mask; clang (the fuzz build) has none: a lane loop.
  static Vec shuffle(Vec a, Vec b, Mask m) {
#if defined(__clang__)
    Vec r;
    for (int l = 0; l < W; ++l) r[l] = m[l] < W ? a[m[l]] : b[m[l] - W];
    return r;
#else
    return __builtin_shuffle(a, b, m);
#endif
  }
  // dst[c][r] = scale * src[r][c] for rows x cols (both multiples of W). With stream, dst (64-byte
  // aligned rows) is written around the caches: it is read much later; call stream_fence() after.
  void matrix(const T* src, int64_t ss, int64_t rows, int64_t cols, T* dst, int64_t ds,
              T scale = T(1), bool stream = false) const {
    for (int64_t r0 = 0; r0 < rows; r0 += W)
      for (int64_t c0 = 0; c0 < cols; c0 += W) {
        Vec v[W];
        for (int i = 0; i < W; ++i) std::memcpy(&v[i], src + (r0 + i) * ss + c0, sizeof(Vec));
        tile(v);
        for (int i = 0; i < W; ++i) {
          const Vec o = v[i] * scale;
          T* d = dst + (c0 + i) * ds + r0;
          if (stream && store_stream(d, o)) continue;
          std::memcpy(d, &o, sizeof(Vec));
        }
      }
  }
  static bool store_stream(T* d, Vec v) {
#if defined(__AVX512F__)
    if constexpr (sizeof(Vec) == 64) {
      if (reinterpret_cast<uintptr_t>(d) % 64 != 0) return false;
      __m512 r;
      std::memcpy(&r, &v, 64);
      _mm512_stream_ps(reinterpret_cast<float*>(d), r);
      return true;
    }
#elif defined(__AVX__)
    if constexpr (sizeof(Vec) == 32) {
      if (reinterpret_cast<uintptr_t>(d) % 32 != 0) return false;
      __m256 r;
      std::memcpy(&r, &v, 32);
      _mm256_stream_ps(reinterpret_cast<float*>(d), r);
      return true;
    }
#endif
    (void)d;
    (void)v;
    return false;
  }
  static void stream_fence() {
#if defined(__AVX512F__) || defined(__AVX__)
    _mm_sfence();
#endif
  }
  static const Transpose& get() {
    static const Transpose t;
    return t;
  }
};

template <class T>
struct Ssd {
  static constexpr int W = simd::kWidth * 4 / static_cast<int>(sizeof(T));
  typedef T Vec __attribute__((vector_size(simd::kWidth * 4)));
  static constexpr int kSlabP = 4;  // forward: P-vectors held in registers per pass over N
  // Inputs divided by scale stay far from overflow: |S'| <= |S| / kMinScale.
  static constexpr T kMinScale = sizeof(T) == 4 ? T(0x1p-40) : T(0x1p-300);
  // The backward's chunk (its own, whatever chunk_size says: the function is the same). Longer
  // chunks keep fewer states but cost Q P / 2 multiply-adds a step within a chunk, and the
  // telescoped sums behind dt and A restart at every chunk: their rounding grows with its length
  // (64 keeps f32 gradients of A within ~5e-6 of float64).
  static constexpr int64_t kChunk = 64;

  static Vec load(const T* p) {
    Vec v;
    std::memcpy(&v, p, sizeof(v));
    return v;
  }
  static void store(T* p, Vec v) { std::memcpy(p, &v, sizeof(v)); }
  static Vec bcast(T v) { return v - Vec{}; }  // v + 0 would not fold (-0); this is a broadcast
  static T hsum(Vec v) { return lane_sum(v); }
  static T sigmoid(T v) { return T(1) / (T(1) + std::exp(-v)); }
  // out[i] = silu(z[i]) or its derivative over n entries, vectorised in f32.
  static void silu_row(const T* z, T* out, int64_t n) {
    int64_t i = 0;
    if constexpr (sizeof(T) == 4)
      for (; i + W <= n; i += W) simd::store(out + i, simd::silu(simd::load(z + i)));
    for (; i < n; ++i) out[i] = z[i] * sigmoid(z[i]);
  }
  static void dsilu_row(const T* z, T* out, int64_t n) {
    int64_t i = 0;
    if constexpr (sizeof(T) == 4)
      for (; i + W <= n; i += W) {
        const simd::Vec v = simd::load(z + i), sg = simd::sigmoid(v);
        simd::store(out + i, sg * (1.0f + v * (1.0f - sg)));
      }
    for (; i < n; ++i) {
      const T sg = sigmoid(z[i]);
      out[i] = sg * (T(1) + z[i] * (T(1) - sg));
    }
  }
  static int64_t round_up(int64_t n) { return (n + W - 1) / W * W; }
  // The two steps of a pass-2 pair keep their lanes of H B ([Pp][W] each) two vectors beyond a
  // whole number of pages apart: rows at equal offsets in a page would stall each other's loads
  // behind stores (4K aliasing).
  int64_t wstride() const { return Pp * W + 2 * W; }

  // One decay step of a scaled state: S' is multiplied by the returned factor (1 but rarely) and
  // scale becomes the new scale, so that scale * S' = a * (old scale * old S').
  static T rescale(T& scale, T a) {
    T next = scale * a;
    if (next >= kMinScale && next <= T(1) / kMinScale) {
      scale = next;
      return T(1);
    }
    T fold = scale;  // fold the old scale into S'
    if (a >= kMinScale && a <= T(1) / kMinScale) {
      scale = a;
      return fold;
    }
    scale = 1;  // a decay too strong (or inf/nan) for any scale: apply it to S'
    return fold * a;
  }

  // ---- geometry and operands ----
  int64_t batch, L, H, P, G, N, hpg, Q, Pp, Np;
  const T *x, *dt, *A, *Bm, *Cm, *D, *z, *bias, *init;
  bool softplus;
  const T *d_all = nullptr, *dd_all = nullptr, *a_all = nullptr;  // from deltas()

  explicit Ssd(const SsdScanInputs& in) {
    batch = in.x.size(0);
    L = in.x.size(1);
    H = in.x.size(2);
    P = in.x.size(3);
    G = in.B.size(2);
    N = in.B.size(3);
    hpg = G > 0 ? H / G : 1;
    Q = kChunk;
    Pp = round_up(P);
    Np = round_up(N);
    x = in.x.data_ptr<T>();
    dt = in.dt.data_ptr<T>();
    A = in.A.data_ptr<T>();
    Bm = in.B.data_ptr<T>();
    Cm = in.C.data_ptr<T>();
    D = ptr_or_null<T>(in.D);
    z = ptr_or_null<T>(in.z);
    bias = ptr_or_null<T>(in.dt_bias);
    init = ptr_or_null<T>(in.initial_state);
    softplus = in.dt_softplus;
  }

  int64_t xrow(int64_t b, int64_t t, int64_t h) const { return ((b * L + t) * H + h) * P; }
  int64_t bcrow(int64_t b, int64_t t, int64_t g) const { return ((b * L + t) * G + g) * N; }
  int64_t srow(int64_t b, int64_t h) const { return (b * H + h) * P * N; }
  // Per-step scalars of one head, computed ahead in their own loop so that no exp, log or
  // division sits on the path from one step's state update to the next.
  struct Schedule {
    std::vector<T> d, dd, a, m, scale, in_scale;  // in_scale = d / scale
    explicit Schedule(int64_t L) : d(L), dd(L), a(L), m(L), scale(L), in_scale(L) {}
  };
  // d, its derivative and the decay exp(d A) of every (batch, step, head) into d, dd, a laid out
  // like dt; vectorised in f32 (softplus = log1p(exp(v)) through a vector log).
  void deltas(T* d, T* dd, T* a) const {
    parallel_for(0, batch * L * H, 2048, [&](int64_t i0, int64_t i1) {
      int64_t i = i0, h = i0 % H;
      if constexpr (sizeof(T) == 4) {
        using simd::Vec;
        constexpr int V = simd::kWidth;
        float vb[V], va[V];
        for (; i + V <= i1; i += V) {
          for (int l = 0; l < V; ++l) {
            vb[l] = bias ? bias[h] : 0.0f;
            va[l] = A[h];
            h = h + 1 == H ? 0 : h + 1;
          }
          const Vec v = simd::load(dt + i) + simd::load(vb);
          Vec dv = v, ddv = simd::broadcast(1.0f);
          if (softplus) {
            simd::softplus(v, dv, ddv);
          }
          simd::store(d + i, dv);
          simd::store(dd + i, ddv);
          simd::store(a + i, simd::exp(dv * simd::load(va)));
        }
      }
      for (; i < i1; ++i) {
        T v = dt[i] + (bias ? bias[h] : T(0)), dv = v, ddv = 1;
        if (softplus && v <= T(20)) {
          const T e = std::exp(v);
          dv = std::log1p(e);
          ddv = e / (T(1) + e);
        }
        d[i] = dv;
        dd[i] = ddv;
        a[i] = std::exp(dv * A[h]);
        h = h + 1 == H ? 0 : h + 1;
      }
    });
  }

  // Gathers one head's steps from deltas() and tracks its scale.
  void schedule(int64_t b, int64_t h, Schedule& s) const {
    for (int64_t t = 0; t < L; ++t) {
      const int64_t i = (b * L + t) * H + h;
      s.d[t] = d_all[i];
      s.dd[t] = dd_all[i];
      s.a[t] = a_all[i];
    }
    T scale = 1;
    for (int64_t t = 0; t < L; ++t) {
      s.m[t] = rescale(scale, s.a[t]);
      s.scale[t] = scale;
    }
    for (int64_t t = 0; t < L; ++t) s.in_scale[t] = s.d[t] / s.scale[t];
  }

  // ---- forward ----
  // K P-vectors of S'[N][Pp] (from column s), one step: S' = m S' + B X^T, acc = S'^T C.
  template <int K, bool kMul>
  static void fwd_slab(T* s, int64_t Pp, int64_t N, const T* Bt, const T* Ct, T m, const T* xs,
                       T* ys) {
    Vec X[K], acc[K];
    for (int k = 0; k < K; ++k) {
      X[k] = load(xs + k * W);
      acc[k] = Vec{};
    }
    const Vec mv = bcast(m);
    for (int64_t n = 0; n < N; ++n) {
      const Vec bn = bcast(Bt[n]), cn = bcast(Ct[n]);
      T* row = s + n * Pp;
      for (int k = 0; k < K; ++k) {
        Vec v = kMul ? load(row + k * W) * mv + bn * X[k] : load(row + k * W) + bn * X[k];
        store(row + k * W, v);
        acc[k] += cn * v;
      }
    }
    for (int k = 0; k < K; ++k) store(ys + k * W, acc[k]);
  }

  template <bool kMul>
  void fwd_step(T* S, const T* Bt, const T* Ct, T m, const T* xs, T* ys) const {
    const int64_t nv = Pp / W;
    for (int64_t j = 0; j < nv; j += kSlabP) {
      T* s = S + j * W;
      const T* xj = xs + j * W;
      T* yj = ys + j * W;
      switch (std::min<int64_t>(kSlabP, nv - j)) {
        case 1:
          fwd_slab<1, kMul>(s, Pp, N, Bt, Ct, m, xj, yj);
          break;
        case 2:
          fwd_slab<2, kMul>(s, Pp, N, Bt, Ct, m, xj, yj);
          break;
        case 3:
          fwd_slab<3, kMul>(s, Pp, N, Bt, Ct, m, xj, yj);
          break;
        default:
          fwd_slab<4, kMul>(s, Pp, N, Bt, Ct, m, xj, yj);
          break;
      }
    }
  }

  // Chunks of Q steps; the forward can keep the state at each chunk's start (nchunks() states
  // per (batch, head)) for the backward, each transposed to the backward's layout [Pp][Np]
  // (zero past P and N).
  int64_t nchunks() const { return (L + Q - 1) / Q; }
  int64_t state_block() const { return Np * Pp; }
  int64_t stidx(int64_t b, int64_t c, int64_t h) const {
    return ((b * nchunks() + c) * H + h) * state_block();
  }
  // dst = (scale * S')^T, the true state; S' has Np rows (zero past N).
  void keep_state(const T* S, T scale, T* dst) const {
    Transpose<T>::get().matrix(S, Pp, Np, Pp, dst, Np, scale, true);
  }

  // scratch: S' [Np * Pp] (rows past N stay zero), xs, ys, gate [Pp]; states may be null
  void forward_head(int64_t b, int64_t h, Schedule& sc, T* S, T* xs, T* ys, T* gate, T* y, T* y_pre,
                    T* fin, T* states) const {
    const int64_t g = h / hpg;
    const T Dh = D ? D[h] : T(0);
    schedule(b, h, sc);
    std::fill(S, S + N * Pp, T(0));
    std::fill(xs, xs + Pp, T(0));
    if (init)
      for (int64_t p = 0; p < P; ++p)
        for (int64_t n = 0; n < N; ++n) S[n * Pp + p] = init[srow(b, h) + p * N + n];
    for (int64_t t = 0; t < L; ++t) {
      const int64_t r = xrow(b, t, h), rb = bcrow(b, t, g);
      if (states && t % Q == 0)
        keep_state(S, t > 0 ? sc.scale[t - 1] : T(1), states + stidx(b, t / Q, h));
      if (t + kPrefetchSteps < L) {
        const int64_t ra = xrow(b, t + kPrefetchSteps, h);
        prefetch_row(x + ra, P, false);
        prefetch_row(z ? z + ra : nullptr, P, false);
        prefetch_row(y + ra, P, true);
        prefetch_row(y_pre ? y_pre + ra : nullptr, P, true);
      }
      const T* xt = x + r;
      const T in_scale = sc.in_scale[t], scale = sc.scale[t], m = sc.m[t];
      for (int64_t p = 0; p < P; ++p) xs[p] = in_scale * xt[p];
      if (m == T(1))
        fwd_step<false>(S, Bm + rb, Cm + rb, m, xs, ys);
      else
        fwd_step<true>(S, Bm + rb, Cm + rb, m, xs, ys);
      T* yt = y_pre ? y_pre + r : y + r;
      for (int64_t p = 0; p < P; ++p) yt[p] = scale * ys[p] + Dh * xt[p];
      if (z) {
        silu_row(z + r, gate, P);
        for (int64_t p = 0; p < P; ++p) y[r + p] = yt[p] * gate[p];
      } else if (y_pre) {
        std::memcpy(y + r, yt, P * sizeof(T));
      }
    }
    if (states) Transpose<T>::stream_fence();
    if (fin) {
      const T scale = L > 0 ? sc.scale[L - 1] : T(1);
      for (int64_t p = 0; p < P; ++p)
        for (int64_t n = 0; n < N; ++n) fin[srow(b, h) + p * N + n] = scale * S[n * Pp + p];
    }
  }

  // ---- one step (decoding) ----
  // L = 1: the state is read and written in its own [P][N] layout, vectorised over N, with no
  // scale, scratch or transposes: S = a S0 + d x B^T, y = S C + D x, then the gate. Decoding
  // spends its time streaming weights; this keeps the state's share of a step small.
  void step_head(int64_t b, int64_t h, T* gate, T* y, T* y_pre, T* fin) const {
    const int64_t g = h / hpg, r = xrow(b, 0, h), rb = bcrow(b, 0, g), i = b * H + h;
    const T d = d_all[i], a = a_all[i], Dh = D ? D[h] : T(0);
    const T *xt = x + r, *Bt = Bm + rb, *Ct = Cm + rb;
    const T* s0 = init ? init + srow(b, h) : nullptr;
    T* s1 = fin ? fin + srow(b, h) : nullptr;
    T* yt = y_pre ? y_pre + r : y + r;
    const Vec av = bcast(a);
    for (int64_t p = 0; p < P; ++p) {
      const T dx = d * xt[p];
      const Vec dxv = bcast(dx);
      const T* sp = s0 ? s0 + p * N : nullptr;
      T* op = s1 ? s1 + p * N : nullptr;
      Vec accv{};
      int64_t n = 0;
      for (; n + W <= N; n += W) {
        Vec v = dxv * load(Bt + n);
        if (sp) v += av * load(sp + n);
        if (op) store(op + n, v);
        accv += v * load(Ct + n);
      }
      T acc = hsum(accv);
      for (; n < N; ++n) {
        const T v = (sp ? a * sp[n] : T(0)) + dx * Bt[n];
        if (op) op[n] = v;
        acc += v * Ct[n];
      }
      yt[p] = acc + Dh * xt[p];
    }
    if (z) {
      silu_row(z + r, gate, P);
      for (int64_t p = 0; p < P; ++p) y[r + p] = yt[p] * gate[p];
    } else if (y_pre) {
      std::memcpy(y + r, yt, P * sizeof(T));
    }
  }

  // ---- backward ----
  // One pass over the chunks of Q steps in reverse, every head of a chunk before the next, from
  // the state S0 kept at the chunk's start and Hn, the gradient of the state at the chunk's last
  // step t1 less that step's own output (the final state's gradient for the last chunk). Within
  // a chunk, with lc_t = l_t0 + ... + l_t (l = d A), alpha_t = exp(lc_t), w_ts = exp(lc_t - lc_s),
  // beta_t = w_{t1 t}, X_t = d_t x_t and G_t = dL/dS_t:
  //   G_t     = beta_t Hn + sum_{s >= t} w_st gy_s C_s^T
  //   a_t S_{t-1} = alpha_t S0 + sum_{s < t} w_ts B_s X_s^T
  //   dC_t   += alpha_t S0^T gy_t + sum_{s <= t} K_ts B_s,   K_ts = w_ts d_s (gy_t . x_s)
  //   dB_t   += beta_t Hn^T X_t + sum_{s >= t} K_st C_s
  //   dx_t    = d_t G_t B_t + D gy_t,  G_t B_t = beta_t Hn B_t + sum_{s >= t} w_st (C_s . B_t) gy_s
  //   Hn'     = alpha_{t1} Hn + sum_s alpha_s gy_s C_s^T   (for the previous chunk)
  // and for dt and A, run_t = dL/dl_t = G_t . (a_t S_{t-1}) is the sum of
  //   alpha_{t1} Hn . S0,  sum_{s >= t} alpha_s C_s . (S0^T gy_s),  sum_{u < t} beta_u X_u . Hn
  //   B_u, and the pairs sum_{s >= t > u} K_su (C_s . B_u)
  // (no term cancels another; the pairs are summed as E_s = sum_{u < s} minus
  // Hx_u = sum_{s > u} of the same float products, in double, so that only pairs crossing t
  // remain: two computations of a pair would differ in rounding, which this difference would
  // magnify), then dL/dd_t = A run_t + x_t . G_t B_t and dL/dA += d_t run_t.
  // S0^T gy, Hn B, Hn^T X and Hn's update are [P x N] x [N x Q]-sized products: 4 P N
  // multiply-adds a step against 5 P N for the recurrence (which recomputes the states), as
  // matrix products; the products with B and C that do not involve a state are done once per
  // group of heads, not per head.
  static int64_t round_to(int64_t n, int64_t m) { return (n + m - 1) / m * m; }
  // acc[r][v] += sum_k A[r][k] Bm[k][v] on a tile of 4 rows x TV vectors.
  template <int TV>
  static void tile_product(const T* a, int64_t as, const T* bm, int64_t bs, int64_t K,
                           Vec (&acc)[4][TV]) {
    for (int64_t k = 0; k < K; ++k) {
      Vec bv[TV];
      for (int v = 0; v < TV; ++v) bv[v] = load(bm + k * bs + v * W);
      for (int r = 0; r < 4; ++r) {
        const Vec av = bcast(a[r * as + k]);
        for (int v = 0; v < TV; ++v) acc[r][v] += av * bv[v];
      }
    }
  }
  // C[r][v] (+)= sum_k A[r][k] Bm[k][v] on a tile of 4 rows x TV vectors.
  template <int TV>
  static void gemm_tile(const T* a, int64_t as, const T* bm, int64_t bs, int64_t K, T* c,
                        int64_t cs, bool accumulate) {
    Vec acc[4][TV];
    for (int r = 0; r < 4; ++r)
      for (int v = 0; v < TV; ++v) acc[r][v] = accumulate ? load(c + r * cs + v * W) : Vec{};
    tile_product<TV>(a, as, bm, bs, K, acc);
    for (int r = 0; r < 4; ++r)
      for (int v = 0; v < TV; ++v) store(c + r * cs + v * W, acc[r][v]);
  }
  // One 4 x TV tile of gemm_add_dot: D += Y, ev[r] += (row r of Cm) . (row r of Y).
  template <int TV>
  static void add_dot_tile(const T* a, int64_t as, const T* bm, int64_t bs, int64_t K, T* d,
                           const T* cm, int64_t ds, Vec (&ev)[4]) {
    Vec acc[4][TV] = {};
    tile_product<TV>(a, as, bm, bs, K, acc);
    for (int r = 0; r < 4; ++r)
      for (int v = 0; v < TV; ++v) {
        T* dp = d + r * ds + v * W;
        store(dp, load(dp) + acc[r][v]);
        ev[r] += load(cm + r * ds + v * W) * acc[r][v];
      }
  }
  // Y = A Bm (rows x nvec vectors) added to D, and e[r] = (row r of Cm) . (row r of Y): Y never
  // goes to memory.
  static void gemm_add_dot(const T* a, int64_t as, int64_t rows, const T* bm, int64_t bs,
                           int64_t nvec, int64_t K, T* d, const T* cm, int64_t ds, double* e) {
    for (int64_t r0 = 0; r0 < rows; r0 += 4) {
      Vec ev[4] = {};
      for (int64_t v0 = 0; v0 < nvec; v0 += 4) {
        const T* ap = a + r0 * as;
        const T* bp = bm + v0 * W;
        T* dp = d + r0 * ds + v0 * W;
        const T* cp = cm + r0 * ds + v0 * W;
        switch (std::min<int64_t>(4, nvec - v0)) {
          case 1:
            add_dot_tile<1>(ap, as, bp, bs, K, dp, cp, ds, ev);
            break;
          case 2:
            add_dot_tile<2>(ap, as, bp, bs, K, dp, cp, ds, ev);
            break;
          case 3:
            add_dot_tile<3>(ap, as, bp, bs, K, dp, cp, ds, ev);
            break;
          default:
            add_dot_tile<4>(ap, as, bp, bs, K, dp, cp, ds, ev);
            break;
        }
      }
      for (int r = 0; r < 4; ++r) e[r0 + r] = static_cast<double>(hsum(ev[r]));
    }
  }
  // C (+)= A Bm for rows (a multiple of 4) x nvec vectors. kLowerK: row tile r0 sums k < r0 + 4
  // only; kUpperK: k >= r0 only; kLowerV: row tile r0 computes the vectors up to column r0 + 3.
  enum class Tri { kNone, kLowerK, kUpperK, kLowerV };
  static void gemm(const T* a, int64_t as, int64_t rows, const T* bm, int64_t bs, int64_t nvec,
                   int64_t K, T* c, int64_t cs, bool accumulate, Tri tri) {
    for (int64_t r0 = 0; r0 < rows; r0 += 4) {
      const int64_t k0 = tri == Tri::kUpperK ? std::min(K, r0) : 0;
      const int64_t k = (tri == Tri::kLowerK ? std::min<int64_t>(K, r0 + 4) : K) - k0;
      const int64_t nv = tri == Tri::kLowerV ? std::min<int64_t>(nvec, (r0 + 3) / W + 1) : nvec;
      for (int64_t v0 = 0; v0 < nv; v0 += 4) {
        const T* ap = a + r0 * as + k0;
        const T* bp = bm + k0 * bs + v0 * W;
        T* cp = c + r0 * cs + v0 * W;
        switch (std::min<int64_t>(4, nv - v0)) {
          case 1:
            gemm_tile<1>(ap, as, bp, bs, k, cp, cs, accumulate);
            break;
          case 2:
            gemm_tile<2>(ap, as, bp, bs, k, cp, cs, accumulate);
            break;
          case 3:
            gemm_tile<3>(ap, as, bp, bs, k, cp, cs, accumulate);
            break;
          default:
            gemm_tile<4>(ap, as, bp, bs, k, cp, cs, accumulate);
            break;
        }
      }
    }
  }
  // v[i] = exp(v[i]) for n entries (a whole number of vectors), vectorised in f32.
  static void exp_row(T* v, int64_t n) {
    if constexpr (sizeof(T) == 4)
      for (int64_t i = 0; i < n; i += W) simd::store(v + i, simd::exp(simd::load(v + i)));
    else
      for (int64_t i = 0; i < n; ++i) v[i] = std::exp(v[i]);
  }
  // Lane masks for the vector holding a row's diagonal: keep the lanes before it, 1 at it, 0 past.
  // Bitwise, as the lanes past the diagonal may hold inf (exp of a positive difference).
  typedef std::conditional_t<sizeof(T) == 4, int32_t, int64_t> Bits;
  typedef Bits VecB __attribute__((vector_size(sizeof(Vec))));
  struct DiagMasks {
    VecB below[W], at[W];  // below[k]: all ones in lanes < k; at[k]: the bits of 1 in lane k
    DiagMasks() {
      Bits one;
      const T v1 = 1;
      std::memcpy(&one, &v1, sizeof(one));
      for (int k = 0; k < W; ++k)
        for (int l = 0; l < W; ++l) {
          below[k][l] = l < k ? Bits(-1) : Bits(0);
          at[k][l] = l == k ? one : Bits(0);
        }
    }
    Vec apply(Vec v, int64_t k) const {
      VecB b;
      std::memcpy(&b, &v, sizeof(b));
      b = (b & below[k]) | at[k];
      std::memcpy(&v, &b, sizeof(v));
      return v;
    }
  };
  // Steps of a chunk rounded up to whole vectors (and to 4 rows).
  int64_t qpad() const { return round_to(Q, std::max(4, W)); }

  // A row of n values readable as np (a whole number of vectors): in place when n == np, else
  // copied into buf, whose tail stays zero.
  static const T* padded(const T* src, T* buf, int64_t n, int64_t np) {
    if (n == np) return src;
    std::memcpy(buf, src, n * sizeof(T));
    return buf;
  }

  // gy = dy before the gate (gate = silu(z) when z).
  void gate_grad(int64_t r, const T* dy, T* gate, T* gy) const {
    if (z) {
      silu_row(z + r, gate, P);
      for (int64_t p = 0; p < P; ++p) gy[p] = dy[r + p] * gate[p];
    } else {
      std::memcpy(gy, dy + r, P * sizeof(T));
    }
  }

  // Per thread: a chunk's rows of B and C for each group (zero past the chunk and past N), B^T,
  // CB[t][s] = C_t . B_s for s < t (zero elsewhere), and the group sums Ksum, dC, dB rows.
  struct BwdScratch {
    int64_t Qp;
    Scratch<T> Bp, Cp, BT, CB, Ksum, dCr, dBr;  // [G] of each
    Scratch<T> gy, gys, gysT, xr, xT, xw, Kt, Mt, M, UT, U, wr, al, be, dl, gate, dxr;
    std::vector<double> lc, q, hbx, e, hx;
    Scratch<double> Cd, BTd, CBd;  // f32's C . B in double
    explicit BwdScratch(const Ssd& k)
        : Qp(k.qpad()),
          Bp(k.G * Qp * k.Np),
          Cp(k.G * Qp * k.Np),
          BT(k.G * k.Np * Qp),
          CB(k.G * Qp * Qp),
          Ksum(k.G * Qp * Qp),
          dCr(k.G * Qp * k.Np),
          dBr(k.G * Qp * k.Np),
          gy(Qp * k.Pp),
          gys(Qp * k.Pp),
          gysT(k.Pp * Qp),
          xr(Qp * k.Pp),
          xT(k.Pp * Qp),
          xw(Qp * k.Pp),
          Kt(Qp * Qp),
          Mt(Qp * Qp),
          M(Qp * Qp),
          UT(k.Pp * Qp),
          U(Qp * k.Pp),
          wr(Qp),
          al(Qp),
          be(Qp),
          dl(Qp),
          gate(k.Pp),
          dxr(k.Pp),
          lc(Qp),
          q(Qp),
          hbx(Qp),
          e(Qp),
          hx(Qp),
          Cd(sizeof(T) == 4 ? Qp * k.Np : 1, false),
          BTd(sizeof(T) == 4 ? Qp * k.Np : 1, false),
          CBd(sizeof(T) == 4 ? Qp * Qp : 1, false) {}
  };

  struct BwdOut {
    T *dx, *ddt, *dz, *dinit;
    T *dC, *dB;  // this slot's accumulators
    const T *y_pre, *dy, *dfin, *states;
    const T* cb;  // C . B per (batch, step, group)
  };

  // Chunk c of batch b for group g: rows of B and C, B^T and CB; the group sums start at zero.
  void start_chunk_group(int64_t b, int64_t c, int64_t g, BwdScratch& w) const {
    const Transpose<T>& tr = Transpose<T>::get();
    const int64_t t0 = c * Q, nq = std::min(Q, L - t0), Qp = w.Qp, qv = Qp / W;
    T *Bp = w.Bp.get() + g * Qp * Np, *Cp = w.Cp.get() + g * Qp * Np;
    T *BT = w.BT.get() + g * Np * Qp, *CB = w.CB.get() + g * Qp * Qp;
    std::fill(Bp, Bp + Qp * Np, T(0));
    std::fill(Cp, Cp + Qp * Np, T(0));
    for (int64_t t = 0; t < nq; ++t) {
      std::memcpy(Bp + t * Np, Bm + bcrow(b, t0 + t, g), N * sizeof(T));
      std::memcpy(Cp + t * Np, Cm + bcrow(b, t0 + t, g), N * sizeof(T));
    }
    tr.matrix(Bp, Np, Qp, Np, BT, Qp);
    // C . B in double for f32: it can cancel, and it weighs the pairs behind dt and A
    if constexpr (sizeof(T) == 4) {
      double *Cd = w.Cd.get(), *BTd = w.BTd.get(), *CBd = w.CBd.get();
      for (int64_t i = 0; i < Qp * Np; ++i) {
        Cd[i] = Cp[i];
        BTd[i] = BT[i];
      }
      Ssd<double>::gemm(Cd, Np, Qp, BTd, Qp, Qp / WD, Np, CBd, Qp, false,
                        Ssd<double>::Tri::kLowerV);
      for (int64_t i = 0; i < Qp * Qp; ++i) CB[i] = static_cast<T>(CBd[i]);
    } else {
      gemm(Cp, Np, Qp, BT, Qp, qv, Np, CB, Qp, false, Tri::kLowerV);
    }
    for (int64_t t = 0; t < Qp; ++t) std::fill(CB + t * Qp + t, CB + (t + 1) * Qp, T(0));
    std::fill(w.Ksum.get() + g * Qp * Qp, w.Ksum.get() + (g + 1) * Qp * Qp, T(0));
    std::fill(w.dCr.get() + g * Qp * Np, w.dCr.get() + (g + 1) * Qp * Np, T(0));
    std::fill(w.dBr.get() + g * Qp * Np, w.dBr.get() + (g + 1) * Qp * Np, T(0));
  }
  // The group's K sums into dC and dB, and the chunk's rows into this slot's accumulators.
  void finish_chunk_group(int64_t b, int64_t c, int64_t g, BwdScratch& w, const BwdOut& o) const {
    const Transpose<T>& tr = Transpose<T>::get();
    const int64_t t0 = c * Q, nq = std::min(Q, L - t0), Qp = w.Qp, nv = Np / W;
    const T *Bp = w.Bp.get() + g * Qp * Np, *Cp = w.Cp.get() + g * Qp * Np;
    const T* Ksum = w.Ksum.get() + g * Qp * Qp;
    T *dCr = w.dCr.get() + g * Qp * Np, *dBr = w.dBr.get() + g * Qp * Np, *KsT = w.Kt.get();
    gemm(Ksum, Qp, Qp, Bp, Np, nv, Qp, dCr, Np, true, Tri::kLowerK);  // sum_{s <= t} K_ts B_s
    tr.matrix(Ksum, Qp, Qp, Qp, KsT, Qp);
    gemm(KsT, Qp, Qp, Cp, Np, nv, Qp, dBr, Np, true, Tri::kUpperK);  // sum_{s >= t} K_st C_s
    for (int64_t t = 0; t < nq; ++t) {
      T* dc = o.dC + bcrow(b, t0 + t, g);
      T* db = o.dB + bcrow(b, t0 + t, g);
      for (int64_t n = 0; n < N; ++n) {
        dc[n] += dCr[t * Np + n];
        db[n] += dBr[t * Np + n];
      }
    }
  }

  // Hn of (b, h) before its last chunk: the final state's gradient.
  void start_head(int64_t b, int64_t h, T* Hn, const BwdOut& o) const {
    std::fill(Hn, Hn + Pp * Np, T(0));
    if (o.dfin)
      for (int64_t p = 0; p < P; ++p)
        std::memcpy(Hn + p * Np, o.dfin + srow(b, h) + p * N, N * sizeof(T));
  }

  // Chunk c of (b, h): Hn in, the previous chunk's Hn out; sums += dA, dD, dt_bias.
  void backward_chunk(int64_t b, int64_t c, int64_t h, T* Hn, double* sums, BwdScratch& w,
                      const BwdOut& o) const {
    const Transpose<T>& tr = Transpose<T>::get();
    const int64_t g = h / hpg, t0 = c * Q, nq = std::min(Q, L - t0);
    const int64_t Qp = w.Qp, qv = Qp / W, nv = Np / W;
    const T Ah = A[h], Dh = D ? D[h] : T(0);
    const T *Cp = w.Cp.get() + g * Qp * Np, *BT = w.BT.get() + g * Np * Qp;
    const T* CB = w.CB.get() + g * Qp * Qp;
    T *Ksum = w.Ksum.get() + g * Qp * Qp, *dCr = w.dCr.get() + g * Qp * Np;
    T* dBr = w.dBr.get() + g * Qp * Np;
    T *gy = w.gy.get(), *gys = w.gys.get(), *gysT = w.gysT.get(), *xr = w.xr.get();
    T *xT = w.xT.get(), *xw = w.xw.get(), *Kt = w.Kt.get(), *Mt = w.Mt.get();
    T *M = w.M.get(), *UT = w.UT.get(), *U = w.U.get(), *wr = w.wr.get();
    T *al = w.al.get(), *be = w.be.get(), *dl = w.dl.get();
    const T* S0 = o.states + stidx(b, c, h);

    // decays
    double run = 0;
    for (int64_t t = 0; t < Qp; ++t) {
      dl[t] = t < nq ? d_all[(b * L + t0 + t) * H + h] : T(0);
      run += static_cast<double>(dl[t]) * Ah;
      w.lc[t] = run;
    }
    for (int64_t t = 0; t < Qp; ++t) {
      al[t] = static_cast<T>(w.lc[t]);
      be[t] = static_cast<T>(w.lc[nq - 1] - w.lc[t]);
    }
    exp_row(al, Qp);
    exp_row(be, Qp);
    // rows: gy, x, alpha gy, X beta, dz (rows past nq stay zero). x and (without z) gy are read
    // in place, H P apart, when their rows are whole vectors and the chunk is whole.
    const bool whole = P == Pp && nq == Qp;
    const T* xv = whole ? x + xrow(b, t0, h) : xr;
    const T* gv = whole && !z ? o.dy + xrow(b, t0, h) : gy;
    const int64_t xs = whole ? H * P : Pp, gs = whole && !z ? H * P : Pp;
    if (!whole) {
      std::fill(gy + nq * Pp, gy + Qp * Pp, T(0));
      std::fill(gys + nq * Pp, gys + Qp * Pp, T(0));
      std::fill(xr + nq * Pp, xr + Qp * Pp, T(0));
      std::fill(xw + nq * Pp, xw + Qp * Pp, T(0));
    }
    for (int64_t t = 0; t < nq; ++t) {
      const int64_t r = xrow(b, t0 + t, h);
      if (gv == gy) gate_grad(r, o.dy, w.gate.get(), gy + t * Pp);
      if (xv == xr) std::memcpy(xr + t * Pp, x + r, P * sizeof(T));
      const Vec at = bcast(al[t]), xsc = bcast(dl[t] * be[t]);
      for (int64_t p = 0; p < Pp; p += W) {
        store(gys + t * Pp + p, load(gv + t * gs + p) * at);
        store(xw + t * Pp + p, load(xv + t * xs + p) * xsc);
      }
      if (o.dz) {
        dsilu_row(z + r, w.gate.get(), P);
        for (int64_t p = 0; p < P; ++p)
          o.dz[r + p] = o.dy[r + p] * o.y_pre[r + p] * w.gate.get()[p];
      }
    }
    tr.matrix(xv, xs, Qp, Pp, xT, Qp);
    tr.matrix(gys, Pp, Qp, Pp, gysT, Qp);

    // alpha_t S0^T gy_t: into dC, and E_t gets C_t . it
    gemm_add_dot(gys, Pp, Qp, S0, Np, nv, P, dCr, Cp, Np, w.e.data());
    // K_ts = w_ts d_s (gy_t . x_s) for s <= t into Ksum; the pairs K_ts (C_t . B_s), s < t, into
    // E_t and Hx_s; Mt_ts = w_ts (C_t . B_s)
    gemm(gv, gs, Qp, xT, Qp, qv, P, Kt, Qp, false, Tri::kLowerV);
    for (int64_t i = 0; i < Qp * Qp; i += W) store(Mt + i, Vec{});
    std::fill(w.hx.begin(), w.hx.end(), 0.0);
    for (int64_t t = 0; t < nq; ++t) {
      const int64_t se = t / W * W + W;  // whole vectors up to column t
      const VecD lt = w.lc[t] - VecD{};
      for (int64_t s2 = 0; s2 < se; s2 += WD) {  // differences in double, then f32
        typedef T HalfT __attribute__((vector_size(WD * sizeof(T))));
        const HalfT d = __builtin_convertvector(lt - load_d(w.lc.data() + s2), HalfT);
        std::memcpy(wr + s2, &d, sizeof(d));
      }
      exp_row(wr, se);
      {  // the vector holding column t: keep the lanes before it, 1 at it, 0 past it
        static const DiagMasks m;
        const int64_t s0 = se - W;
        store(wr + s0, m.apply(load(wr + s0), t - s0));
      }
      const T *kt = Kt + t * Qp, *cbt = CB + t * Qp;
      T *ks = Ksum + t * Qp, *mt = Mt + t * Qp;
      VecD e0{}, e1{};
      for (int64_t s2 = 0; s2 < se; s2 += W) {
        const Vec wv = load(wr + s2), cv = load(cbt + s2);
        const Vec kw = load(kt + s2) * load(dl + s2) * wv;
        store(ks + s2, load(ks + s2) + kw);
        store(mt + s2, wv * cv);
        VecD lo{}, hi{};
        to_double(kw * cv, lo, hi);
        e0 += lo;
        e1 += hi;
        double* hx = w.hx.data() + s2;
        store_d(hx, load_d(hx) + lo);
        if constexpr (sizeof(T) == 4) store_d(hx + WD, load_d(hx + WD) + hi);
      }
      w.e[t] += lane_sum(e0 + e1);
    }
    tr.matrix(Mt, Qp, Qp, Qp, M, Qp);  // M_ts = w_st (C_s . B_t), s > t

    // U_t = G_t B_t less the own step: beta_t Hn B_t (X_t . it is Hn's part of run), then
    // the later steps of the chunk
    gemm(Hn, Np, Pp, BT, Qp, qv, Np, UT, Qp, false, Tri::kNone);
    tr.matrix(UT, Qp, Pp, Qp, U, Pp);
    for (int64_t t = 0; t < nq; ++t) {
      const Vec bt = bcast(be[t]);
      Vec hv{};
      for (int64_t p = 0; p < Pp; p += W) {
        const Vec uv = load(U + t * Pp + p) * bt;
        store(U + t * Pp + p, uv);
        hv += uv * load(xv + t * xs + p);
      }
      w.hbx[t] = static_cast<double>(dl[t]) * hsum(hv);
    }
    gemm(M, Qp, Qp, gv, gs, Pp / W, Qp, U, Pp, true, Tri::kUpperK);
    // dx, and the dot products behind dt and D
    for (int64_t t = 0; t < nq; ++t) {
      const int64_t r = xrow(b, t0 + t, h);
      const T cbt = o.cb[(b * L + t0 + t) * G + g], d = dl[t];
      const Vec cbv = bcast(cbt), dv = bcast(d), Dv = bcast(Dh);
      T* dxt = P == Pp ? o.dx + r : w.dxr.get();
      Vec xu{}, gxv{};  // dot products of P terms with nothing to cancel: f32 sums
      for (int64_t p = 0; p < Pp; p += W) {
        const Vec uv = load(U + t * Pp + p), gq = load(gv + t * gs + p), xq = load(xv + t * xs + p);
        const Vec dxv = dv * (uv + gq * cbv) + Dv * gq;
        if (!Transpose<T>::store_stream(dxt + p, dxv)) store(dxt + p, dxv);  // read much later
        xu += xq * uv;
        gxv += xq * gq;
      }
      if (P != Pp) std::memcpy(o.dx + r, dxt, P * sizeof(T));
      const double gx = hsum(gxv);
      w.q[t] = static_cast<double>(hsum(xu)) + gx * cbt;
      sums[1] += gx;
    }
    // dt, A and dt_bias
    double before = static_cast<double>(al[nq - 1]) * dot_blocked(Hn, S0, P * Np);
    for (int64_t t = 0; t < nq; ++t) {
      const double v = w.hbx[t];
      w.hbx[t] = before;
      before += v;
    }
    double after = 0;
    for (int64_t t = nq - 1; t >= 0; --t) {
      const int64_t i = (b * L + t0 + t) * H + h;
      after += w.e[t] - w.hx[t];
      const double acc = after + w.hbx[t];
      const double draw = (Ah * acc + w.q[t]) * dd_all[i];
      sums[0] += dl[t] * acc;
      o.ddt[i] = static_cast<T>(draw);
      sums[2] += draw;
    }
    // dB from the later chunks: beta_t Hn^T X_t
    gemm(xw, Pp, Qp, Hn, Np, nv, P, dBr, Np, true, Tri::kNone);
    // Hn for the previous chunk
    const Vec a1 = bcast(al[nq - 1]);
    for (int64_t i = 0; i < P * Np; i += W) store(Hn + i, load(Hn + i) * a1);
    gemm(gysT, Qp, Pp, Cp, Np, nv, Qp, Hn, Np, true, Tri::kNone);
  }
};

// d, its derivative and exp(d A) for every (batch, step, head), shared by all heads' loops.
template <class T>
struct Deltas {
  Scratch<T> d, dd, a;
  explicit Deltas(Ssd<T>& k)
      : d(k.batch * k.L * k.H), dd(k.batch * k.L * k.H), a(k.batch * k.L * k.H) {
    k.deltas(d.get(), dd.get(), a.get());
    k.d_all = d.get();
    k.dd_all = dd.get();
    k.a_all = a.get();
  }
};

template <class T>
void run_forward(const SsdScanInputs& in, const SsdScanForward& f, Tensor* states = nullptr) {
  Ssd<T> k(in);
  const Deltas<T> deltas(k);
  T* y = f.y.data_ptr<T>();
  T* y_pre = mut_or_null<T>(f.y_pre);
  T* fin = mut_or_null<T>(f.final_state);
  if (k.L == 1 && !states) {
    parallel_for(0, k.batch * k.H, 4, [&](int64_t i0, int64_t i1) {
      Scratch<T> gate(k.Pp);
      for (int64_t i = i0; i < i1; ++i) k.step_head(i / k.H, i % k.H, gate.get(), y, y_pre, fin);
    });
    return;
  }
  T* st = nullptr;
  if (states) {
    *states = empty({k.batch, k.nchunks(), k.H, k.state_block()}, Options(in.x.dtype()));
    st = states->data_ptr<T>();
  }
  parallel_for(0, k.batch * k.H, 1, [&](int64_t i0, int64_t i1) {
    Scratch<T> S(k.Np * k.Pp), xs(k.Pp), ys(k.Pp), gate(k.Pp);
    typename Ssd<T>::Schedule sc(k.L);
    for (int64_t i = i0; i < i1; ++i)
      k.forward_head(i / k.H, i % k.H, sc, S.get(), xs.get(), ys.get(), gate.get(), y, y_pre, fin,
                     st);
  });
}

template <class T>
void run_backward(const SsdScanInputs& in, const SsdScanBackward& bw) {
  Ssd<T> k(in);
  // The states at chunk starts, as the forward kept them or recomputed now.
  Tensor states = bw.states;
  if (!states.defined()) {
    SsdScanForward f;
    f.y = empty(in.x.sizes(), Options(in.x.dtype()));
    run_forward<T>(in, f, &states);
  }
  COIL_CHECK(states.numel() == k.batch * k.nchunks() * k.H * k.state_block(),
             "ssd_scan backward: kept states do not match the inputs");
  const Deltas<T> deltas(k);
  const int64_t pairs = k.batch * k.H;
  const int64_t bc = k.batch * k.L * k.G * k.N;
  T* dB = bw.dB.data_ptr<T>();
  T* dC = bw.dC.data_ptr<T>();
  // Each slot (one per thread) takes a contiguous range of (batch, head) pairs; dB and dC sum
  // over the heads of a group: the first slot adds into them, the others into buffers of their
  // own, added at the end.
  const int64_t slots = std::max<int64_t>(1, std::min<int64_t>(get_num_threads(), pairs));
  Scratch<T> extra((slots - 1) * 2 * bc, false);
  parallel_for(0, bc, 1 << 16, [&](int64_t e0, int64_t e1) {  // every accumulator starts at 0
    std::fill(dB + e0, dB + e1, T(0));
    std::fill(dC + e0, dC + e1, T(0));
    for (int64_t i = 0; i < (slots - 1) * 2; ++i)
      std::fill(extra.get() + i * bc + e0, extra.get() + i * bc + e1, T(0));
  });
  // C . B of every (batch, step, group) in double, as it can cancel and scales every head's dt
  // gradient.
  std::vector<T> cb(static_cast<size_t>(k.batch * k.L * k.G));
  parallel_for(0, k.batch * k.L * k.G, 1024, [&](int64_t r0, int64_t r1) {
    Scratch<T> pb(k.Np), pc(k.Np);
    for (int64_t r = r0; r < r1; ++r) {
      const T* bt = Ssd<T>::padded(k.Bm + r * k.N, pb.get(), k.N, k.Np);
      const T* ct = Ssd<T>::padded(k.Cm + r * k.N, pc.get(), k.N, k.Np);
      cb[r] = static_cast<T>(dot_d(ct, bt, k.Np));
    }
  });
  std::vector<double> sums(3 * pairs);
  parallel_for(0, slots, 1, [&](int64_t s0, int64_t s1) {
    typename Ssd<T>::BwdScratch w(k);
    for (int64_t s = s0; s < s1; ++s) {
      typename Ssd<T>::BwdOut o;
      o.dx = bw.dx.data_ptr<T>();
      o.ddt = bw.ddt.data_ptr<T>();
      o.dz = mut_or_null<T>(bw.dz);
      o.dinit = mut_or_null<T>(bw.dinitial_state);
      o.dB = s > 0 ? extra.get() + (s - 1) * 2 * bc : dB;
      o.dC = s > 0 ? extra.get() + (s - 1) * 2 * bc + bc : dC;
      o.y_pre = ptr_or_null<T>(bw.y_pre);
      o.dy = bw.dy.data_ptr<T>();
      o.dfin = ptr_or_null<T>(bw.dfinal_state);
      o.states = states.data_ptr<T>();
      o.cb = cb.data();
      // Chunk by chunk in reverse, the slot's heads inner: a chunk's rows of B, C, dB and dC
      // are reused across heads, and each head's Hn stays in cache.
      const int64_t p0 = s * pairs / slots, p1 = (s + 1) * pairs / slots;
      for (int64_t b = p1 > p0 ? p0 / k.H : 0; p1 > p0 && b <= (p1 - 1) / k.H; ++b) {
        const int64_t h0 = std::max(p0, b * k.H) - b * k.H;
        const int64_t h1 = std::min(p1, (b + 1) * k.H) - b * k.H;
        const int64_t g0 = h0 / k.hpg, g1 = (h1 - 1) / k.hpg + 1;
        const int64_t hn_size = k.Pp * k.Np;
        Scratch<T> hn((h1 - h0) * hn_size, false);
        for (int64_t h = h0; h < h1; ++h) k.start_head(b, h, hn.get() + (h - h0) * hn_size, o);
        for (int64_t c = k.nchunks() - 1; c >= 0; --c) {
          for (int64_t g = g0; g < g1; ++g) k.start_chunk_group(b, c, g, w);
          for (int64_t h = h0; h < h1; ++h)
            k.backward_chunk(b, c, h, hn.get() + (h - h0) * hn_size, &sums[3 * (b * k.H + h)], w,
                             o);
          for (int64_t g = g0; g < g1; ++g) k.finish_chunk_group(b, c, g, w, o);
        }
        Transpose<T>::stream_fence();
        if (o.dinit)
          for (int64_t h = h0; h < h1; ++h)
            for (int64_t p = 0; p < k.P; ++p)
              std::memcpy(o.dinit + k.srow(b, h) + p * k.N,
                          hn.get() + (h - h0) * hn_size + p * k.Np, k.N * sizeof(T));
      }
    }
  });
  if (slots > 1) {
    const T* ex = extra.get();
    parallel_for(0, bc, 4096, [&](int64_t e0, int64_t e1) {
      for (int64_t s = 1; s < slots; ++s) {
        const T* pb = ex + (s - 1) * 2 * bc;
        for (int64_t e = e0; e < e1; ++e) {
          dB[e] += pb[e];
          dC[e] += pb[bc + e];
        }
      }
    });
  }
  // Per-head sums over the batch, in a fixed order.
  T* gA = bw.dA.data_ptr<T>();
  T* gD = mut_or_null<T>(bw.dD);
  T* gbias = mut_or_null<T>(bw.ddt_bias);
  for (int64_t h = 0; h < k.H; ++h) {
    double sa = 0, sd = 0, sb = 0;
    for (int64_t b = 0; b < k.batch; ++b) {
      sa += sums[3 * (b * k.H + h)];
      sd += sums[3 * (b * k.H + h) + 1];
      sb += sums[3 * (b * k.H + h) + 2];
    }
    gA[h] = static_cast<T>(sa);
    if (gD) gD[h] = static_cast<T>(sd);
    if (gbias) gbias[h] = static_cast<T>(sb);
  }
}

}  // namespace

void ssd_scan_kernel(const SsdScanInputs& in, const SsdScanForward* fwd,
                     const SsdScanBackward* bwd) {
  const DType t = in.x.dtype();
  COIL_CHECK(t == kF32 || t == kF64, "ssd_scan kernel: unsupported dtype ", t);
  if (t == kF32) {
    if (fwd) run_forward<float>(in, *fwd, fwd->keep_states ? &fwd->states : nullptr);
    if (bwd) run_backward<float>(in, *bwd);
  } else {
    if (fwd) run_forward<double>(in, *fwd, fwd->keep_states ? &fwd->states : nullptr);
    if (bwd) run_backward<double>(in, *bwd);
  }
}

}  // namespace coil::cpu
