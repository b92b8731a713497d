// The fused scans on the GPU against the bounds of issue 9: for selective_scan (batch 8, L 2048,
// dim 1536, N 16) and ssd_scan (batch 8, L 2048, 24 heads x 64, N 128), forward and
// forward + backward, the time of the coil op next to the larger of two bounds measured in the
// same run: the bytes that must move over the device's copy bandwidth, and the exps that must be
// computed over its expf throughput.
//   bench=cuda_scan op= pass= batch= L= dim= N= median_ms= bound_ms= bound_fraction=
// bound_fraction = bound_ms / median_ms (target 0.6). Bytes counted: every input read once and
// every output written once (the backward reads the forward's inputs and dy, writes every
// gradient); exps: one per (token, channel, state) for selective_scan and per (token, head) for
// ssd_scan, twice for forward + backward (the backward recomputes the decays).
#include <coil/coil.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <functional>
#include <vector>

#include "bench_common.h"

double probe_copy_bandwidth(size_t bytes);
double probe_exp_rate();

using namespace coil;

namespace {

const Device kGpu("cuda:0");

double time_case(const std::function<void()>& f) {
  for (int i = 0; i < 3; ++i) f();
  synchronize(kGpu);
  std::vector<double> t;
  for (int i = 0; i < 10; ++i) {
    const double t0 = bench::now_ms();
    f();
    synchronize(kGpu);
    t.push_back(bench::now_ms() - t0);
  }
  return bench::median(t);
}

Tensor dev(const Shape& s, double lo, double hi, bool grad) {
  Tensor t = (rand(s, Options(kF32, kGpu)) * (hi - lo) + lo).detach();
  return grad ? t.requires_grad_() : t;
}

void report(const char* op, const char* pass, int64_t B, int64_t L, int64_t dim, int64_t N,
            double ms, double bytes, double exps, double bw, double exp_rate) {
  const double bound = std::max(bytes / bw, exps / exp_rate) * 1e3;
  std::printf(
      "bench=cuda_scan op=%s pass=%s batch=%lld L=%lld dim=%lld N=%lld median_ms=%.3f "
      "bound_ms=%.3f bound_fraction=%.3f GBps=%.0f\n",
      op, pass, (long long)B, (long long)L, (long long)dim, (long long)N, ms, bound, bound / ms,
      bytes / ms * 1e-6);
  std::fflush(stdout);
}

// The mamba-130m training step of issue 9: bf16 autocast, AdamW, batch x L tokens, against the
// GEMM bound measured in the same run: the model's products (every layer's in_proj, x_proj,
// dt_proj, out_proj and the tied head; forward, and backward's dX and dW) timed alone as bf16
// cuBLAS GEMMs. gemm_bound_tokens_per_s = tokens / (their summed time).
void train_step(const nn::MambaConfig& c, const char* name, int64_t batch, int64_t L) {
  const int64_t M = batch * L, d = c.hidden_size, e = c.intermediate_size(), r = c.dt_rank(),
                n = c.state_size, V = c.vocab_size;
  struct Shape3 {
    int64_t k, n, count;  // X (M, k) W^T (k, n), `count` times per step
  };
  const int64_t layers = c.num_hidden_layers;
  const std::vector<Shape3> gemms =
      c.is_mamba2() ? std::vector<Shape3>{{d, 2 * e + 2 * c.n_groups * n + c.num_heads, layers},
                                          {e, d, layers},
                                          {d, V, 1}}
                    : std::vector<Shape3>{{d, 2 * e, layers},
                                          {e, r + 2 * n, layers},
                                          {r, e, layers},
                                          {e, d, layers},
                                          {d, V, 1}};
  double gemm_ms = 0;
  for (const Shape3& g : gemms) {
    Tensor x = dev({M, g.k}, -1, 1, false).to(kBF16), w = dev({g.n, g.k}, -1, 1, false).to(kBF16);
    Tensor dy = dev({M, g.n}, -1, 1, false).to(kBF16);
    NoGradGuard ng;
    const double ms = time_case([&] {
      matmul(x, w.t());   // forward
      matmul(dy, w);      // dX
      matmul(dy.t(), x);  // dW
    });
    gemm_ms += ms * static_cast<double>(g.count);
  }
  manual_seed(0);
  auto model = std::make_shared<nn::MambaLM>(c);
  model->to(kGpu);
  optim::AdamW opt(model->parameters(), {.lr = 1e-4});
  Tensor ids = randint(0, V, {batch, L + 1}).to(kGpu);
  double loss = 0;
  const double ms = time_case([&] {
    opt.zero_grad();
    Tensor l;
    {
      AutocastGuard autocast(kBF16);
      Tensor logits = model->forward(ids.narrow(1, 0, L));
      l = cross_entropy(logits.reshape({M, V}), ids.narrow(1, 1, L).reshape({M}));
    }
    l.backward();
    optim::clip_grad_norm_(model->parameters(), 1.0);
    opt.step();
    loss = l.item<double>();
  });
  const double tok_s = M / (ms * 1e-3), bound = M / (gemm_ms * 1e-3);
  std::printf(
      "bench=cuda_train impl=coil model=%s batch=%lld L=%lld autocast=bf16 median_ms=%.1f "
      "tokens_per_s=%.0f gemm_ms=%.2f gemm_bound_tokens_per_s=%.0f fraction=%.3f loss=%.3f\n",
      name, (long long)batch, (long long)L, ms, tok_s, gemm_ms, bound, tok_s / bound, loss);
  std::fflush(stdout);
}

}  // namespace

int main() try {
  if (cuda_device_count() == 0) {
    std::printf("bench_cuda: no GPU\n");
    return 0;
  }
  const double bw = probe_copy_bandwidth(size_t(1) << 30), exp_rate = probe_exp_rate();
  std::printf("bench=cuda_probe copy_GBps=%.0f exp_per_s=%.3g\n", bw * 1e-9, exp_rate);
  const int64_t B = 8, L = 2048;
  // BENCH_CUDA_ONLY=train: the training steps alone (for a profiler)
  const char* only = std::getenv("BENCH_CUDA_ONLY");
  if (only && std::string(only) == "train") {
    train_step(nn::MambaConfig::mamba_130m(), "mamba-130m", B, L);
    return 0;
  }
  // BENCH_CUDA_ONLY=ssd: the ssd_scan cases alone (with COIL_SSD_SIMT=1: its float32-FMA path)
  const bool ssd_only = only && std::string(only) == "ssd";
  if (!ssd_only) {  // selective_scan, Mamba-1 shapes (mamba-130m: d_inner 1536, N 16)
    const int64_t D = 1536, N = 16;
    Tensor u = dev({B, L, D}, -1, 1, true), delta = dev({B, L, D}, -4, 0, true);
    Tensor A = (-dev({D, N}, 0.5, 2, false)).requires_grad_();
    Tensor Bm = dev({B, L, 1, N}, -1, 1, true), Cm = dev({B, L, 1, N}, -1, 1, true);
    Tensor Dp = dev({D}, -1, 1, true), z = dev({B, L, D}, -1, 1, true),
           bias = dev({D}, -1, 1, true);
    Tensor dy = dev({B, L, D}, -1, 1, false);
    SelectiveScanOptions o;
    o.D = Dp;
    o.z = z;
    o.delta_bias = bias;
    o.delta_softplus = true;
    const double tok = double(B) * L, act = tok * D * 4, bc = tok * N * 4;
    const double fwd_bytes = 3 * act + 2 * bc + act;  // u, delta, z, B, C in; y out
    const double bwd_bytes =
        4 * act + 2 * bc + 3 * act + 2 * bc;  // + dy in; du, ddelta, dz, dB, dC
    {
      NoGradGuard ng;
      const double ms = time_case([&] { selective_scan(u, delta, A, Bm, Cm, o); });
      report("selective_scan", "fwd", B, L, D, N, ms, fwd_bytes, tok * D * N, bw, exp_rate);
    }
    // The leaves' .grad is cleared before each pass: accumulating into it (u, delta, z: three
    // reads and writes of a 100 MB tensor each) would be timed but is no part of the op.
    const TensorList leaves{u, delta, A, Bm, Cm, Dp, z, bias};
    const double ms = time_case([&] {
      for (Tensor t : leaves) t.set_grad(Tensor());  // a handle: clears the leaf's grad
      Tensor y = selective_scan(u, delta, A, Bm, Cm, o).first;
      y.backward(dy);
    });
    report("selective_scan", "fwd_bwd", B, L, D, N, ms, fwd_bytes + bwd_bytes, 2 * tok * D * N, bw,
           exp_rate);
  }
  {  // ssd_scan, Mamba-2 shapes (mamba2-130m: 24 heads of 64, N 128)
    const int64_t H = 24, P = 64, N = 128;
    Tensor x = dev({B, L, H, P}, -1, 1, true), dt = dev({B, L, H}, -4, 0, true);
    Tensor A = (-dev({H}, 0.5, 2, false)).requires_grad_();
    Tensor Bm = dev({B, L, 1, N}, -1, 1, true), Cm = dev({B, L, 1, N}, -1, 1, true);
    Tensor Dp = dev({H}, -1, 1, true), z = dev({B, L, H, P}, -1, 1, true),
           bias = dev({H}, -1, 1, true);
    Tensor dy = dev({B, L, H, P}, -1, 1, false);
    SsdScanOptions o;
    o.D = Dp;
    o.z = z;
    o.dt_bias = bias;
    o.dt_softplus = true;
    const double tok = double(B) * L, act = tok * H * P * 4, bc = tok * N * 4, dtb = tok * H * 4;
    const double fwd_bytes = 2 * act + dtb + 2 * bc + act;
    // f32 runs the chunked kernels: on the tensor cores, or in float32 FMAs (COIL_SSD_SIMT=1)
    const char* simt = std::getenv("COIL_SSD_SIMT");
    const char* ssd_name =
        simt && std::string(simt) == "1" ? "ssd_scan path=simt" : "ssd_scan path=tc";
    const double bwd_bytes = 3 * act + dtb + 2 * bc + 2 * act + dtb + 2 * bc;
    {
      NoGradGuard ng;
      const double ms = time_case([&] { ssd_scan(x, dt, A, Bm, Cm, 256, o); });
      report(ssd_name, "fwd", B, L, H * P, N, ms, fwd_bytes, tok * H, bw, exp_rate);
    }
    const double ms = time_case([&] {
      Tensor y = ssd_scan(x, dt, A, Bm, Cm, 256, o).first;
      y.backward(dy);
    });
    report(ssd_name, "fwd_bwd", B, L, H * P, N, ms, fwd_bytes + bwd_bytes, 2 * tok * H, bw,
           exp_rate);
  }
  if (ssd_only) return 0;
  train_step(nn::MambaConfig::mamba_130m(), "mamba-130m", B, L);
  train_step(nn::MambaConfig::mamba2_130m(), "mamba2-130m", B, L);
  return 0;
} catch (const coil::Error& e) {
  std::fprintf(stderr, "error: %s\n", e.what());
  return 1;
}
