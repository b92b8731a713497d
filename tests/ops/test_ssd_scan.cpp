// ssd_scan (Mamba-2) against a float64 oracle written from the math as plain sequential loops
// (forward, and a hand-derived reverse loop for every gradient), plus the Mamba-1 view of the
// same recurrence, sequence splitting, chunk-size independence, gradcheck and errors.
#include <cmath>
#include <string>
#include <vector>

#include "../../ops/cpu/kernels.h"
#include "test_util.h"

using namespace coil;

namespace {

struct Dims {
  int64_t batch, L, H, P, G, N;
};
struct Flags {
  bool D = false, z = false, bias = false, init = false, softplus = false;
};

// Host values of one problem; empty vectors for absent inputs.
struct Host {
  std::vector<double> x, dt, A, B, C, D, z, bias, init;
};
struct Ref {
  std::vector<double> y, fin, dx, ddt, dA, dB, dC, dD, dz, dbias, dinit;
};

double sigmoid(double v) { return 1.0 / (1.0 + std::exp(-v)); }

// The float64 oracle: h_t = exp(d_t A_h) h_{t-1} + d_t x_t B_t^T per (batch, head), all states
// kept, then the reverse loop of G = dLoss/dh_t written from the chain rule.
Ref oracle(const Dims& d, const Flags& f, const Host& v, const std::vector<double>& dy,
           const std::vector<double>& dfin) {
  const int64_t Bt = d.batch, L = d.L, H = d.H, P = d.P, G = d.G, N = d.N, hpg = H / G;
  auto xi = [&](int64_t b, int64_t t, int64_t h, int64_t p) {
    return ((b * L + t) * H + h) * P + p;
  };
  auto ti = [&](int64_t b, int64_t t, int64_t h) { return (b * L + t) * H + h; };
  auto bi = [&](int64_t b, int64_t t, int64_t g, int64_t n) {
    return ((b * L + t) * G + g) * N + n;
  };
  auto si = [&](int64_t b, int64_t h, int64_t p, int64_t n) {
    return ((b * H + h) * P + p) * N + n;
  };
  Ref r;
  r.y.assign(Bt * L * H * P, 0);
  r.fin.assign(Bt * H * P * N, 0);
  r.dx.assign(r.y.size(), 0);
  r.ddt.assign(Bt * L * H, 0);
  r.dA.assign(H, 0);
  r.dB.assign(Bt * L * G * N, 0);
  r.dC.assign(r.dB.size(), 0);
  r.dD.assign(H, 0);
  r.dz.assign(r.y.size(), 0);
  r.dbias.assign(H, 0);
  r.dinit.assign(r.fin.size(), 0);
  for (int64_t b = 0; b < Bt; ++b) {
    for (int64_t h = 0; h < H; ++h) {
      const int64_t g = h / hpg;
      const double Dh = f.D ? v.D[h] : 0;
      // states[t + 1] = h_t, states[0] = initial state; each P x N
      std::vector<std::vector<double>> S(L + 1, std::vector<double>(P * N, 0));
      std::vector<double> delta(L), dsp(L), decay(L), y0(L * P);
      if (f.init)
        for (int64_t p = 0; p < P; ++p)
          for (int64_t n = 0; n < N; ++n) S[0][p * N + n] = v.init[si(b, h, p, n)];
      for (int64_t t = 0; t < L; ++t) {
        double pre = v.dt[ti(b, t, h)] + (f.bias ? v.bias[h] : 0);
        delta[t] = f.softplus ? (pre > 20 ? pre : std::log1p(std::exp(pre))) : pre;
        dsp[t] = f.softplus ? (pre > 20 ? 1 : sigmoid(pre)) : 1;
        decay[t] = std::exp(delta[t] * v.A[h]);
        for (int64_t p = 0; p < P; ++p) {
          double acc = 0;
          for (int64_t n = 0; n < N; ++n) {
            double s =
                decay[t] * S[t][p * N + n] + delta[t] * v.B[bi(b, t, g, n)] * v.x[xi(b, t, h, p)];
            S[t + 1][p * N + n] = s;
            acc += s * v.C[bi(b, t, g, n)];
          }
          y0[t * P + p] = acc + Dh * v.x[xi(b, t, h, p)];
          double out = y0[t * P + p];
          if (f.z) out *= v.z[xi(b, t, h, p)] * sigmoid(v.z[xi(b, t, h, p)]);
          r.y[xi(b, t, h, p)] = out;
        }
      }
      for (int64_t p = 0; p < P; ++p)
        for (int64_t n = 0; n < N; ++n) r.fin[si(b, h, p, n)] = S[L][p * N + n];

      std::vector<double> Gm(P * N);
      for (int64_t p = 0; p < P; ++p)
        for (int64_t n = 0; n < N; ++n) Gm[p * N + n] = dfin.empty() ? 0 : dfin[si(b, h, p, n)];
      for (int64_t t = L - 1; t >= 0; --t) {
        std::vector<double> dy0(P);
        for (int64_t p = 0; p < P; ++p) {
          const double g_out = dy[xi(b, t, h, p)];
          if (f.z) {
            const double zz = v.z[xi(b, t, h, p)], s = sigmoid(zz);
            dy0[p] = g_out * zz * s;
            r.dz[xi(b, t, h, p)] = g_out * y0[t * P + p] * s * (1 + zz * (1 - s));
          } else {
            dy0[p] = g_out;
          }
          r.dD[h] += dy0[p] * v.x[xi(b, t, h, p)];
        }
        for (int64_t p = 0; p < P; ++p)
          for (int64_t n = 0; n < N; ++n) Gm[p * N + n] += dy0[p] * v.C[bi(b, t, g, n)];
        for (int64_t n = 0; n < N; ++n)
          for (int64_t p = 0; p < P; ++p) r.dC[bi(b, t, g, n)] += S[t + 1][p * N + n] * dy0[p];
        double dd = 0;
        for (int64_t p = 0; p < P; ++p) {
          const double xp = v.x[xi(b, t, h, p)];
          double dxp = Dh * dy0[p];
          for (int64_t n = 0; n < N; ++n) {
            const double gpn = Gm[p * N + n], bn = v.B[bi(b, t, g, n)];
            r.dB[bi(b, t, g, n)] += gpn * delta[t] * xp;
            dxp += gpn * delta[t] * bn;
            dd += gpn * (v.A[h] * decay[t] * S[t][p * N + n] + bn * xp);
            r.dA[h] += gpn * delta[t] * decay[t] * S[t][p * N + n];
          }
          r.dx[xi(b, t, h, p)] = dxp;
        }
        r.ddt[ti(b, t, h)] = dd * dsp[t];
        r.dbias[h] += dd * dsp[t];
        for (double& gpn : Gm) gpn *= decay[t];
      }
      for (int64_t p = 0; p < P; ++p)
        for (int64_t n = 0; n < N; ++n) r.dinit[si(b, h, p, n)] = Gm[p * N + n];
    }
  }
  return r;
}

// ||got - ref|| / ||ref|| (absolute when ref is zero).
double rel_err(const Tensor& got, const std::vector<double>& ref) {
  std::vector<double> g = ct::vals(got);
  REQUIRE(g.size() == ref.size());
  double num = 0, den = 0;
  for (size_t i = 0; i < g.size(); ++i) {
    num += (g[i] - ref[i]) * (g[i] - ref[i]);
    den += ref[i] * ref[i];
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}
void check_rel(const Tensor& got, const std::vector<double>& ref, double tol,
               const std::string& what) {
  REQUIRE_MESSAGE(got.defined(), what << ": undefined");
  double e = rel_err(got, ref);
  CHECK_MESSAGE(e < tol, what << ": relative error " << e << " (tolerance " << tol << ")");
}

// Random inputs in the ranges Mamba-2 sees (A < 0; dt positive unless softplus follows).
struct Problem {
  Dims d;
  Flags f;
  Tensor x, dt, A, B, C, D, z, bias, init;
  Host host() const {
    auto hv = [](const Tensor& t) { return t.defined() ? ct::vals(t) : std::vector<double>(); };
    return {hv(x), hv(dt), hv(A), hv(B), hv(C), hv(D), hv(z), hv(bias), hv(init)};
  }
  TensorList leaves() const { return {x, dt, A, B, C, D, z, bias, init}; }
};
Problem make_problem(const Dims& d, const Flags& f, DType t, bool noncontig = false) {
  Problem pr{d, f, {}, {}, {}, {}, {}, {}, {}, {}, {}};
  auto leaf = [&](const Shape& s, double lo, double hi) {
    return ct::rnd(s, t, lo, hi, noncontig).requires_grad_();
  };
  pr.x = leaf({d.batch, d.L, d.H, d.P}, -1, 1);
  pr.dt = f.softplus ? leaf({d.batch, d.L, d.H}, -2, 1) : leaf({d.batch, d.L, d.H}, 0.02, 0.4);
  pr.A = leaf({d.H}, -1.5, -0.1);
  pr.B = leaf({d.batch, d.L, d.G, d.N}, -1, 1);
  pr.C = leaf({d.batch, d.L, d.G, d.N}, -1, 1);
  if (f.D) pr.D = leaf({d.H}, -1, 1);
  if (f.z) pr.z = leaf({d.batch, d.L, d.H, d.P}, -2, 2);
  if (f.bias) pr.bias = f.softplus ? leaf({d.H}, -0.5, 0.5) : leaf({d.H}, 0, 0.2);
  if (f.init) pr.init = leaf({d.batch, d.H, d.P, d.N}, -1, 1);
  return pr;
}
SsdScanOptions options(const Problem& pr, bool final_state) {
  SsdScanOptions o;
  o.D = pr.D;
  o.z = pr.z;
  o.dt_bias = pr.bias;
  o.initial_state = pr.init;
  o.dt_softplus = pr.f.softplus;
  o.return_final_state = final_state;
  return o;
}

// Runs ssd_scan and backward with (dy, dfin) and checks every output and gradient.
void check_against_oracle(const Problem& pr, int64_t chunk, bool want_final, double tol,
                          const std::string& what) {
  CAPTURE(what);
  const Dims& d = pr.d;
  DType t = pr.x.dtype();
  Tensor dy = ct::rnd({d.batch, d.L, d.H, d.P}, t, -1, 1);
  Tensor dfin = want_final ? ct::rnd({d.batch, d.H, d.P, d.N}, t, -1, 1) : Tensor();
  auto [y, fin] = ssd_scan(pr.x, pr.dt, pr.A, pr.B, pr.C, chunk, options(pr, want_final));
  CHECK(y.dtype() == t);
  CHECK(fin.defined() == want_final);
  Ref r =
      oracle(d, pr.f, pr.host(), ct::vals(dy), want_final ? ct::vals(dfin) : std::vector<double>());
  check_rel(y, r.y, tol, what + " y");
  if (want_final) {
    check_rel(fin, r.fin, tol, what + " final_state");
    backward({y, fin}, {dy, dfin});
  } else {
    backward({y}, {dy});
  }
  check_rel(pr.x.grad(), r.dx, tol, what + " dx");
  check_rel(pr.dt.grad(), r.ddt, tol, what + " ddt");
  check_rel(pr.A.grad(), r.dA, tol, what + " dA");
  check_rel(pr.B.grad(), r.dB, tol, what + " dB");
  check_rel(pr.C.grad(), r.dC, tol, what + " dC");
  if (pr.f.D) check_rel(pr.D.grad(), r.dD, tol, what + " dD");
  if (pr.f.z) check_rel(pr.z.grad(), r.dz, tol, what + " dz");
  if (pr.f.bias) check_rel(pr.bias.grad(), r.dbias, tol, what + " ddt_bias");
  if (pr.f.init) check_rel(pr.init.grad(), r.dinit, tol, what + " dinitial_state");
}

std::string describe(const Dims& d, const Flags& f, DType t, int64_t chunk) {
  std::string s = std::string(dtype_name(t)) + " b" + std::to_string(d.batch) + " L" +
                  std::to_string(d.L) + " H" + std::to_string(d.H) + " P" + std::to_string(d.P) +
                  " G" + std::to_string(d.G) + " N" + std::to_string(d.N) + " chunk" +
                  std::to_string(chunk);
  if (f.D) s += " D";
  if (f.z) s += " z";
  if (f.bias) s += " bias";
  if (f.init) s += " init";
  if (f.softplus) s += " softplus";
  return s;
}

const Flags kAllOn{true, true, true, true, true};

}  // namespace

TEST_SUITE("ops.ssd_scan") {
  TEST_CASE("forward, final state and every gradient match the float64 oracle") {
    manual_seed(1);
    const Dims dims[] = {{2, 19, 3, 5, 1, 7},
                         {2, 19, 3, 5, 3, 7},
                         {1, 1, 3, 1, 3, 1},
                         {2, 33, 4, 16, 2, 16},
                         {1, 24, 2, 80, 1, 136},
                         {1, 40, 2, 64, 1, 128},
                         {2, 9, 2, 1, 1, 9},
                         {1, 12, 1, 7, 1, 1},
                         // L = 1 (decoding's own path): whole SIMD vectors of N, and a tail
                         {2, 1, 4, 16, 2, 32},
                         {1, 1, 3, 5, 1, 37}};
    std::vector<Flags> flags = {Flags{}, kAllOn};
    for (int i = 0; i < 5; ++i) {
      Flags f;
      (i == 0 ? f.D : i == 1 ? f.z : i == 2 ? f.bias : i == 3 ? f.init : f.softplus) = true;
      flags.push_back(f);
    }
    const int64_t chunks[] = {1, 7, 64, 256};
    int k = 0;
    for (const Dims& d : dims)
      for (const Flags& f : flags)
        for (DType t : {kF32, kF64}) {
          int64_t chunk = chunks[k % 4];
          bool want_final = k % 3 != 1;
          ++k;
          Problem pr = make_problem(d, f, t, /*noncontig=*/k % 2 == 0);
          check_against_oracle(pr, chunk, want_final, t == kF32 ? 1e-5 : 1e-10,
                               describe(d, f, t, chunk));
        }
  }

  TEST_CASE("chunk sizes 1, 7, 64, 256 give the same results") {
    manual_seed(2);
    for (int i = 0; i < 3; ++i) {
      const DType t = i == 1 ? kF64 : kF32;
      const Dims d = i < 2 ? Dims{2, 300, 3, 6, 1, 10} : Dims{1, 200, 2, 64, 1, 128};
      Problem pr = make_problem(d, kAllOn, t);
      Tensor dy = ct::rnd({d.batch, d.L, d.H, d.P}, t, -1, 1);
      Tensor dfin = ct::rnd({d.batch, d.H, d.P, d.N}, t, -1, 1);
      Ref r = oracle(d, pr.f, pr.host(), ct::vals(dy), ct::vals(dfin));
      const std::vector<double>* refs[] = {&r.y,  &r.fin, &r.dx, &r.ddt,   &r.dA,   &r.dB,
                                           &r.dC, &r.dD,  &r.dz, &r.dbias, &r.dinit};
      const char* names[] = {"y",  "final", "dx", "ddt",      "dA",   "dB",
                             "dC", "dD",    "dz", "ddt_bias", "dinit"};
      std::vector<TensorList> runs;
      for (int64_t chunk : {1, 7, 64, 256}) {
        for (Tensor l : pr.leaves()) l.set_grad(Tensor());
        auto [y, fin] = ssd_scan(pr.x, pr.dt, pr.A, pr.B, pr.C, chunk, options(pr, true));
        backward({y, fin}, {dy, dfin});
        TensorList outs{y, fin};
        for (const Tensor& l : pr.leaves()) outs.push_back(l.grad());
        for (size_t i = 0; i < outs.size(); ++i)
          check_rel(outs[i], *refs[i], t == kF32 ? 1e-5 : 1e-10,
                    std::string(names[i]) + " chunk " + std::to_string(chunk));
        runs.push_back(outs);
      }
      // The CPU kernels chunk the work their own way (ops/cpu/ssd_scan.cpp): every output is
      // bitwise the same.
      for (size_t c = 1; c < runs.size(); ++c)
        for (size_t i = 0; i < runs[0].size(); ++i)
          CHECK_MESSAGE(ct::vals(runs[c][i]) == ct::vals(runs[0][i]), std::string(names[i]));
    }
  }

  TEST_CASE("equals the Mamba-1 recurrence with A over (headdim, N) and dt over headdim") {
    manual_seed(3);
    const Dims d{2, 21, 4, 3, 2, 5};
    Problem pr = make_problem(d, kAllOn, kF64);
    auto [y, fin] = ssd_scan(pr.x, pr.dt, pr.A, pr.B, pr.C, 8, options(pr, true));
    // A Mamba-1 loop over channels c = h * headdim + p, each with its own (N) state.
    Host v = pr.host();
    const int64_t dim = d.H * d.P, L = d.L, N = d.N, G = d.G;
    std::vector<double> y1(d.batch * L * dim), f1(d.batch * dim * N);
    for (int64_t b = 0; b < d.batch; ++b)
      for (int64_t c = 0; c < dim; ++c) {
        const int64_t h = c / d.P, g = c / (dim / G);
        std::vector<double> A1(N, v.A[h]), state(N);
        for (int64_t n = 0; n < N; ++n) state[n] = v.init[(b * dim + c) * N + n];
        for (int64_t t = 0; t < L; ++t) {
          double u = v.x[(b * L + t) * dim + c];
          double dl = v.dt[(b * L + t) * d.H + h] + v.bias[h];
          dl = dl > 20 ? dl : std::log1p(std::exp(dl));
          double acc = 0;
          for (int64_t n = 0; n < N; ++n) {
            const int64_t bn = ((b * L + t) * G + g) * N + n;
            state[n] = std::exp(dl * A1[n]) * state[n] + dl * v.B[bn] * u;
            acc += v.C[bn] * state[n];
          }
          double zz = v.z[(b * L + t) * dim + c];
          y1[(b * L + t) * dim + c] = (acc + v.D[h] * u) * zz * sigmoid(zz);
        }
        for (int64_t n = 0; n < N; ++n) f1[(b * dim + c) * N + n] = state[n];
      }
    check_rel(y, y1, 1e-12, "y vs Mamba-1 loop");
    check_rel(fin, f1, 1e-12, "final_state vs Mamba-1 loop");
  }

  TEST_CASE("equals coil::selective_scan on the Mamba-1 view, gradients included") {
    manual_seed(4);
    const Dims d{2, 17, 4, 3, 2, 5};
    Problem pr = make_problem(d, kAllOn, kF64);
    Tensor dy = ct::rnd({d.batch, d.L, d.H, d.P}, kF64, -1, 1);
    Tensor dfin = ct::rnd({d.batch, d.H, d.P, d.N}, kF64, -1, 1);
    auto [y, fin] = ssd_scan(pr.x, pr.dt, pr.A, pr.B, pr.C, 4, options(pr, true));
    backward({y, fin}, {dy, dfin});
    TensorList g2;
    for (const Tensor& l : pr.leaves()) g2.push_back(l.grad());

    Problem m = pr;  // same values, fresh leaves
    for (Tensor* t : {&m.x, &m.dt, &m.A, &m.B, &m.C, &m.D, &m.z, &m.bias, &m.init})
      *t = t->detach().clone().requires_grad_();
    const int64_t dim = d.H * d.P;
    SelectiveScanOptions o;
    o.D = repeat_interleave(m.D, d.P, 0);
    o.z = m.z.reshape({d.batch, d.L, dim});
    o.delta_bias = repeat_interleave(m.bias, d.P, 0);
    o.initial_state = m.init.reshape({d.batch, dim, d.N});
    o.delta_softplus = true;
    o.return_final_state = true;
    Tensor A1 = repeat_interleave(m.A, d.P, 0).unsqueeze(1).expand({dim, d.N});
    auto [y1, f1] = selective_scan(m.x.reshape({d.batch, d.L, dim}),
                                   repeat_interleave(m.dt, d.P, 2), A1, m.B, m.C, o);
    check_rel(y1.reshape(y.sizes()), ct::vals(y), 1e-12, "y vs selective_scan");
    check_rel(f1.reshape(fin.sizes()), ct::vals(fin), 1e-12, "final vs selective_scan");
    backward({y1, f1}, {dy.reshape(y1.sizes()), dfin.reshape(f1.sizes())});
    const char* names[] = {"dx", "ddt", "dA", "dB", "dC", "dD", "dz", "ddt_bias", "dinit"};
    TensorList leaves = m.leaves();
    for (size_t i = 0; i < leaves.size(); ++i)
      check_rel(leaves[i].grad(), ct::vals(g2[i]), 1e-10,
                std::string(names[i]) + " vs selective_scan");
  }

  TEST_CASE("splitting the sequence and passing the final state equals the whole") {
    manual_seed(5);
    for (DType t : {kF64, kF32}) {
      const Dims d{2, 30, 3, 4, 1, 6};
      Problem pr = make_problem(d, kAllOn, t);
      Tensor dy = ct::rnd({d.batch, d.L, d.H, d.P}, t, -1, 1);
      Tensor dfin = ct::rnd({d.batch, d.H, d.P, d.N}, t, -1, 1);
      auto [y, fin] = ssd_scan(pr.x, pr.dt, pr.A, pr.B, pr.C, 8, options(pr, true));
      backward({y, fin}, {dy, dfin});
      TensorList whole{y, fin};
      for (Tensor l : pr.leaves()) {
        whole.push_back(l.grad());
        l.set_grad(Tensor());
      }
      const int64_t cut = 13;
      auto part = [&](const Tensor& v, int64_t lo, int64_t len) {
        return v.defined() ? v.narrow(1, lo, len) : v;
      };
      SsdScanOptions o1 = options(pr, true), o2 = options(pr, true);
      o1.z = part(pr.z, 0, cut);
      auto [ya, fa] = ssd_scan(part(pr.x, 0, cut), part(pr.dt, 0, cut), pr.A, part(pr.B, 0, cut),
                               part(pr.C, 0, cut), 8, o1);
      o2.z = part(pr.z, cut, d.L - cut);
      o2.initial_state = fa;
      auto [yb, fb] = ssd_scan(part(pr.x, cut, d.L - cut), part(pr.dt, cut, d.L - cut), pr.A,
                               part(pr.B, cut, d.L - cut), part(pr.C, cut, d.L - cut), 8, o2);
      Tensor ys = cat({ya, yb}, 1);
      backward({ys, fb}, {dy, dfin});
      double tol = t == kF32 ? 1e-5 : 1e-12;
      check_rel(ys, ct::vals(whole[0]), tol, "y");
      check_rel(fb, ct::vals(whole[1]), tol, "final_state");
      TensorList leaves = pr.leaves();
      for (size_t i = 0; i < leaves.size(); ++i)
        check_rel(leaves[i].grad(), ct::vals(whole[i + 2]), tol,
                  "gradient of input " + std::to_string(i));
    }
  }

  TEST_CASE("gradcheck in float64 for every input") {
    manual_seed(6);
    GradcheckCase c = op_info("ssd_scan").gradcheck();
    ct::check_gradcheck(c.fn, c.inputs);
    for (bool softplus : {false, true}) {
      Flags f = kAllOn;
      f.softplus = softplus;
      Problem pr = make_problem({2, 6, 4, 2, 2, 3}, f, kF64);
      ct::check_gradcheck(
          [&](const TensorList& v) {
            const SsdScanOptions o = ct::ssd_options(v, softplus);
            auto [y, fin] = ssd_scan(v[0], v[1], v[2], v[3], v[4], 4, o);
            return cat({y.flatten(), fin.flatten()}, 0);
          },
          pr.leaves());
    }
    // Only some inputs, no final state: the rest are held fixed.
    Problem pr = make_problem({1, 5, 2, 3, 1, 2}, Flags{}, kF64);
    pr.x = pr.x.detach();
    ct::check_gradcheck(
        [&](const TensorList& v) { return ssd_scan(pr.x, v[0], v[1], v[2], v[3], 2).first; },
        {pr.dt, pr.A, pr.B, pr.C});
  }

  TEST_CASE("bf16 inputs compute in f32 and come back in bf16; many threads agree") {
    manual_seed(7);
    Problem pr = make_problem({2, 40, 4, 16, 2, 32}, kAllOn, kF32);
    auto [y32, f32s] = ssd_scan(pr.x, pr.dt, pr.A, pr.B, pr.C, 16, options(pr, true));
    Problem hb = pr;
    for (Tensor* t : {&hb.x, &hb.dt, &hb.B, &hb.C, &hb.z, &hb.init})
      *t = t->detach().to(kBF16).requires_grad_();
    auto [yb, fbs] = ssd_scan(hb.x, hb.dt, hb.A, hb.B, hb.C, 16, options(hb, true));
    CHECK(yb.dtype() == kBF16);
    CHECK(fbs.dtype() == kBF16);
    CHECK(rel_err(yb, ct::vals(y32)) < 0.05);
    (yb.to(kF32).sum() + fbs.to(kF32).sum()).backward();
    CHECK(hb.x.grad().dtype() == kBF16);
    CHECK(hb.A.grad().dtype() == kF32);

    // The thread count changes the split of the work only.
    int nt = get_num_threads();
    Tensor dy = ct::rnd(y32.sizes(), kF32, -1, 1);
    TensorList per_threads[2];
    for (int i = 0; i < 2; ++i) {
      set_num_threads(i == 0 ? 1 : 3);
      for (Tensor l : pr.leaves()) l.set_grad(Tensor());
      auto [y, f] = ssd_scan(pr.x, pr.dt, pr.A, pr.B, pr.C, 16, options(pr, false));
      backward({y}, {dy});
      per_threads[i] = {y};
      for (const Tensor& l : pr.leaves()) per_threads[i].push_back(l.grad());
    }
    set_num_threads(nt);
    for (size_t i = 0; i < per_threads[0].size(); ++i) {
      CAPTURE(i);
      CHECK(rel_err(per_threads[1][i], ct::vals(per_threads[0][i])) < 1e-6);
    }
  }

  TEST_CASE("empty sequence passes the initial state through") {
    Tensor x = zeros({2, 0, 2, 3}), dt = zeros({2, 0, 2}), A = -ones({2});
    Tensor B = zeros({2, 0, 1, 4});
    SsdScanOptions o;
    o.initial_state = ct::rnd({2, 2, 3, 4});
    o.return_final_state = true;
    auto [y, fin] = ssd_scan(x, dt, A, B, B, 4, o);
    CHECK(y.sizes() == Shape{2, 0, 2, 3});
    CHECK(ct::vals(fin) == ct::vals(o.initial_state));
  }

  TEST_CASE("the CPU backward recomputes the states a forward did not keep, to the bit") {
    for (DType t : {kF32, kF64}) {
      SsdScanInputs in;
      in.x = ct::rnd({2, 150, 2, 16}, t);  // three chunks of the backward, the last short
      in.dt = ct::rnd({2, 150, 2}, t, -2, 1);
      in.A = ct::rnd({2}, t, -1.5, -0.1);
      in.B = ct::rnd({2, 150, 1, 8}, t);
      in.C = ct::rnd({2, 150, 1, 8}, t);
      in.D = ct::rnd({2}, t);
      in.z = ct::rnd({2, 150, 2, 16}, t);
      in.dt_bias = ct::rnd({2}, t);
      in.initial_state = ct::rnd({2, 2, 16, 8}, t);
      in.dt_softplus = true;
      SsdScanForward f;
      f.y = empty(in.x.sizes(), t);
      f.y_pre = empty(in.x.sizes(), t);
      f.keep_states = true;
      cpu::ssd_scan_kernel(in, &f, nullptr);
      REQUIRE(f.states.defined());
      std::vector<std::vector<double>> got[2];
      for (int keep = 0; keep < 2; ++keep) {
        SsdScanBackward b;
        b.y_pre = f.y_pre;
        if (keep) b.states = f.states;
        for (Tensor* g : {&b.dx, &b.dz}) *g = empty(in.x.sizes(), t);
        b.ddt = empty(in.dt.sizes(), t);
        b.dA = empty({2}, t);
        b.dD = empty({2}, t);
        b.ddt_bias = empty({2}, t);
        b.dB = empty(in.B.sizes(), t);
        b.dC = empty(in.C.sizes(), t);
        b.dinitial_state = empty({2, 2, 16, 8}, t);
        manual_seed(5);  // the same dy and dfinal_state both times
        b.dy = ct::rnd(in.x.sizes(), t);
        b.dfinal_state = ct::rnd({2, 2, 16, 8}, t);
        cpu::ssd_scan_kernel(in, nullptr, &b);
        for (const Tensor& g :
             {b.dx, b.ddt, b.dA, b.dB, b.dC, b.dD, b.dz, b.ddt_bias, b.dinitial_state})
          got[keep].push_back(ct::vals(g));
      }
      for (size_t i = 0; i < got[0].size(); ++i) CHECK(got[0][i] == got[1][i]);
    }
  }

  TEST_CASE("no heads or no batch: the backward writes zeros and divides by nothing") {
    // (a rank of a head-sharded scan can hold no heads)
    for (const Shape& xs : {Shape{2, 5, 0, 3}, Shape{0, 5, 2, 3}}) {
      const int64_t b = xs[0], H = xs[2];
      Tensor x = ct::rnd(xs, kF32).requires_grad_(), dt = ct::rnd({b, 5, H}, kF32).requires_grad_();
      Tensor A = (-ones({H})).requires_grad_();
      Tensor B = ct::rnd({b, 5, 1, 4}, kF32).requires_grad_(),
             C = ct::rnd({b, 5, 1, 4}, kF32).requires_grad_();
      Tensor y = ssd_scan(x, dt, A, B, C, 4).first;
      (y.sum() + B.sum() * 0 + C.sum() * 0).backward();
      CHECK(ct::vals(B.grad()) == std::vector<double>(B.numel(), 0.0));
      CHECK(ct::vals(C.grad()) == std::vector<double>(C.numel(), 0.0));
      CHECK(x.grad().sizes() == xs);
    }
  }

  TEST_CASE("bad inputs name the op and the argument") {
    Tensor x = zeros({2, 5, 4, 3}), dt = zeros({2, 5, 4}), A = zeros({4});
    Tensor B = zeros({2, 5, 2, 6}), C = zeros({2, 5, 2, 6});
    ct::check_error(
        [&] {
          ssd_scan(x, zeros({2, 6, 4}), A, B, C, 4);
        },
        {"ssd_scan", "dt", "[2, 6, 4]"});
    ct::check_error([&] { ssd_scan(x, dt, zeros({4, 1}), B, C, 4); }, {"ssd_scan", "A", "(heads)"});
    ct::check_error(
        [&] {
          ssd_scan(x, dt, A, zeros({2, 5, 3, 6}), zeros({2, 5, 3, 6}), 4);
        },
        {"ssd_scan", "heads (4)", "groups (3)"});
    ct::check_error([&] { ssd_scan(x, dt, A, B, zeros({2, 5, 2, 5}), 4); }, {"ssd_scan", "C"});
    ct::check_error([&] { ssd_scan(x, dt, A, zeros({2, 4, 2, 6}), C, 4); }, {"ssd_scan", "B"});
    ct::check_error([&] { ssd_scan(x, dt, A, B, C, 0); }, {"ssd_scan", "chunk_size", "0"});
    ct::check_error([&] { ssd_scan(x, dt, A, B, C, -3); }, {"ssd_scan", "chunk_size", "-3"});
    ct::check_error([&] { ssd_scan(zeros({2, 5, 12}), dt, A, B, C, 4); }, {"ssd_scan", "x"});
    SsdScanOptions o;
    o.initial_state = zeros({2, 4, 6, 3});
    ct::check_error([&] { ssd_scan(x, dt, A, B, C, 4, o); }, {"ssd_scan", "initial_state"});
    o = {};
    o.D = zeros({3});
    ct::check_error([&] { ssd_scan(x, dt, A, B, C, 4, o); }, {"ssd_scan", "D"});
    o = {};
    o.z = zeros({2, 5, 4, 2});
    ct::check_error([&] { ssd_scan(x, dt, A, B, C, 4, o); }, {"ssd_scan", "z"});
    o = {};
    o.dt_bias = zeros({5});
    ct::check_error([&] { ssd_scan(x, dt, A, B, C, 4, o); }, {"ssd_scan", "dt_bias"});
    ct::check_error([&] { ssd_scan(x, dt.to(kI64), A, B, C, 4); }, {"ssd_scan", "dt", "floating"});
  }
}
