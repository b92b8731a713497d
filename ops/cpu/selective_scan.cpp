// Fused Mamba-1 selective scan on CPU, forward and backward.
//
// Memory layout (all contiguous, token-major like a Linear's output):
//   u, delta, z, y and their grads   [batch][L][dim]          channel fastest
//   B, C, dB, dC                     [batch][L][groups][N]    state fastest
//   A, dA                            [dim][N]
//   D, delta_bias and their grads    [dim]
//   initial/final state and grads    [batch][dim][N]
//   checkpoints                      [batch][chunk][N][dim]   state before each chunk of
//                                                             kSelectiveScanChunk steps
// The unit of work is a block of W consecutive channels inside one group (W = SIMD width for
// f32, 1 for f64). State n of a block is one vector h[n] across its W channels, so B_t[n] and
// C_t[n] are broadcasts shared by the block and exp(delta A) is one vector exp per state. Lanes
// past a group's last channel are zero-padded and stay zero through every formula.
//
// Backward, chunk by chunk from the last: recompute the chunk's states from its checkpoint into
// a small buffer ((chunk + 1) x N vectors, with the decays alongside), then walk the chunk in
// reverse carrying dh. dB and dC sum over channels: each step's N vectors are summed across
// lanes at once into per-step sums of the current group, which go out once per group and chunk.
// Threads split the channels into slabs, each with its own partial dB/dC (summed at the end)
// and per-batch dA, dD, ddelta_bias (summed over the batch at the end); those sums run per chunk
// in the compute type, then in f64.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <type_traits>
#include <vector>

#include "../../core/parallel.h"
#include "../../core/simd.h"
#include "kernels.h"

namespace coil::cpu {

namespace {

constexpr int64_t kChunk = kSelectiveScanChunk;

// The per-type vector: f32 runs SIMD across channels, f64 (references, gradcheck) one channel.
template <class T>
struct Lanes;

template <>
struct Lanes<float> {
  using V = simd::Vec;
  using VecI = simd::VecI;
  static constexpr int W = simd::kWidth;
  static V load(const float* p, int n) {
    if (n == W) return simd::load(p);
    V v{};
    std::memcpy(&v, p, sizeof(float) * n);
    return v;
  }
  static void store(float* p, V v, int n) {
    if (n == W)
      simd::store(p, v);
    else
      std::memcpy(p, &v, sizeof(float) * n);
  }
  static V exp(V x) { return simd::exp(x); }
  static V sigmoid(V x) { return simd::sigmoid(x); }
  // softplus with PyTorch's threshold (x > 20 passes through) and its derivative.
  static void softplus(V x, V& sp, V& dsp) { simd::softplus(x, sp, dsp); }

  static float lane(V v, int j) { return v[j]; }
  static float sum(V v) {
    float s = 0;
    for (int j = 0; j < W; ++j) s += v[j];
    return s;
  }
};

template <>
struct Lanes<double> {
  using V = double;
  static constexpr int W = 1;
  static V load(const double* p, int) { return *p; }
  static void store(double* p, V v, int) { *p = v; }
  static V exp(V x) { return std::exp(x); }
  static V sigmoid(V x) { return 1.0 / (1.0 + std::exp(-x)); }
  static void softplus(V x, V& sp, V& dsp) {
    sp = x > 20 ? x : std::log1p(std::exp(x));
    dsp = x > 20 ? 1.0 : sigmoid(x);
  }
  static double lane(V v, int) { return v; }
  static double sum(V v) { return v; }
};

// N vectors: a local array when N is a compile-time constant (so it can live in registers),
// otherwise on the heap.
template <class V, int kN>
struct StateVecs {
  V v[kN];
  void init(int64_t) {}
  V& operator[](int64_t i) { return v[i]; }
};
template <class V>
struct StateVecs<V, 0> {
  std::vector<V> v;
  void init(int64_t n) { v.assign(static_cast<size_t>(n), V{}); }
  V& operator[](int64_t i) { return v[i]; }
};

// Steps ahead to prefetch the token rows: consecutive steps of a block are dim floats apart,
// a stride the hardware prefetchers do not follow across pages.
constexpr int64_t kAhead = 8;
template <class T>
inline void prefetch_row(const T* p, int64_t off, int64_t dist, bool write = false) {
  if (p) {
    if (write)
      __builtin_prefetch(p + off + dist, 1);
    else
      __builtin_prefetch(p + off + dist, 0);
  }
}

struct Block {
  int64_t g, c0;
  int w;  // live lanes
};

template <class T>
struct Problem {
  int64_t batch, L, dim, N, G, nchunk;
  const T *u, *delta, *A, *B, *C, *D, *z, *bias, *h0;
  bool softplus;
  std::vector<Block> blocks;  // group-major, so a group's blocks are adjacent

  explicit Problem(const SelectiveScanInputs& in) {
    batch = in.u.sizes()[0];
    L = in.u.sizes()[1];
    dim = in.u.sizes()[2];
    N = in.A.sizes()[1];
    G = in.B.sizes()[2];
    nchunk = (L + kChunk - 1) / kChunk;
    auto ptr = [](const Tensor& t) { return t.defined() ? t.data_ptr<T>() : nullptr; };
    u = ptr(in.u);
    delta = ptr(in.delta);
    A = ptr(in.A);
    B = ptr(in.B);
    C = ptr(in.C);
    D = ptr(in.D);
    z = ptr(in.z);
    bias = ptr(in.delta_bias);
    h0 = ptr(in.initial_state);
    softplus = in.delta_softplus;
    const int W = Lanes<T>::W;
    const int64_t per_group = G > 0 ? dim / G : 0;
    for (int64_t g = 0; g < G; ++g)
      for (int64_t c = g * per_group; c < (g + 1) * per_group; c += W)
        blocks.push_back({g, c, static_cast<int>(std::min<int64_t>(W, (g + 1) * per_group - c))});
  }
  const T* Bt(int64_t b, int64_t t, int64_t g) const { return B + ((b * L + t) * G + g) * N; }
  const T* Ct(int64_t b, int64_t t, int64_t g) const { return C + ((b * L + t) * G + g) * N; }
};

// Gathers the block's lanes of a [channel][N] matrix column n (A, a state) into a vector.
template <class T>
typename Lanes<T>::V gather_column(const T* m, int64_t N, const Block& k, int64_t n) {
  T tmp[Lanes<T>::W] = {};
  for (int j = 0; j < k.w; ++j) tmp[j] = m[(k.c0 + j) * N + n];
  return Lanes<T>::load(tmp, Lanes<T>::W);
}
template <class T>
void scatter_column(T* m, int64_t N, const Block& k, int64_t n, typename Lanes<T>::V v) {
  for (int j = 0; j < k.w; ++j) m[(k.c0 + j) * N + n] = static_cast<T>(Lanes<T>::lane(v, j));
}

// ---------------------------------------------------------------------------------------------
// Forward: one block of channels of one batch row, all L steps.
template <class T, int kN>
void forward_block(const Problem<T>& p, int64_t b, const Block& k, T* y, T* final_state, T* ckpt) {
  using Ln = Lanes<T>;
  using V = typename Ln::V;
  const int64_t N = kN > 0 ? kN : p.N, dim = p.dim, L = p.L;
  const int w = k.w;
  StateVecs<V, kN> h, a_col;
  h.init(N);
  a_col.init(N);
  for (int64_t n = 0; n < N; ++n) {
    a_col[n] = gather_column(p.A, N, k, n);
    h[n] = p.h0 ? gather_column(p.h0 + b * dim * N, N, k, n) : V{};
  }
  const V d_vec = p.D ? Ln::load(p.D + k.c0, w) : V{};
  const V bias = p.bias ? Ln::load(p.bias + k.c0, w) : V{};
  for (int64_t t = 0; t < L; ++t) {
    if (ckpt && t % kChunk == 0) {
      T* dst = ckpt + (b * p.nchunk + t / kChunk) * N * dim + k.c0;
      for (int64_t n = 0; n < N; ++n) Ln::store(dst + n * dim, h[n], w);
    }
    const int64_t off = (b * L + t) * dim + k.c0;
    if (t + kAhead < L) {
      const int64_t ahead = kAhead * dim;
      prefetch_row(p.u, off, ahead);
      prefetch_row(p.delta, off, ahead);
      prefetch_row(p.z, off, ahead);
      prefetch_row(y, off, ahead, true);
    }
    const V uv = Ln::load(p.u + off, w);
    V dt = Ln::load(p.delta + off, w) + bias;
    if (p.softplus) {
      V unused;
      Ln::softplus(dt, dt, unused);
    }
    const V dtu = dt * uv;
    const T* Bt = p.Bt(b, t, k.g);
    const T* Ct = p.Ct(b, t, k.g);
    V acc = d_vec * uv;
    for (int64_t n = 0; n < N; ++n) {
      h[n] = Ln::exp(dt * a_col[n]) * h[n] + dtu * Bt[n];
      acc += h[n] * Ct[n];
    }
    if (p.z) {
      const V zv = Ln::load(p.z + off, w);
      acc *= zv * Ln::sigmoid(zv);
    }
    Ln::store(y + off, acc, w);
  }
  if (final_state)
    for (int64_t n = 0; n < N; ++n) scatter_column(final_state + b * dim * N, N, k, n, h[n]);
}

template <class T, int kN>
void forward(const SelectiveScanInputs& in, const Tensor& y, const Tensor& final_state,
             const Tensor& checkpoints) {
  const Problem<T> p(in);
  T* yp = y.data_ptr<T>();
  T* fp = final_state.defined() ? final_state.data_ptr<T>() : nullptr;
  T* cp = checkpoints.defined() ? checkpoints.data_ptr<T>() : nullptr;
  const int64_t nb = static_cast<int64_t>(p.blocks.size());
  parallel_for(0, p.batch * nb, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) forward_block<T, kN>(p, i / nb, p.blocks[i % nb], yp, fp, cp);
  });
}

// ---------------------------------------------------------------------------------------------
// Backward.
template <class T>
struct BackwardOut {
  T *du, *ddelta, *dz, *dB, *dC;  // dB/dC: this slab's partial sums
  const T* dy;
  const T* dfinal;
  const T* ckpt;
};

// Per-slab accumulators, one entry per block of the slab.
template <class T>
struct SlabState {
  using V = typename Lanes<T>::V;
  std::vector<V> dh;              // [block][N]: the carried gradient of the state
  std::vector<double> dA;         // [block][N][W]
  std::vector<double> dD, dbias;  // [block][W]
};

// Per-thread chunk buffers. The states and decays of a step sit together, so the reverse walk
// reads one stream. dB and dC sum over channels: each step's N vectors are summed across lanes
// at once (a transpose-and-add tree when N = W = 16) into per-step sums, small enough to stay in
// L1, unlike (chunk x N) vectors of lanes.
template <class T>
struct ChunkBuffers {
  using V = typename Lanes<T>::V;
  struct Cell {
    V h;      // state after the step (row 0: before the chunk)
    V decay;  // exp(dt A) of the step
  };
  struct Step {
    V dt, dtu, u, gy, dsp;  // gy: the gradient before the gate; dsp: softplus'
  };
  std::vector<Cell> cells;  // [kChunk + 1][N]; step j of the chunk is row j + 1
  std::vector<Step> steps;  // [kChunk]
  std::vector<V> terms;     // [N]: one step's terms of dB or dC before the lane sum
  std::vector<T> dB, dC;    // [kChunk][N]: sums over the channels of the current group
  explicit ChunkBuffers(int64_t N)
      : cells(static_cast<size_t>((kChunk + 1) * N)),
        steps(kChunk),
        terms(static_cast<size_t>(N)),
        dB(static_cast<size_t>(kChunk * N), T(0)),
        dC(static_cast<size_t>(kChunk * N), T(0)) {}
};

// Lane sums of 16 vectors of 16 lanes: r[i] = sum of v[i]'s lanes. Four levels of pairwise
// shuffles and adds, fed in bit-reversed order so the result comes out in natural order.
template <class Vec>
Vec sum_lanes16(const Vec* v) {
  auto l1 = [](Vec a, Vec b) {
    return __builtin_shufflevector(a, b, 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) +
           __builtin_shufflevector(a, b, 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30,
                                   31);
  };
  auto l2 = [](Vec a, Vec b) {
    return __builtin_shufflevector(a, b, 0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27) +
           __builtin_shufflevector(a, b, 4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30,
                                   31);
  };
  auto l3 = [](Vec a, Vec b) {
    return __builtin_shufflevector(a, b, 0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29) +
           __builtin_shufflevector(a, b, 2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30,
                                   31);
  };
  auto l4 = [](Vec a, Vec b) {
    return __builtin_shufflevector(a, b, 0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14,
                                   30) +
           __builtin_shufflevector(a, b, 1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31);
  };
  const Vec y0 = l2(l1(v[0], v[8]), l1(v[4], v[12])), y1 = l2(l1(v[2], v[10]), l1(v[6], v[14]));
  const Vec y2 = l2(l1(v[1], v[9]), l1(v[5], v[13])), y3 = l2(l1(v[3], v[11]), l1(v[7], v[15]));
  return l4(l3(y0, y1), l3(y2, y3));
}

// out[n] += the lane sum of v[n], n < N.
template <class T>
void add_lane_sums(const typename Lanes<T>::V* v, T* out, int64_t N) {
  if constexpr (std::is_same_v<T, float> && simd::kWidth == 16) {
    if (N == 16) {
      simd::store(out, simd::load(out) + sum_lanes16(v));
      return;
    }
  }
  for (int64_t n = 0; n < N; ++n) out[n] += static_cast<T>(Lanes<T>::sum(v[n]));
}

// One block, one chunk [t0, t0 + len): recompute, then the reverse walk.
template <class T, int kN>
void backward_block_chunk(const Problem<T>& p, const BackwardOut<T>& o, int64_t b, const Block& k,
                          int64_t chunk, ChunkBuffers<T>& buf, typename Lanes<T>::V* dh_carry,
                          double* dA_acc, double* dD_acc, double* dbias_acc) {
  using Ln = Lanes<T>;
  using V = typename Ln::V;
  constexpr int W = Ln::W;
  const int64_t N = kN > 0 ? kN : p.N, dim = p.dim, L = p.L;
  const int64_t t0 = chunk * kChunk, len = std::min(kChunk, L - t0);
  const int w = k.w;
  StateVecs<V, kN> a_col, dh, dA;
  a_col.init(N);
  dh.init(N);
  dA.init(N);
  for (int64_t n = 0; n < N; ++n) a_col[n] = gather_column(p.A, N, k, n);
  const V d_vec = p.D ? Ln::load(p.D + k.c0, w) : V{};
  const V bias = p.bias ? Ln::load(p.bias + k.c0, w) : V{};
  V* terms = buf.terms.data();

  // Recompute the chunk's states and decays, with dC (it needs only forward values and the
  // gradient before the gate) and dz (it needs the ungated output).
  const T* ck = o.ckpt + (b * p.nchunk + chunk) * N * dim + k.c0;
  for (int64_t n = 0; n < N; ++n) buf.cells[n].h = Ln::load(ck + n * dim, w);
  for (int64_t j = 0; j < len; ++j) {
    const int64_t t = t0 + j, off = (b * L + t) * dim + k.c0;
    if (t + kAhead < L) {
      const int64_t ahead = kAhead * dim;
      prefetch_row(p.u, off, ahead);
      prefetch_row(p.delta, off, ahead);
      prefetch_row(p.z, off, ahead);
      prefetch_row(o.dy, off, ahead);
      prefetch_row(o.dz, off, ahead, true);
    }
    const V uv = Ln::load(p.u + off, w);
    V dt = Ln::load(p.delta + off, w) + bias, dsp = V{} + T(1);
    if (p.softplus) Ln::softplus(dt, dt, dsp);
    const V dtu = dt * uv;
    const T* Bt = p.Bt(b, t, k.g);
    const T* Ct = p.Ct(b, t, k.g);
    const auto* prev = &buf.cells[j * N];
    auto* cur = &buf.cells[(j + 1) * N];
    const V dy = Ln::load(o.dy + off, w);
    V gy = dy, zv{}, sz{};
    if (p.z) {
      zv = Ln::load(p.z + off, w);
      sz = Ln::sigmoid(zv);
      gy = dy * zv * sz;
    }
    V y0 = d_vec * uv;
    for (int64_t n = 0; n < N; ++n) {
      const V dec = Ln::exp(dt * a_col[n]), hn = dec * prev[n].h + dtu * Bt[n];
      cur[n].decay = dec;
      cur[n].h = hn;
      y0 += hn * Ct[n];
      terms[n] = gy * hn;
    }
    add_lane_sums<T>(terms, &buf.dC[j * N], N);
    if (p.z && o.dz) Ln::store(o.dz + off, dy * y0 * (sz * (T(1) + zv * (T(1) - sz))), w);
    buf.steps[j] = {dt, dtu, uv, gy, dsp};
  }

  // Reverse walk. dh holds dL/dh_t (from later steps) on entry to step t.
  for (int64_t n = 0; n < N; ++n) {
    dh[n] = dh_carry[n];
    dA[n] = V{};
  }
  V dD = V{}, dbias = V{};
  for (int64_t j = len - 1; j >= 0; --j) {
    const int64_t t = t0 + j, off = (b * L + t) * dim + k.c0;
    if (t - kAhead >= 0) {
      prefetch_row(o.du, off, -kAhead * dim, true);
      prefetch_row(o.ddelta, off, -kAhead * dim, true);
    }
    const T* Bt = p.Bt(b, t, k.g);
    const T* Ct = p.Ct(b, t, k.g);
    const auto& step = buf.steps[j];
    const V dt = step.dt, dtu = step.dtu, uv = step.u, gy = step.gy;
    const auto* prev = &buf.cells[j * N];
    const auto* cur = &buf.cells[(j + 1) * N];
    V du_sum = V{}, ddt = V{};
    for (int64_t n = 0; n < N; ++n) {
      const V g = dh[n] + gy * Ct[n];  // dL/dh_t[n], now including y_t
      terms[n] = g * dtu;
      du_sum += g * Bt[n];
      const V g_prev = g * cur[n].decay;
      const V gh = g_prev * prev[n].h;  // g * exp(dt A) * h_{t-1}
      ddt += gh * a_col[n];
      dA[n] += gh * dt;
      dh[n] = g_prev;
    }
    add_lane_sums<T>(terms, &buf.dB[j * N], N);
    ddt += du_sum * uv;
    if (o.du) Ln::store(o.du + off, du_sum * dt + d_vec * gy, w);
    dD += gy * uv;
    const V ddelta = ddt * step.dsp;
    if (o.ddelta) Ln::store(o.ddelta + off, ddelta, w);
    dbias += ddelta;
  }
  for (int64_t n = 0; n < N; ++n) {
    dh_carry[n] = dh[n];
    for (int j = 0; j < w; ++j) dA_acc[n * W + j] += Ln::lane(dA[n], j);
  }
  for (int j = 0; j < w; ++j) {
    dD_acc[j] += Ln::lane(dD, j);
    dbias_acc[j] += Ln::lane(dbias, j);
  }
}

// Moves the chunk's dB/dC sums of group g into the slab's partials and clears them.
template <class T>
void flush_group(const Problem<T>& p, const BackwardOut<T>& o, int64_t b, int64_t g, int64_t chunk,
                 ChunkBuffers<T>& buf) {
  const int64_t N = p.N, t0 = chunk * kChunk, len = std::min(kChunk, p.L - t0);
  for (int64_t j = 0; j < len; ++j) {
    const int64_t row = ((b * p.L + t0 + j) * p.G + g) * N;
    for (int64_t n = 0; n < N; ++n) {
      if (o.dB) o.dB[row + n] = buf.dB[j * N + n];
      if (o.dC) o.dC[row + n] = buf.dC[j * N + n];
      buf.dB[j * N + n] = T(0);
      buf.dC[j * N + n] = T(0);
    }
  }
}

template <class T, int kN>
void backward(const SelectiveScanInputs& in, const Tensor& checkpoints, const Tensor& dy,
              const Tensor& dfinal_state, const SelectiveScanGrads& gr) {
  using V = typename Lanes<T>::V;
  constexpr int W = Lanes<T>::W;
  const Problem<T> p(in);
  const int64_t N = p.N, dim = p.dim, batch = p.batch;
  const int64_t nb = static_cast<int64_t>(p.blocks.size());
  auto ptr = [](const Tensor& t) { return t.defined() ? t.data_ptr<T>() : nullptr; };

  // Slabs of blocks per batch row: enough work items that threads divide them evenly.
  const int64_t threads = get_num_threads();
  const int64_t slabs =
      std::max<int64_t>(1, std::min<int64_t>(nb, threads / std::gcd(batch, threads)));
  const int64_t bcn = batch * p.L * p.G * N;
  Tensor part;  // [slab][batch][L][G][N] x {dB, dC} when slabs > 1
  if (slabs > 1) {
    part = empty({2, slabs, bcn}, Options(in.u.dtype()));
    std::memset(part.raw_data(), 0, part.nbytes());
  } else {
    for (const Tensor* t : {&gr.dB, &gr.dC})
      if (t->defined()) std::memset(t->raw_data(), 0, t->nbytes());
  }
  // Per batch row: dA, dD, ddelta_bias, summed over rows at the end.
  std::vector<double> dA_rows(static_cast<size_t>(batch * dim * N), 0.0),
      dD_rows(static_cast<size_t>(batch * dim), 0.0),
      dbias_rows(static_cast<size_t>(batch * dim), 0.0);

  parallel_for(0, batch * slabs, 1, [&](int64_t i0, int64_t i1) {
    ChunkBuffers<T> buf(N);
    for (int64_t item = i0; item < i1; ++item) {
      const int64_t b = item / slabs, s = item % slabs;
      const int64_t kb = nb * s / slabs, ke = nb * (s + 1) / slabs, nk = ke - kb;
      BackwardOut<T> o{ptr(gr.du),
                       ptr(gr.ddelta),
                       ptr(gr.dz),
                       slabs > 1 ? part.data_ptr<T>() + s * bcn : ptr(gr.dB),
                       slabs > 1 ? part.data_ptr<T>() + (slabs + s) * bcn : ptr(gr.dC),
                       dy.data_ptr<T>(),
                       ptr(dfinal_state),
                       checkpoints.data_ptr<T>()};
      if (!gr.dB.defined()) o.dB = nullptr;
      if (!gr.dC.defined()) o.dC = nullptr;
      SlabState<T> st;
      st.dh.assign(static_cast<size_t>(nk * N), V{});
      st.dA.assign(static_cast<size_t>(nk * N * W), 0.0);
      st.dD.assign(static_cast<size_t>(nk * W), 0.0);
      st.dbias.assign(static_cast<size_t>(nk * W), 0.0);
      if (o.dfinal)
        for (int64_t i = 0; i < nk; ++i)
          for (int64_t n = 0; n < N; ++n)
            st.dh[i * N + n] = gather_column(o.dfinal + b * dim * N, N, p.blocks[kb + i], n);
      for (int64_t chunk = p.nchunk - 1; chunk >= 0; --chunk) {
        for (int64_t i = 0; i < nk; ++i) {
          const Block& k = p.blocks[kb + i];
          backward_block_chunk<T, kN>(p, o, b, k, chunk, buf, &st.dh[i * N], &st.dA[i * N * W],
                                      &st.dD[i * W], &st.dbias[i * W]);
          if (i + 1 == nk || p.blocks[kb + i + 1].g != k.g) flush_group(p, o, b, k.g, chunk, buf);
        }
      }
      for (int64_t i = 0; i < nk; ++i) {
        const Block& k = p.blocks[kb + i];
        if (gr.dinitial_state.defined())
          for (int64_t n = 0; n < N; ++n)
            scatter_column(gr.dinitial_state.data_ptr<T>() + b * dim * N, N, k, n,
                           st.dh[i * N + n]);
        for (int j = 0; j < k.w; ++j) {
          const int64_t c = k.c0 + j;
          for (int64_t n = 0; n < N; ++n)
            dA_rows[(b * dim + c) * N + n] = st.dA[(i * N + n) * W + j];
          dD_rows[b * dim + c] = st.dD[i * W + j];
          dbias_rows[b * dim + c] = st.dbias[i * W + j];
        }
      }
    }
  });

  if (slabs > 1) {
    const T* pp = part.data_ptr<T>();
    for (int which = 0; which < 2; ++which) {
      const Tensor& dst = which == 0 ? gr.dB : gr.dC;
      if (!dst.defined()) continue;
      T* d = dst.data_ptr<T>();
      for (int64_t i = 0; i < bcn; ++i) {
        double s = 0;
        for (int64_t sl = 0; sl < slabs; ++sl) s += pp[(which * slabs + sl) * bcn + i];
        d[i] = static_cast<T>(s);
      }
    }
  }
  auto sum_rows = [&](const Tensor& dst, const std::vector<double>& rows, int64_t per_row) {
    if (!dst.defined()) return;
    T* d = dst.data_ptr<T>();
    for (int64_t i = 0; i < per_row; ++i) {
      double s = 0;
      for (int64_t b = 0; b < batch; ++b) s += rows[b * per_row + i];
      d[i] = static_cast<T>(s);
    }
  };
  sum_rows(gr.dA, dA_rows, dim * N);
  sum_rows(gr.dD, dD_rows, dim);
  sum_rows(gr.ddelta_bias, dbias_rows, dim);
}

// Runs f.template operator()<T, kN>() with kN = 16 (Mamba's default N, kept in registers) or
// 0 (any N).
template <class F>
void dispatch(const SelectiveScanInputs& in, const char* what, F&& f) {
  const int64_t N = in.A.sizes()[1];
  if (in.u.dtype() == kF32) {
    if (N == 16)
      f.template operator()<float, 16>();
    else
      f.template operator()<float, 0>();
  } else if (in.u.dtype() == kF64) {
    f.template operator()<double, 0>();
  } else {
    fail(what, ": unsupported dtype ", in.u.dtype());
  }
}

}  // namespace

void selective_scan_kernel(const SelectiveScanInputs& in, const Tensor& y,
                           const Tensor& final_state, const Tensor& checkpoints) {
  dispatch(in, "selective_scan",
           [&]<class T, int kN>() { forward<T, kN>(in, y, final_state, checkpoints); });
}

void selective_scan_backward_kernel(const SelectiveScanInputs& in, const Tensor& checkpoints,
                                    const Tensor& dy, const Tensor& dfinal_state,
                                    const SelectiveScanGrads& grads) {
  dispatch(in, "selective_scan_backward",
           [&]<class T, int kN>() { backward<T, kN>(in, checkpoints, dy, dfinal_state, grads); });
}

}  // namespace coil::cpu
