// CPU kernels of ssd_scan (Mamba-2's scan), forward and backward, as a per-head recurrence whose
// state stays in L1: per step S = exp(d A) S + d x B^T (one scalar exp per head), y = S C + D x.
// It is the same function as the chunked SSD form, but on a CPU it moves far fewer bytes.
//
// Memory layout. Operands are contiguous, row-major, in the compute type T (float or double):
//   x, z, y, y_pre, dy, dx, dz: [batch][L][heads][P]      dt, ddt: [batch][L][heads]
//   B, C, dB, dC: [batch][L][groups][N]                    A, D, dt_bias (and grads): [heads]
//   initial/final state and their grads: [batch][heads][P][N]
// Work is split over (batch, head) pairs. Each keeps its state in scratch padded to whole SIMD
// vectors (padding lanes stay zero):
//   forward  S[N][Pp], vectorised over P: y = sum_n C_n S[n][:] needs no horizontal sums;
//   backward S, G[P][Np], vectorised over N: dC and dB are vertical sums (only dx is not).
// d = softplus(dt + dt_bias) and the decay a = exp(d A) of all (batch, step, head) are computed
// first, vectorised, into scratch laid out like dt.
//
// Scaled state. The state is held as S = scale * S' with a scalar scale, so a step is one FMA
// per element (S' += B (X / scale)^T) instead of a multiply and an FMA; the decay goes into the
// scalar. When scale leaves [kMinScale, 1 / kMinScale] it is folded back into S' (rare: every
// ~27 / |d A| steps in f32), and a decay too strong for any scale is applied to S' directly.
//
// Backward without stored states. With l_t = d_t A the log-decay and G_t = dLoss/dS_t, two passes
// need no past states: a forward pass recomputes S_t for dC_t = S_t^T dy_t, and a reverse pass
// runs G_t = H_t + C_t dy_t^T, H_t = a_{t+1} G_{t+1}, for dB, dx and the initial state's
// gradient. For l, dLoss/dl_r = G_r . (a_r S_{r-1}) telescopes to sum_{t = r}^{c} E_t, c the next
// checkpoint, with
//   E_t = (C_t dy_t^T) . (a_t S_{t-1}) - H_t . (B_t X_t^T)   (+ H_c . S_c at t = c).
// The first term comes out of pass 1, the second out of pass 2, each from the state before the
// step's own input (so their common part (C.B)(dy.X) never enters the sum). Pass 1 keeps a
// checkpoint of S every min(chunk_size, kMaxSpacing) steps, per thread, only for H_c . S_c; the
// sum restarts at each, which bounds its rounding (it grows with the spacing).
//
// Sweeps. Pass 1 updates the state for up to 4 steps per sweep (2 N-vectors x 4 steps of
// accumulators in registers), pass 2 for 2 (its lanes of H B need whole rows of 4 N-vectors);
// within a sweep the operations are those of one step after another, so grouping never changes
// the results. C . B of every step is computed once per group of heads, not per head.
//
// One step (L = 1, decoding) has a path of its own: step_head.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <vector>

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

// The same for long rows: f32 sums over blocks of 256 products, added up in double.
double dot_blocked(const float* a, const float* b, int64_t n) {
  typedef float V __attribute__((vector_size(simd::kWidth * 4)));
  constexpr int64_t kBlock = 256;
  VecD acc{};
  for (int64_t i0 = 0; i0 < n; i0 += kBlock) {
    V s0{}, s1{};
    const int64_t e = std::min(n, i0 + kBlock);
    int64_t i = i0;
    for (; i + 2 * simd::kWidth <= e; i += 2 * simd::kWidth) {
      s0 += simd::load(a + i) * simd::load(b + i);
      s1 += simd::load(a + i + simd::kWidth) * simd::load(b + i + simd::kWidth);
    }
    for (; i < e; i += simd::kWidth) s0 += simd::load(a + i) * simd::load(b + i);
    float lanes[simd::kWidth];
    simd::store(lanes, s0 + s1);
    HalfF lo, hi;
    std::memcpy(&lo, lanes, sizeof(lo));
    std::memcpy(&hi, lanes + WD, sizeof(hi));
    acc += __builtin_convertvector(lo, VecD) + __builtin_convertvector(hi, VecD);
  }
  double s = 0;
  for (int i = 0; i < WD; ++i) s += acc[i];
  return s;
}
double dot_blocked(const double* a, const double* b, int64_t n) { return dot_d(a, b, n); }

// Row sums of W vectors at once by a shuffle butterfly: W - 1 shuffle pairs instead of W
// horizontal sums. Input i should hold row slot[i]; lane l of the result is then the sum of row l.
template <class T>
struct Butterfly {
  static constexpr int W = simd::kWidth * 4 / static_cast<int>(sizeof(T));
  static constexpr int kLevels = __builtin_ctz(W);
  typedef T Vec __attribute__((vector_size(simd::kWidth * 4)));
  typedef std::conditional_t<sizeof(T) == 4, int32_t, int64_t> Index;
  typedef Index Mask __attribute__((vector_size(simd::kWidth * 4)));
  Mask lo[kLevels], hi[kLevels];
  int slot[W];
  Butterfly() {
    for (int lv = 0, h = W / 2; lv < kLevels; ++lv, h /= 2)
      for (int l = 0; l < W; ++l) {
        lo[lv][l] = (l & h) == 0 ? l : W + l - h;
        hi[lv][l] = (l & h) == 0 ? l + h : W + l;
      }
    for (int i = 0; i < W; ++i) slot[i] = i;
    Vec v[W];
    for (int i = 0; i < W; ++i) v[i] = static_cast<T>(i) - Vec{};
    Vec r = reduce(v);  // lane l now holds W * (input of lane l)
    int order[W];
    for (int l = 0; l < W; ++l) order[l] = static_cast<int>(r[l] / W + T(0.5));
    for (int l = 0; l < W; ++l) slot[order[l]] = l;
  }
  Vec reduce(Vec* v) const {  // overwrites v
#pragma GCC unroll 8
    for (int lv = 0; lv < kLevels; ++lv) {
      const int count = W >> lv;
#pragma GCC unroll 16
      for (int i = 0; i < count / 2; ++i)
        v[i] = shuffle(v[2 * i], v[2 * i + 1], lo[lv]) + shuffle(v[2 * i], v[2 * i + 1], hi[lv]);
    }
    return v[0];
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
  static const Butterfly& get() {
    static const Butterfly b;
    return b;
  }
};

template <class T>
struct Ssd {
  static constexpr int W = simd::kWidth * 4 / static_cast<int>(sizeof(T));
  typedef T Vec __attribute__((vector_size(simd::kWidth * 4)));
  static constexpr int kSlabP = 4;   // forward: P-vectors held in registers per pass over N
  static constexpr int kSlabN2 = 4;  // backward pass 2: N-vectors in registers per pass over P
  // Inputs divided by scale stay far from overflow: |S'| <= |S| / kMinScale.
  static constexpr T kMinScale = sizeof(T) == 4 ? T(0x1p-40) : T(0x1p-300);
  // Checkpoints at most this far apart: the rounding of the telescoped sums for dt and A grows
  // with the distance to the next one (64 keeps f32 gradients of A within ~5e-6 of float64).
  static constexpr int64_t kMaxSpacing = 64;

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
    Q = std::clamp<int64_t>(in.chunk_size, 1, kMaxSpacing);
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

  // scratch: S' [N * Pp], xs, ys, gate [Pp]
  void forward_head(int64_t b, int64_t h, Schedule& sc, T* S, T* xs, T* ys, T* gate, T* y, T* y_pre,
                    T* fin) const {
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
  // Pass 1 sweeps the state once per group of up to kGroup consecutive steps (never across a
  // checkpoint): within a group the operations are those of one step after another, in the same
  // order, so the grouping does not change the results.
  static constexpr int kGroup = 4;  // pass 1 (S x K = 4 x 2 vectors of accumulators)
  struct Steps {
    const T* b[kGroup];  // B rows (padded to Np)
    const T* xs[kGroup];
    const T* gy[kGroup];
    T* out[kGroup];  // dC' rows
    T m[kGroup];
  };

  // Pass 1 on K N-vectors from column j, S steps in time order: S' = m S' + xs B^T, and
  // out = (m S')^T gy from the decayed state before the step's input (its part is added later).
  template <int S, int K, bool kMul>
  static void bwd1_group(T* s, int64_t Np, int64_t P, const Steps& st, int64_t j) {
    Vec bv[S][K], acc[S][K], mv[S];
    const T* xs[S];
    const T* gy[S];
    for (int i = 0; i < S; ++i) {
      xs[i] = st.xs[i];
      gy[i] = st.gy[i];
      mv[i] = bcast(st.m[i]);
      for (int k = 0; k < K; ++k) {
        bv[i][k] = load(st.b[i] + j + k * W);
        acc[i][k] = Vec{};
      }
    }
    for (int64_t p = 0; p < P; ++p) {
      T* row = s + p * Np + j;
      Vec v[K];
      for (int k = 0; k < K; ++k) v[k] = load(row + k * W);
      for (int i = 0; i < S; ++i) {
        const Vec xp = bcast(xs[i][p]), gp = bcast(gy[i][p]);
        for (int k = 0; k < K; ++k) {
          const Vec old = kMul ? v[k] * mv[i] : v[k];
          acc[i][k] += gp * old;
          v[k] = old + xp * bv[i][k];
        }
      }
      for (int k = 0; k < K; ++k) store(row + k * W, v[k]);
    }
    for (int i = 0; i < S; ++i)
      for (int k = 0; k < K; ++k) store(st.out[i] + j + k * W, acc[i][k]);
  }

  // One group of S steps over the whole state.
  template <int S, bool kMul>
  void sweep1(T* state, const Steps& st) const {
    constexpr int K = S >= 3 ? 2 : S == 2 ? 4 : 8;  // S x K accumulators and B vectors in registers
    const int64_t nv = Np / W;
    for (int64_t j = 0; j < nv; j += K) {
      const int64_t jw = j * W;
      switch (std::min<int64_t>(K, nv - j)) {
#define COIL_SSD_G1(KK)                                                   \
  case KK:                                                                \
    if constexpr (KK <= K) bwd1_group<S, KK, kMul>(state, Np, P, st, jw); \
    break;
        COIL_SSD_G1(1)
        COIL_SSD_G1(2)
        COIL_SSD_G1(3)
        COIL_SSD_G1(4)
        COIL_SSD_G1(5)
        COIL_SSD_G1(6)
        COIL_SSD_G1(7)
        COIL_SSD_G1(8)
#undef COIL_SSD_G1
      }
    }
  }
  void sweep1_any(T* state, const Steps& st, int cnt) const {
    bool mul = false;
    for (int i = 0; i < cnt; ++i) mul = mul || st.m[i] != T(1);
    switch (cnt) {
#define COIL_SSD_SWEEP(S)                                           \
  case S:                                                           \
    mul ? sweep1<S, true>(state, st) : sweep1<S, false>(state, st); \
    break;
      COIL_SSD_SWEEP(1)
      COIL_SSD_SWEEP(2)
      COIL_SSD_SWEEP(3)
      COIL_SSD_SWEEP(4)
#undef COIL_SSD_SWEEP
    }
  }

  // Pass 2 on K N-vectors of G'[P][Np]: G' = m G' + gy C^T. From H' = m G' before the output's
  // part (added per n and p later): dB' = H'^T X, w[p] (+)= lanes of H' B (row sums later).
  template <int K, bool kMul>
  static void bwd2_slab(T* gs, int64_t Np, int64_t P, const T* bp, const T* cp, T m, const T* xs,
                        const T* gy, T* dbp, T* w, bool first) {
    Vec bv[K], cv[K], acc[K];
    for (int k = 0; k < K; ++k) {
      bv[k] = load(bp + k * W);
      cv[k] = load(cp + k * W);
      acc[k] = Vec{};
    }
    const Vec mv = bcast(m);
    for (int64_t p = 0; p < P; ++p) {
      const Vec xp = bcast(xs[p]), gp = bcast(gy[p]);
      T* row = gs + p * Np;
      Vec w0{}, w1{};
      for (int k = 0; k < K; ++k) {
        const Vec old = kMul ? load(row + k * W) * mv : load(row + k * W);
        store(row + k * W, old + gp * cv[k]);
        acc[k] += xp * old;
        if (k % 2 == 0)
          w0 += old * bv[k];
        else
          w1 += old * bv[k];
      }
      Vec wp = w0 + w1;
      store(w + p * W, first ? wp : load(w + p * W) + wp);
    }
    for (int k = 0; k < K; ++k) store(dbp + k * W, acc[k]);
  }

  // Pass 2 takes two steps per sweep of the state (t0 then t1), each element loaded and stored
  // once: the same operations in the same order as two calls of the one-step kernel (a multiply
  // by m = 1 is exact).
  template <int K, bool kMul>
  static void bwd2_pair_slab(T* gs, int64_t Np, int64_t P, const T* b0p, const T* c0p, const T* b1p,
                             const T* c1p, T m0, T m1, const T* xs0, const T* xs1, const T* gy0,
                             const T* gy1, T* o0, T* o1, T* w0, T* w1, bool first) {
    Vec b0[K], b1[K], a0[K], a1[K];
    for (int k = 0; k < K; ++k) {
      b0[k] = load(b0p + k * W);
      b1[k] = load(b1p + k * W);
      a0[k] = Vec{};
      a1[k] = Vec{};
    }
    const Vec mv0 = bcast(m0), mv1 = bcast(m1);
    for (int64_t p = 0; p < P; ++p) {
      const Vec x0 = bcast(xs0[p]), x1 = bcast(xs1[p]), g0 = bcast(gy0[p]), g1 = bcast(gy1[p]);
      T* row = gs + p * Np;
      Vec w00{}, w01{}, w10{}, w11{};
      for (int k = 0; k < K; ++k) {
        const Vec v = load(row + k * W);
        const Vec old0 = kMul ? v * mv0 : v;
        const Vec n0 = old0 + g0 * load(c0p + k * W);
        a0[k] += x0 * old0;
        const Vec old1 = kMul ? n0 * mv1 : n0;
        store(row + k * W, old1 + g1 * load(c1p + k * W));
        a1[k] += x1 * old1;
        if (k % 2 == 0) {
          w00 += old0 * b0[k];
          w10 += old1 * b1[k];
        } else {
          w01 += old0 * b0[k];
          w11 += old1 * b1[k];
        }
      }
      const Vec wp0 = w00 + w01, wp1 = w10 + w11;
      store(w0 + p * W, first ? wp0 : load(w0 + p * W) + wp0);
      store(w1 + p * W, first ? wp1 : load(w1 + p * W) + wp1);
    }
    for (int k = 0; k < K; ++k) {
      store(o0 + k * W, a0[k]);
      store(o1 + k * W, a1[k]);
    }
  }
  static constexpr int kPairSlab = 4;
  template <bool kMul>
  void bwd_pair2(T* state, const T* b0, const T* c0, const T* b1, const T* c1, T m0, T m1,
                 const T* xs0, const T* xs1, const T* gy0, const T* gy1, T* o0, T* o1, T* w0,
                 T* w1) const {
    const int64_t nv = Np / W;
    for (int64_t j = 0; j < nv; j += kPairSlab) {
      const int64_t jw = j * W;
      const bool first = j == 0;
#define COIL_SSD_PAIR2(K)                                                                       \
  case K:                                                                                       \
    bwd2_pair_slab<K, kMul>(state + jw, Np, P, b0 + jw, c0 + jw, b1 + jw, c1 + jw, m0, m1, xs0, \
                            xs1, gy0, gy1, o0 + jw, o1 + jw, w0, w1, first);                    \
    break;
      switch (std::min<int64_t>(kPairSlab, nv - j)) {
        COIL_SSD_PAIR2(1)
        COIL_SSD_PAIR2(2)
        COIL_SSD_PAIR2(3)
        COIL_SSD_PAIR2(4)
      }
#undef COIL_SSD_PAIR2
    }
  }

  // One pass-2 step alone (at a checkpoint or the sequence's start).
  template <bool kMul>
  void bwd2_step(T* state, const T* bp, const T* cp, T m, const T* xs, const T* gy, T* out,
                 T* w) const {
    const int64_t nv = Np / W;
    for (int64_t j = 0; j < nv; j += kSlabN2) {
      T* s = state + j * W;
      const T* bj = bp + j * W;
      const T* cj = cp + j * W;
      T* oj = out + j * W;
      const bool first = j == 0;
      switch (std::min<int64_t>(kSlabN2, nv - j)) {
#define COIL_SSD_SLAB(K)                                           \
  case K:                                                          \
    bwd2_slab<K, kMul>(s, Np, P, bj, cj, m, xs, gy, oj, w, first); \
    break;
        COIL_SSD_SLAB(1)
        COIL_SSD_SLAB(2)
        COIL_SSD_SLAB(3)
        COIL_SSD_SLAB(4)
#undef COIL_SSD_SLAB
      }
    }
  }
  void bwd2_step(T* state, const T* bp, const T* cp, T m, const T* xs, const T* gy, T* out,
                 T* w) const {
    if (m == T(1))
      bwd2_step<false>(state, bp, cp, m, xs, gy, out, w);
    else
      bwd2_step<true>(state, bp, cp, m, xs, gy, out, w);
  }

  // A row of n values readable as np (a whole number of vectors): in place when n == np, else
  // copied into buf, whose tail stays zero.
  static const T* padded(const T* src, T* buf, int64_t n, int64_t np) {
    if (n == np) return src;
    std::memcpy(buf, src, n * sizeof(T));
    return buf;
  }

  // sum_p a[p] b[p] over the padded rows.
  T dot_t(const T* a, const T* b) const {
    Vec acc0{}, acc1{};
    int64_t p = 0;
    for (; p + 2 * W <= Pp; p += 2 * W) {
      acc0 += load(a + p) * load(b + p);
      acc1 += load(a + p + W) * load(b + p + W);
    }
    if (p < Pp) acc0 += load(a + p) * load(b + p);
    return hsum(acc0 + acc1);
  }

  // u[p] = sum of the W lanes of w[p] for the padded rows (w rows past P are zero).
  void row_sums(const T* w, T* u) const {
    const Butterfly<T>& bf = Butterfly<T>::get();
    for (int64_t p0 = 0; p0 < Pp; p0 += W) {
      Vec v[W];
#pragma GCC unroll 16
      for (int i = 0; i < W; ++i) v[i] = load(w + (p0 + bf.slot[i]) * W);
      store(u + p0, bf.reduce(v));
    }
  }

  // Per-thread scratch of the backward; rows padded to Pp / Np stay zero past P / N.
  struct BwdScratch {
    Scratch<T> S, Gs, ckpt, bp, cp, out, w, gy, xs, xr, u, dxr, gate;
    Scratch<T> bp2, cp2, out2, gy2, xs2, xr2;  // the second step of a pair (w holds both)
    Scratch<T> xs1, gy1, out1, bp1, cp1;       // pass 1: kGroup rows each
    Schedule sched;
    std::vector<T> gm, gscale, inv_gscale, ck_scale;  // reverse schedule of G = gscale * G'
    std::vector<double> E;
    explicit BwdScratch(const Ssd& k)
        : S(k.P * k.Np),
          Gs(k.P * k.Np),
          ckpt(((k.L + k.Q - 1) / k.Q) * k.P * k.Np, false),  // written before it is read
          bp(k.Np),
          cp(k.Np),
          out(k.Np),
          w(2 * k.wstride()),
          gy(k.Pp),
          xs(k.Pp),
          xr(k.Pp),
          u(k.Pp),
          dxr(k.Pp),
          gate(k.Pp),
          bp2(k.Np),
          cp2(k.Np),
          out2(k.Np),
          gy2(k.Pp),
          xs2(k.Pp),
          xr2(k.Pp),
          xs1(kGroup * k.Pp),
          gy1(kGroup * k.Pp),
          out1(kGroup * k.Np),
          bp1(kGroup * k.Np),
          cp1(kGroup * k.Np),
          sched(k.L),
          gm(k.L),
          gscale(k.L),
          inv_gscale(k.L),
          ck_scale((k.L + k.Q - 1) / k.Q),
          E(k.L) {}
  };

  struct BwdOut {
    T *dx, *ddt, *dB, *dC, *dz, *dinit;  // dB, dC: this slot's accumulator
    const T *y_pre, *dy, *dfin;
    const T* cb;              // C . B per (batch, step, group)
    double *dA, *dD, *dbias;  // per (batch, head) partial sums
  };

  bool chunk_end(int64_t t) const { return (t + 1) % Q == 0 || t == L - 1; }
  // gy = s * dy before the gate (gate = silu(z) when z).
  void gate_grad(int64_t r, const T* dy, T s, T* gate, T* gy) const {
    if (z) {
      silu_row(z + r, gate, P);
      for (int64_t p = 0; p < P; ++p) gy[p] = s * dy[r + p] * gate[p];
    } else {
      for (int64_t p = 0; p < P; ++p) gy[p] = s * dy[r + p];
    }
  }

  void backward_head(int64_t b, int64_t h, BwdScratch& sc, const BwdOut& o) const {
    const int64_t g = h / hpg;
    const T Ah = A[h], Dh = D ? D[h] : T(0);
    T *S = sc.S.get(), *Gs = sc.Gs.get(), *bp = sc.bp.get(), *cp = sc.cp.get();
    T *out = sc.out.get(), *w = sc.w.get(), *gy = sc.gy.get(), *xs = sc.xs.get();
    T *xr = sc.xr.get(), *u = sc.u.get(), *dxr = sc.dxr.get(), *gate = sc.gate.get();
    T* ckpt = sc.ckpt.get();
    const int64_t state = P * Np;

    // Pass 1 (forward in time): states, dC, the C . dC part of E, checkpoints.
    std::fill(S, S + state, T(0));
    if (init)
      for (int64_t p = 0; p < P; ++p)
        std::memcpy(S + p * Np, init + srow(b, h) + p * N, N * sizeof(T));
    const Schedule& sd = sc.sched;
    schedule(b, h, sc.sched);
    struct Step1 {
      T *xs, *gy, *out, *bp, *cp;
      const T *bt, *ct;
    };
    Step1 st1[kGroup];
    for (int i = 0; i < kGroup; ++i)
      st1[i] = {sc.xs1.get() + i * Pp,
                sc.gy1.get() + i * Pp,
                sc.out1.get() + i * Np,
                sc.bp1.get() + i * Np,
                sc.cp1.get() + i * Np,
                nullptr,
                nullptr};
    auto pre1 = [&](int64_t t, Step1& u1) {
      const int64_t r = xrow(b, t, h), rb = bcrow(b, t, g);
      if (t + kPrefetchSteps < L) {
        const int64_t ra = xrow(b, t + kPrefetchSteps, h);
        prefetch_row(x + ra, P, false);
        prefetch_row(o.dy + ra, P, false);
        prefetch_row(z ? z + ra : nullptr, P, false);
        const int64_t rba = bcrow(b, t + kPrefetchSteps, g);
        prefetch_row(o.dC + rba, N, true);
      }
      const T in_scale = sd.in_scale[t];
      const T* xt = x + r;
      for (int64_t p = 0; p < P; ++p) u1.xs[p] = in_scale * xt[p];
      gate_grad(r, o.dy, T(1), gate, u1.gy);
      u1.bt = padded(Bm + rb, u1.bp, N, Np);
      u1.ct = padded(Cm + rb, u1.cp, N, Np);
    };
    auto post1 = [&](int64_t t, const Step1& u1) {
      const int64_t rb = bcrow(b, t, g);
      const T scale = sd.scale[t];
      // dC = S_t^T dy = (a S_{t-1})^T dy + B (X . dy); E gets (C dy^T) . (a S_{t-1})
      const T xdy = scale * dot_t(u1.xs, u1.gy);
      T* dC = o.dC + rb;
      for (int64_t n = 0; n < N; ++n) dC[n] += scale * u1.out[n] + u1.bt[n] * xdy;
      sc.E[t] = scale * dot_d(u1.ct, u1.out, Np);
      if (chunk_end(t)) {
        std::memcpy(ckpt + (t / Q) * state, S, state * sizeof(T));
        sc.ck_scale[t / Q] = scale;
      }
    };
    for (int64_t t = 0; t < L;) {
      int cnt = 1;  // steps in this group: up to kGroup, ending at a checkpoint at the latest
      while (cnt < kGroup && t + cnt < L && !chunk_end(t + cnt - 1)) ++cnt;
      Steps st;
      for (int i = 0; i < cnt; ++i) {
        pre1(t + i, st1[i]);
        st.b[i] = st1[i].bt;
        st.xs[i] = st1[i].xs;
        st.gy[i] = st1[i].gy;
        st.out[i] = st1[i].out;
        st.m[i] = sd.m[t + i];
      }
      sweep1_any(S, st, cnt);
      for (int i = 0; i < cnt; ++i) post1(t + i, st1[i]);
      t += cnt;
    }

    // Pass 2 (reverse): G, dB, dx, dz, and the sums for dt, A, D, dt_bias.
    std::fill(Gs, Gs + state, T(0));
    if (o.dfin)
      for (int64_t p = 0; p < P; ++p)
        std::memcpy(Gs + p * Np, o.dfin + srow(b, h) + p * N, N * sizeof(T));
    {
      T gs = 1, an = 1;  // G_{t+1} = gs * G'; an = a_{t+1}
      for (int64_t t = L - 1; t >= 0; --t) {
        sc.gm[t] = rescale(gs, an);  // the gradient entering S_t is gs * m * G'
        sc.gscale[t] = gs;
        an = sd.a[t];
      }
      for (int64_t t = 0; t < L; ++t) sc.inv_gscale[t] = T(1) / sc.gscale[t];
    }
    double run = 0, dA = 0, dD = 0, dbias = 0;
    struct Step2 {
      T *xs, *gy, *out, *w, *bp, *cp, *xr;
      const T *bt, *ct, *xv;
    };
    Step2 st2[2] = {{xs, gy, out, w, bp, cp, xr, nullptr, nullptr, nullptr},
                    {sc.xs2.get(), sc.gy2.get(), sc.out2.get(), w + wstride(), sc.bp2.get(),
                     sc.cp2.get(), sc.xr2.get(), nullptr, nullptr, nullptr}};
    auto pre2 = [&](int64_t t, Step2& v2) {
      const int64_t r = xrow(b, t, h), rb = bcrow(b, t, g);
      if (t >= kPrefetchSteps) {
        const int64_t ra = xrow(b, t - kPrefetchSteps, h);
        prefetch_row(x + ra, P, false);
        prefetch_row(o.dy + ra, P, false);
        prefetch_row(o.dx + ra, P, true);
        prefetch_row(z ? z + ra : nullptr, P, false);
        prefetch_row(o.y_pre ? o.y_pre + ra : nullptr, P, false);
        prefetch_row(o.dz ? o.dz + ra : nullptr, P, true);
        const int64_t rba = bcrow(b, t - kPrefetchSteps, g);
        prefetch_row(o.dB + rba, N, true);
      }
      const T d = sd.d[t];
      v2.xv = padded(x + r, v2.xr, P, Pp);
      for (int64_t p = 0; p < P; ++p) v2.xs[p] = d * v2.xv[p];
      gate_grad(r, o.dy, sc.inv_gscale[t], gate, v2.gy);
      v2.bt = padded(Bm + rb, v2.bp, N, Np);
      v2.ct = padded(Cm + rb, v2.cp, N, Np);
    };
    auto check2 = [&](int64_t t) {
      if (chunk_end(t)) {
        const double hs = dot_blocked(Gs, ckpt + (t / Q) * state, state);
        sc.E[t] += static_cast<double>(sc.gscale[t]) * sc.gm[t] * sc.ck_scale[t / Q] * hs;
        run = 0;
      }
    };
    auto post2 = [&](int64_t t, const Step2& v2) {
      const int64_t r = xrow(b, t, h), rb = bcrow(b, t, g);
      const T d = sd.d[t], gscale = sc.gscale[t];
      const T *xs_ = v2.xs, *gy_ = v2.gy, *out_ = v2.out, *bt = v2.bt, *ct = v2.ct, *xv = v2.xv;
      // G_t = H_t + C dy^T: dB = H^T X + C (dy . X); u = H B + dy (C . B); E loses H . (B X^T)
      const T gx = gscale * dot_t(gy_, xs_);
      T* dB = o.dB + rb;
      for (int64_t n = 0; n < N; ++n) dB[n] += gscale * out_[n] + ct[n] * gx;
      const double hbx = gscale * dot_d(bt, out_, Np);
      row_sums(v2.w, u);
      const T cb = o.cb[(b * L + t) * G + g];
      for (int64_t p = 0; p < P; ++p) u[p] += gy_[p] * cb;
      // dx = d u + D dy; q = x . u (also sums for D), over padded rows
      const Vec du = bcast(d * gscale), dD_v = bcast(Dh * gscale);
      Vec qv{}, dDv{};
      T* dxt = P == Pp ? o.dx + r : dxr;
      for (int64_t p = 0; p < Pp; p += W) {
        const Vec uv = load(u + p), gv = load(gy_ + p), xp = load(xv + p);
        store(dxt + p, du * uv + dD_v * gv);
        qv += xp * uv;
        dDv += xp * gv;
      }
      if (dxt != o.dx + r) std::memcpy(o.dx + r, dxr, P * sizeof(T));
      const double q = static_cast<double>(gscale) * hsum(qv);
      dD += static_cast<double>(gscale) * hsum(dDv);
      if (o.dz) {
        dsilu_row(z + r, gate, P);
        for (int64_t p = 0; p < P; ++p) o.dz[r + p] = o.dy[r + p] * o.y_pre[r + p] * gate[p];
      }
      run += sc.E[t] - hbx;
      const double ddelta = Ah * run + q;
      dA += d * run;
      const double draw = ddelta * sd.dd[t];
      o.ddt[(b * L + t) * H + h] = static_cast<T>(draw);
      dbias += draw;
    };
    for (int64_t t = L - 1; t >= 0;) {
      const bool pair = t >= 1 && !chunk_end(t - 1);
      pre2(t, st2[0]);
      check2(t);
      if (pair) {
        pre2(t - 1, st2[1]);
        const T m0 = sc.gm[t], m1 = sc.gm[t - 1];
        const Step2 &a0 = st2[0], &a1 = st2[1];
        if (m0 == T(1) && m1 == T(1))
          bwd_pair2<false>(Gs, a0.bt, a0.ct, a1.bt, a1.ct, m0, m1, a0.xs, a1.xs, a0.gy, a1.gy,
                           a0.out, a1.out, a0.w, a1.w);
        else
          bwd_pair2<true>(Gs, a0.bt, a0.ct, a1.bt, a1.ct, m0, m1, a0.xs, a1.xs, a0.gy, a1.gy,
                          a0.out, a1.out, a0.w, a1.w);
        post2(t, a0);
        post2(t - 1, a1);
        t -= 2;
      } else {
        const Step2& a0 = st2[0];
        bwd2_step(Gs, a0.bt, a0.ct, sc.gm[t], a0.xs, a0.gy, a0.out, a0.w);
        post2(t, a0);
        t -= 1;
      }
    }
    if (o.dinit) {
      const T f = L > 0 ? sd.a[0] * sc.gscale[0] : T(1);
      for (int64_t p = 0; p < P; ++p)
        for (int64_t n = 0; n < N; ++n) o.dinit[srow(b, h) + p * N + n] = f * Gs[p * Np + n];
    }
    o.dA[b * H + h] = dA;
    o.dD[b * H + h] = dD;
    o.dbias[b * H + h] = dbias;
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
void run_forward(const SsdScanInputs& in, const SsdScanForward& f) {
  Ssd<T> k(in);
  const Deltas<T> deltas(k);
  T* y = f.y.data_ptr<T>();
  T* y_pre = mut_or_null<T>(f.y_pre);
  T* fin = mut_or_null<T>(f.final_state);
  if (k.L == 1) {
    parallel_for(0, k.batch * k.H, 4, [&](int64_t i0, int64_t i1) {
      Scratch<T> gate(k.Pp);
      for (int64_t i = i0; i < i1; ++i) k.step_head(i / k.H, i % k.H, gate.get(), y, y_pre, fin);
    });
    return;
  }
  parallel_for(0, k.batch * k.H, 1, [&](int64_t i0, int64_t i1) {
    Scratch<T> S(k.N * k.Pp), xs(k.Pp), ys(k.Pp), gate(k.Pp);
    typename Ssd<T>::Schedule sc(k.L);
    for (int64_t i = i0; i < i1; ++i)
      k.forward_head(i / k.H, i % k.H, sc, S.get(), xs.get(), ys.get(), gate.get(), y, y_pre, fin);
  });
}

template <class T>
void run_backward(const SsdScanInputs& in, const SsdScanBackward& bw) {
  Ssd<T> k(in);
  const Deltas<T> deltas(k);
  const int64_t pairs = k.batch * k.H;
  const int64_t bc = k.batch * k.L * k.G * k.N;
  // dB, dC sum over the heads of a group: with several heads per group each slot (one per
  // thread) accumulates into its own buffer, reduced at the end; otherwise heads own their rows.
  const int64_t slots = std::max<int64_t>(1, std::min<int64_t>(get_num_threads(), pairs));
  const bool shared = k.hpg > 1 && slots > 1;
  T* dB = bw.dB.data_ptr<T>();
  T* dC = bw.dC.data_ptr<T>();
  Scratch<T> extra(shared ? (slots - 1) * 2 * bc : 0, false);
  // The accumulators start at zero, cleared in parallel (they are megabytes at long L).
  parallel_for(0, bc, 1 << 16, [&](int64_t e0, int64_t e1) {
    std::fill(dB + e0, dB + e1, T(0));
    std::fill(dC + e0, dC + e1, T(0));
    for (int64_t s = 0; shared && s + 1 < slots; ++s) {
      T* ex = extra.get() + s * 2 * bc;
      std::fill(ex + e0, ex + e1, T(0));
      std::fill(ex + bc + e0, ex + bc + e1, T(0));
    }
  });
  // C . B of every (batch, step, group), shared by the group's heads; summed in double, as it
  // can cancel and scales every head's dt gradient.
  std::vector<T> cb(static_cast<size_t>(k.batch * k.L * k.G));
  parallel_for(0, k.batch * k.L * k.G, 1024, [&](int64_t r0, int64_t r1) {
    Scratch<T> pb(k.Np), pc(k.Np);
    for (int64_t r = r0; r < r1; ++r) {
      const T* bt = Ssd<T>::padded(k.Bm + r * k.N, pb.get(), k.N, k.Np);
      const T* ct = Ssd<T>::padded(k.Cm + r * k.N, pc.get(), k.N, k.Np);
      cb[r] = static_cast<T>(dot_d(ct, bt, k.Np));
    }
  });
  std::vector<double> dA(pairs), dD(pairs), dbias(pairs);
  parallel_for(0, slots, 1, [&](int64_t s0, int64_t s1) {
    typename Ssd<T>::BwdScratch sc(k);
    for (int64_t s = s0; s < s1; ++s) {
      typename Ssd<T>::BwdOut o;
      o.dx = bw.dx.data_ptr<T>();
      o.ddt = bw.ddt.data_ptr<T>();
      o.dB = shared && s > 0 ? extra.get() + (s - 1) * 2 * bc : dB;
      o.dC = shared && s > 0 ? extra.get() + (s - 1) * 2 * bc + bc : dC;
      o.dz = mut_or_null<T>(bw.dz);
      o.dinit = mut_or_null<T>(bw.dinitial_state);
      o.y_pre = ptr_or_null<T>(bw.y_pre);
      o.dy = bw.dy.data_ptr<T>();
      o.dfin = ptr_or_null<T>(bw.dfinal_state);
      o.cb = cb.data();
      o.dA = dA.data();
      o.dD = dD.data();
      o.dbias = dbias.data();
      for (int64_t i = s; i < pairs; i += slots) k.backward_head(i / k.H, i % k.H, sc, o);
    }
  });
  if (shared) {
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
      sa += dA[b * k.H + h];
      sd += dD[b * k.H + h];
      sb += dbias[b * k.H + h];
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
    if (fwd) run_forward<float>(in, *fwd);
    if (bwd) run_backward<float>(in, *bwd);
  } else {
    if (fwd) run_forward<double>(in, *fwd);
    if (bwd) run_backward<double>(in, *bwd);
  }
}

}  // namespace coil::cpu
