// An independent float64 reference of the Mamba-1 / Mamba-2 language models, as plain loops over
// the parameters of a coil model (MATH.md 1-3). Tests compare the modules against it.
#pragma once
#include <cmath>
#include <coil/coil.h>
#include <map>
#include <string>
#include <vector>

namespace ct {

struct RefModel {
  std::map<std::string, std::vector<double>> p;
  coil::nn::MambaConfig c;
  int64_t norm_group = 0;  // Mamba-2 gated-norm group size

  explicit RefModel(const coil::nn::MambaLM& m) : c(m.config()) {
    for (auto& [name, t] : m.state_dict()) p[name] = coil::to_vector<double>(t);
    norm_group = c.norm_per_group ? c.intermediate_size() / c.n_groups : c.intermediate_size();
  }
  const std::vector<double>& w(const std::string& n) const { return p.at(n); }

  static double silu(double x) { return x / (1 + std::exp(-x)); }
  static double softplus(double x) { return x > 20 ? x : std::log1p(std::exp(x)); }

  // y (L, out) = x (L, in) W^T, W (out, in)
  static std::vector<double> lin(const std::vector<double>& x, const std::vector<double>& W,
                                 int64_t L, int64_t in, int64_t out) {
    std::vector<double> y(L * out, 0);
    for (int64_t t = 0; t < L; ++t)
      for (int64_t o = 0; o < out; ++o) {
        double s = 0;
        for (int64_t i = 0; i < in; ++i) s += x[t * in + i] * W[o * in + i];
        y[t * out + o] = s;
      }
    return y;
  }
  std::vector<double> rms(const std::vector<double>& x, const std::vector<double>& wt, int64_t L,
                          int64_t d, int64_t group) const {
    std::vector<double> y(x.size());
    for (int64_t t = 0; t < L; ++t)
      for (int64_t g0 = 0; g0 < d; g0 += group) {
        double ss = 0;
        for (int64_t i = g0; i < g0 + group; ++i) ss += x[t * d + i] * x[t * d + i];
        double r = 1 / std::sqrt(ss / group + c.layer_norm_epsilon);
        for (int64_t i = g0; i < g0 + group; ++i) y[t * d + i] = x[t * d + i] * r * wt[i];
      }
    return y;
  }
  // Depthwise causal conv + bias + silu over channels [c0, c0 + nc) of x (L, stride).
  std::vector<double> conv(const std::vector<double>& x, int64_t L, int64_t stride, int64_t c0,
                           int64_t nc, const std::string& pre) const {
    const int64_t K = c.conv_kernel;
    const auto& cw = w(pre + "conv1d.weight");
    std::vector<double> y(L * nc);
    for (int64_t t = 0; t < L; ++t)
      for (int64_t ch = 0; ch < nc; ++ch) {
        double s = p.count(pre + "conv1d.bias") ? w(pre + "conv1d.bias")[ch] : 0;
        for (int64_t k = 0; k < K; ++k) {
          int64_t src = t + k - K + 1;
          if (src >= 0) s += cw[ch * K + k] * x[src * stride + c0 + ch];
        }
        y[t * nc + ch] = silu(s);
      }
    return y;
  }

  std::vector<double> mamba1(const std::vector<double>& u, int64_t L,
                             const std::string& pre) const {
    const int64_t dm = c.hidden_size, E = c.intermediate_size(), N = c.state_size, R = c.dt_rank();
    auto xz = lin(u, w(pre + "in_proj.weight"), L, dm, 2 * E);
    auto x = conv(xz, L, 2 * E, 0, E, pre);
    const bool sel = c.selective;
    auto dbc = sel ? lin(x, w(pre + "x_proj.weight"), L, E, R + 2 * N) : std::vector<double>();
    const auto &Alog = w(pre + "A_log"), &Dp = w(pre + "D");
    std::vector<double> h(E * N, 0), y(L * E);
    for (int64_t t = 0; t < L; ++t)
      for (int64_t ch = 0; ch < E; ++ch) {
        double d = 0;
        if (sel) {  // Δ, B, C from the token
          d = w(pre + "dt_proj.bias")[ch];
          for (int64_t r = 0; r < R; ++r)
            d += dbc[t * (R + 2 * N) + r] * w(pre + "dt_proj.weight")[ch * R + r];
        } else {  // the non-selective ablation: parameters
          d = w(pre + "dt_bias")[ch];
        }
        d = softplus(d);
        double acc = 0;
        for (int64_t n = 0; n < N; ++n) {
          double A = -std::exp(Alog[ch * N + n]);
          double Bn = sel ? dbc[t * (R + 2 * N) + R + n] : w(pre + "B")[ch * N + n];
          double Cn = sel ? dbc[t * (R + 2 * N) + R + N + n] : w(pre + "C")[ch * N + n];
          double& hs = h[ch * N + n];
          hs = std::exp(d * A) * hs + d * Bn * x[t * E + ch];
          acc += Cn * hs;
        }
        y[t * E + ch] = (acc + Dp[ch] * x[t * E + ch]) * silu(xz[t * 2 * E + E + ch]);
      }
    return lin(y, w(pre + "out_proj.weight"), L, E, dm);
  }

  std::vector<double> mamba2(const std::vector<double>& u, int64_t L,
                             const std::string& pre) const {
    const int64_t dm = c.hidden_size, E = c.intermediate_size(), N = c.state_size, H = c.num_heads,
                  P = c.head_dim, G = c.n_groups;
    const int64_t cd = E + 2 * G * N, width = E + cd + H;
    auto proj = lin(u, w(pre + "in_proj.weight"), L, dm, width);
    auto xbc = conv(proj, L, width, E, cd, pre);
    const auto &Alog = w(pre + "A_log"), &Dp = w(pre + "D"), &dtb = w(pre + "dt_bias");
    std::vector<double> S(H * P * N, 0), y(L * E);
    for (int64_t t = 0; t < L; ++t)
      for (int64_t hd = 0; hd < H; ++hd) {
        const int64_t g = hd / (H / G);
        double d = softplus(proj[t * width + E + cd + hd] + dtb[hd]);
        double a = std::exp(-d * std::exp(Alog[hd]));
        for (int64_t pp = 0; pp < P; ++pp) {
          double xv = xbc[t * cd + hd * P + pp], acc = 0;
          for (int64_t n = 0; n < N; ++n) {
            double Bn = xbc[t * cd + E + g * N + n], Cn = xbc[t * cd + E + G * N + g * N + n];
            double& s = S[(hd * P + pp) * N + n];
            s = a * s + d * xv * Bn;
            acc += s * Cn;
          }
          y[t * E + hd * P + pp] = (acc + Dp[hd] * xv) * silu(proj[t * width + hd * P + pp]);
        }
      }
    return lin(rms(y, w(pre + "norm.weight"), L, E, norm_group), w(pre + "out_proj.weight"), L, E,
               dm);
  }

  // logits (L, vocab) of one sequence.
  std::vector<double> logits(const std::vector<int64_t>& ids) const {
    const int64_t L = static_cast<int64_t>(ids.size()), dm = c.hidden_size;
    const auto& emb = w("backbone.embeddings.weight");
    std::vector<double> x(L * dm);
    for (int64_t t = 0; t < L; ++t)
      for (int64_t i = 0; i < dm; ++i) x[t * dm + i] = emb[ids[t] * dm + i];
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
      std::string pre = "backbone.layers." + std::to_string(l) + ".";
      auto h = rms(x, w(pre + "norm.weight"), L, dm, dm);
      auto m = c.is_mamba2() ? mamba2(h, L, pre + "mixer.") : mamba1(h, L, pre + "mixer.");
      for (size_t i = 0; i < x.size(); ++i) x[i] += m[i];
    }
    x = rms(x, w("backbone.norm_f.weight"), L, dm, dm);
    return lin(x, w("lm_head.weight"), L, dm, c.vocab_size);
  }
};

}  // namespace ct
