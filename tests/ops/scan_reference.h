// Float64 oracle of Mamba-1's selective scan (ops/scan.h, MATH.md section 1): the recurrence as
// plain sequential loops, one channel at a time, with a hand-derived reverse loop for the
// gradients. Written from the math, independent of coil's kernels; header-only, on
// std::vector<double> with explicit sizes, so any test (or benchmark) can reuse it.
//
//   d_t = delta_t + delta_bias, then softplus (threshold 20) if delta_softplus
//   h_t = exp(d_t A) h_{t-1} + d_t B_t u_t;  y_t = C_t h_t + D u_t;  y_t *= silu(z_t) if z
#pragma once
#include <cmath>
#include <cstdint>
#include <vector>

namespace scan_ref {

// Layouts, row-major: u, delta, z (batch, L, dim); A (dim, N); B, C (batch, L, groups, N);
// D, delta_bias (dim); initial_state (batch, dim, N). Channel c reads group c / (dim / groups).
// An empty optional vector means the input is absent.
struct SelectiveScanProblem {
  int64_t batch = 1, L = 1, dim = 1, N = 1, groups = 1;
  std::vector<double> u, delta, A, B, C;
  std::vector<double> D, z, delta_bias, initial_state;
  bool delta_softplus = false;
};

struct SelectiveScanResult {
  std::vector<double> y;            // (batch, L, dim)
  std::vector<double> final_state;  // (batch, dim, N)
};

// Gradients shaped like their inputs; empty for absent optional inputs.
struct SelectiveScanGradients {
  std::vector<double> du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dinitial_state;
};

namespace detail {
inline double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

// Index helpers for one problem.
struct Ix {
  const SelectiveScanProblem& p;
  int64_t tok(int64_t b, int64_t t, int64_t c) const { return (b * p.L + t) * p.dim + c; }
  int64_t bc(int64_t b, int64_t t, int64_t c, int64_t n) const {
    const int64_t g = c / (p.dim / p.groups);
    return ((b * p.L + t) * p.groups + g) * p.N + n;
  }
  int64_t state(int64_t b, int64_t c, int64_t n) const { return (b * p.dim + c) * p.N + n; }
};

// The step size of token (b, t), channel c, before and after softplus.
inline void step_size(const SelectiveScanProblem& p, int64_t i_tok, int64_t c, double& pre,
                      double& dt) {
  pre = p.delta[i_tok] + (p.delta_bias.empty() ? 0.0 : p.delta_bias[c]);
  dt = p.delta_softplus ? (pre > 20 ? pre : std::log1p(std::exp(pre))) : pre;
}

// States h_0 .. h_L of channel c of row b ((L + 1) x N, h_0 the initial state) and the ungated
// outputs y0_t.
inline void channel_states(const SelectiveScanProblem& p, int64_t b, int64_t c,
                           std::vector<double>& h, std::vector<double>& y0) {
  const Ix ix{p};
  h.assign(static_cast<size_t>((p.L + 1) * p.N), 0.0);
  y0.assign(static_cast<size_t>(p.L), 0.0);
  if (!p.initial_state.empty())
    for (int64_t n = 0; n < p.N; ++n) h[n] = p.initial_state[ix.state(b, c, n)];
  for (int64_t t = 0; t < p.L; ++t) {
    const int64_t i = ix.tok(b, t, c);
    double pre, dt;
    step_size(p, i, c, pre, dt);
    double acc = p.D.empty() ? 0.0 : p.D[c] * p.u[i];
    for (int64_t n = 0; n < p.N; ++n) {
      const double decay = std::exp(dt * p.A[c * p.N + n]);
      const double hn = decay * h[t * p.N + n] + dt * p.B[ix.bc(b, t, c, n)] * p.u[i];
      h[(t + 1) * p.N + n] = hn;
      acc += p.C[ix.bc(b, t, c, n)] * hn;
    }
    y0[t] = acc;
  }
}
}  // namespace detail

inline SelectiveScanResult selective_scan_forward(const SelectiveScanProblem& p) {
  const detail::Ix ix{p};
  SelectiveScanResult r;
  r.y.assign(static_cast<size_t>(p.batch * p.L * p.dim), 0.0);
  r.final_state.assign(static_cast<size_t>(p.batch * p.dim * p.N), 0.0);
  std::vector<double> h, y0;
  for (int64_t b = 0; b < p.batch; ++b)
    for (int64_t c = 0; c < p.dim; ++c) {
      detail::channel_states(p, b, c, h, y0);
      for (int64_t t = 0; t < p.L; ++t) {
        const int64_t i = ix.tok(b, t, c);
        double y = y0[t];
        if (!p.z.empty()) y *= p.z[i] * detail::sigmoid(p.z[i]);
        r.y[i] = y;
      }
      for (int64_t n = 0; n < p.N; ++n) r.final_state[ix.state(b, c, n)] = h[p.L * p.N + n];
    }
  return r;
}

// Gradients of sum(y * dy) + sum(final_state * dfinal); dfinal may be empty (zero).
inline SelectiveScanGradients selective_scan_backward(const SelectiveScanProblem& p,
                                                      const std::vector<double>& dy,
                                                      const std::vector<double>& dfinal) {
  const detail::Ix ix{p};
  const int64_t N = p.N;
  auto zeros = [](size_t n) { return std::vector<double>(n, 0.0); };
  SelectiveScanGradients g;
  g.du = zeros(p.u.size());
  g.ddelta = zeros(p.delta.size());
  g.dA = zeros(p.A.size());
  g.dB = zeros(p.B.size());
  g.dC = zeros(p.C.size());
  g.dD = zeros(p.D.size());
  g.dz = zeros(p.z.size());
  g.ddelta_bias = zeros(p.delta_bias.size());
  g.dinitial_state = zeros(p.initial_state.size());
  std::vector<double> h, y0, gh(static_cast<size_t>(N));
  for (int64_t b = 0; b < p.batch; ++b)
    for (int64_t c = 0; c < p.dim; ++c) {
      detail::channel_states(p, b, c, h, y0);
      for (int64_t n = 0; n < N; ++n) gh[n] = dfinal.empty() ? 0.0 : dfinal[ix.state(b, c, n)];
      for (int64_t t = p.L - 1; t >= 0; --t) {
        const int64_t i = ix.tok(b, t, c);
        double pre, dt;
        detail::step_size(p, i, c, pre, dt);
        // Through the gate: y = y0 * z * sigmoid(z).
        double gy0 = dy[i];
        if (!p.z.empty()) {
          const double s = detail::sigmoid(p.z[i]);
          g.dz[i] = dy[i] * y0[t] * s * (1 + p.z[i] * (1 - s));
          gy0 = dy[i] * p.z[i] * s;
        }
        if (!p.D.empty()) {
          g.dD[c] += gy0 * p.u[i];
          g.du[i] += gy0 * p.D[c];
        }
        double gdt = 0;
        for (int64_t n = 0; n < N; ++n) {
          const int64_t j = ix.bc(b, t, c, n);
          const double a = p.A[c * N + n], decay = std::exp(dt * a);
          const double h_prev = h[t * N + n], h_t = h[(t + 1) * N + n];
          // y0_t = sum_n C h_t: h_t's total gradient is the carried one plus C_t gy0.
          g.dC[j] += gy0 * h_t;
          const double gh_t = gh[n] + p.C[j] * gy0;
          // h_t = decay h_prev + dt B u
          g.dB[j] += gh_t * dt * p.u[i];
          g.du[i] += gh_t * dt * p.B[j];
          gdt += gh_t * (p.B[j] * p.u[i] + a * decay * h_prev);
          g.dA[c * N + n] += gh_t * dt * decay * h_prev;
          gh[n] = gh_t * decay;
        }
        double gpre = gdt;
        if (p.delta_softplus && pre <= 20) gpre = gdt * detail::sigmoid(pre);
        g.ddelta[i] = gpre;
        if (!p.delta_bias.empty()) g.ddelta_bias[c] += gpre;
      }
      if (!p.initial_state.empty())
        for (int64_t n = 0; n < N; ++n) g.dinitial_state[ix.state(b, c, n)] = gh[n];
    }
  return g;
}

}  // namespace scan_ref
