// Whole-model figures for the Mamba language models: a training step and cached decoding, each
// against a machine bound measured in the same run, at 1 and 2 threads.
//
// bench=train: one LMTrainer-style step (forward, cross_entropy, backward, clip_grad_norm_ to 1,
// AdamW step) on random token ids. Its bound is the model's GEMM work run alone: every Linear's
// three products (forward y = x W^T, backward dx = dy W and dW = dy^T x, with M = batch x L rows)
// for in_proj, x_proj, dt_proj, out_proj (Mamba-1) or in_proj, out_proj (Mamba-2) per layer and
// the lm_head, through cblas_sgemm of the OpenBLAS coil uses, with the same operand layouts coil
// hands it. gemm_bound_tokens_per_s = tokens / (sum over the products of their median time);
// bound_fraction = tokens_per_s / gemm_bound_tokens_per_s. The step and the GEMM set alternate.
//
// bench=generate: one cached decoding step, model.forward(id (1, 1), &cache), after a 16-token
// prefill. Its bound is the bytes a step must read, all parameters once (the tied embedding as the
// head's full matrix plus the one looked-up row), at the read bandwidth of this machine, measured
// as a vectorised OpenMP sum over a 1 GiB float array with the same thread count; decoding steps
// and bandwidth passes alternate.
//
//   bench_model [train|generate] [--config NAME]... [--threads N] [--reps N]
//               [--L N] [--batch N]   (training shape, instead of the config's)
//               [--no-bound]          (training steps only, no GEMM set: for profiling)
//   NAME: mamba-130m | mamba2-130m | demo-mamba | demo-mamba2
#include <cblas.h>
#include <omp.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <coil/coil.h>
#include <coil/core/simd.h>

#include "bench_common.h"

namespace {

using coil::Tensor;
namespace nn = coil::nn;

// examples/train_lm.cpp's demo model: 4 layers, d_model 256, byte vocabulary.
nn::MambaConfig demo_config(const std::string& mixer) {
  nn::MambaConfig c;
  c.model_type = mixer;
  c.vocab_size = 256;
  c.hidden_size = 256;
  c.num_hidden_layers = 4;
  c.bos_token_id = c.eos_token_id = c.pad_token_id = 0;
  if (mixer == "mamba2") {
    c.state_size = 64;
    c.head_dim = 64;
    c.num_heads = c.intermediate_size() / c.head_dim;
    c.n_groups = 1;
    c.chunk_size = 64;
    c.norm_per_group = true;
  }
  return c;
}

struct Case {
  std::string name;
  nn::MambaConfig config;
  int64_t batch, L;
};

Case make_case(const std::string& name) {
  if (name == "mamba-130m") return {name, nn::MambaConfig::mamba_130m(), 1, 1024};
  if (name == "mamba2-130m") return {name, nn::MambaConfig::mamba2_130m(), 1, 1024};
  if (name == "demo-mamba") return {name, demo_config("mamba"), 8, 256};
  if (name == "demo-mamba2") return {name, demo_config("mamba2"), 8, 256};
  std::fprintf(stderr, "bench_model: unknown config '%s'\n", name.c_str());
  std::exit(2);
}

// ---- the GEMM bound ----

// One product of a Linear (out n, in k) over M rows, as coil's linear hands it to cblas_sgemm
// (row-major): fwd y (M,n) = x (M,k) . W^T with W (n,k) stored; dx (M,k) = dy (M,n) . W (n,k);
// dW (n,k) = dy^T . x, dy (M,n) read transposed.
struct Gemm {
  std::string what;
  int count;  // how many times a step runs it (layers)
  CBLAS_TRANSPOSE ta, tb;
  int m, n, k, lda, ldb;
  std::vector<float> a, b, c;
  std::vector<double> ms;  // per-call times
  double flops() const { return 2.0 * m * n * k; }
  void run() {
    cblas_sgemm(CblasRowMajor, ta, tb, m, n, k, 1.0f, a.data(), lda, b.data(), ldb, 0.0f, c.data(),
                n);
  }
};

void fill(std::vector<float>& v, size_t n, float scale) {
  v.resize(n);
  uint32_t s = 12345;
  for (auto& x : v) {
    s = s * 1664525u + 1013904223u;
    x = scale * (float((s >> 8) & 0xffff) / 65536.0f - 0.5f);
  }
}

struct GemmSet {
  std::vector<Gemm> gemms;
  void add_linear(const std::string& name, int count, int64_t M, int64_t in, int64_t out) {
    const int m = int(M), k = int(in), n = int(out);
    {
      Gemm g{name + ".fwd", count, CblasNoTrans, CblasTrans, m, n, k, k, k, {}, {}, {}, {}};
      fill(g.a, size_t(m) * k, 1.0f);
      fill(g.b, size_t(n) * k, 0.05f);
      g.c.resize(size_t(m) * n);
      gemms.push_back(std::move(g));
    }
    {
      Gemm g{name + ".dx", count, CblasNoTrans, CblasNoTrans, m, k, n, n, k, {}, {}, {}, {}};
      fill(g.a, size_t(m) * n, 1.0f);
      fill(g.b, size_t(n) * k, 0.05f);
      g.c.resize(size_t(m) * k);
      gemms.push_back(std::move(g));
    }
    {
      Gemm g{name + ".dW", count, CblasTrans, CblasNoTrans, n, k, m, n, k, {}, {}, {}, {}};
      fill(g.a, size_t(m) * n, 0.05f);
      fill(g.b, size_t(m) * k, 1.0f);
      g.c.resize(size_t(n) * k);
      gemms.push_back(std::move(g));
    }
  }
  void run_all() {
    for (Gemm& g : gemms) {
      const double t0 = bench::now_ms();
      g.run();
      g.ms.push_back(bench::now_ms() - t0);
    }
  }
  void clear() {
    for (Gemm& g : gemms) g.ms.clear();
  }
  double step_ms() const {
    double t = 0;
    for (const Gemm& g : gemms) t += g.count * bench::median(g.ms);
    return t;
  }
  double step_flops() const {
    double f = 0;
    for (const Gemm& g : gemms) f += g.count * g.flops();
    return f;
  }
};

GemmSet model_gemms(const nn::MambaConfig& c, int64_t M) {
  GemmSet s;
  const int64_t dm = c.hidden_size, di = c.intermediate_size(), layers = c.num_hidden_layers;
  if (c.is_mamba2()) {
    s.add_linear("in_proj", int(layers), M, dm, di + c.conv_dim() + c.num_heads);
    s.add_linear("out_proj", int(layers), M, di, dm);
  } else {
    s.add_linear("in_proj", int(layers), M, dm, 2 * di);
    s.add_linear("x_proj", int(layers), M, di, c.dt_rank() + 2 * c.state_size);
    s.add_linear("dt_proj", int(layers), M, c.dt_rank(), di);
    s.add_linear("out_proj", int(layers), M, di, dm);
  }
  s.add_linear("lm_head", 1, M, dm, c.vocab_size);
  return s;
}

// ---- the read-bandwidth bound ----

struct ReadBandwidth {
  size_t n;
  float* data;
  explicit ReadBandwidth(size_t bytes) : n(bytes / sizeof(float)) {
    data = static_cast<float*>(std::aligned_alloc(64, n * sizeof(float)));
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; ++i) data[i] = float(i & 1023) * 1e-6f;
  }
  ~ReadBandwidth() { std::free(data); }
  ReadBandwidth(const ReadBandwidth&) = delete;
  ReadBandwidth& operator=(const ReadBandwidth&) = delete;
  // The same static split as the first touch; four independent vector accumulators per thread,
  // summed across lanes once at the end.
  float sum(int threads) const {
    namespace simd = coil::simd;
    constexpr int64_t W = simd::kWidth, U = 4 * W;
    const int64_t blocks = int64_t(n) / U;
    float total = 0;
#pragma omp parallel num_threads(threads) reduction(+ : total)
    {
      simd::Vec a0 = simd::broadcast(0.0f), a1 = a0, a2 = a0, a3 = a0;
#pragma omp for schedule(static)
      for (int64_t b = 0; b < blocks; ++b) {
        const float* p = data + b * U;
        a0 += simd::load(p);
        a1 += simd::load(p + W);
        a2 += simd::load(p + 2 * W);
        a3 += simd::load(p + 3 * W);
      }
      const simd::Vec s = (a0 + a1) + (a2 + a3);
      for (int i = 0; i < W; ++i) total += s[i];
    }
    return total;
  }
};

volatile float g_sink = 0;

// ---- cases ----

const char* met(bool ok) { return ok ? "met=yes" : "met=no"; }

bool g_no_bound = false;  // --no-bound: steps only (for profiling)

void bench_train(const Case& cs, const std::vector<int>& thread_counts, int reps) {
  coil::manual_seed(0);
  auto model = std::make_shared<nn::MambaLM>(cs.config);
  model->train();
  auto groups = model->weight_decay_groups();
  std::vector<coil::optim::ParamGroup> pg(2);
  pg[0].params = groups.decay;
  pg[1].params = groups.no_decay;
  pg[1].weight_decay = 0;
  coil::optim::AdamWOptions ao;
  ao.lr = 1e-4;
  ao.beta1 = 0.9;
  ao.beta2 = 0.95;
  ao.weight_decay = 0.1;
  coil::optim::AdamW opt(pg, ao);
  const std::vector<Tensor> params = model->parameters();
  const int64_t b = cs.batch, L = cs.L, V = cs.config.vocab_size, tokens = b * L;
  Tensor window = coil::randint(0, V, {b, L + 1});
  Tensor input = window.narrow(1, 0, L).contiguous();
  Tensor target = window.narrow(1, 1, L).contiguous().reshape({tokens});
  double last_loss = 0;
  // Phase times of each step (ms): forward + loss, backward, clip, optimizer.
  std::vector<double> ph_fwd, ph_bwd, ph_clip, ph_opt;
  auto step = [&] {
    const double t0 = bench::now_ms();
    Tensor logits = model->forward(input);
    Tensor loss = coil::cross_entropy(logits.reshape({tokens, V}), target);
    const double t1 = bench::now_ms();
    opt.zero_grad();
    loss.backward();
    const double t2 = bench::now_ms();
    coil::optim::clip_grad_norm_(params, 1.0);
    const double t3 = bench::now_ms();
    opt.step();
    last_loss = loss.item<double>();
    const double t4 = bench::now_ms();
    ph_fwd.push_back(t1 - t0);
    ph_bwd.push_back(t2 - t1);
    ph_clip.push_back(t3 - t2);
    ph_opt.push_back(t4 - t3);
  };
  GemmSet gemms = model_gemms(cs.config, tokens);

  for (int threads : thread_counts) {
    coil::set_num_threads(threads);
    gemms.clear();
    step();  // warm-up: optimizer state, allocator cache, thread pools
    if (!g_no_bound) gemms.run_all();
    gemms.clear();
    ph_fwd.clear(), ph_bwd.clear(), ph_clip.clear(), ph_opt.clear();
    std::vector<double> step_ms;
    double peak_mb = 0;
    for (int r = 0; r < reps; ++r) {
      const bool last = r + 1 == reps;
      if (last) coil::reset_peak_memory();
      const double t0 = bench::now_ms();
      step();
      step_ms.push_back(bench::now_ms() - t0);
      if (last) peak_mb = coil::memory_stats().peak_bytes_in_use / 1048576.0;
      // The GEMM set is short next to a step: three samples of each product per step.
      for (int i = 0; i < 3 && !g_no_bound; ++i) gemms.run_all();
    }
    const double ms = bench::median(step_ms), tok_s = tokens * 1e3 / ms;
    std::printf(
        "bench=train_phases impl=coil config=%s L=%lld batch=%lld threads=%d fwd_ms=%.1f "
        "bwd_ms=%.1f clip_ms=%.1f opt_ms=%.1f\n",
        cs.name.c_str(), (long long)L, (long long)b, threads, bench::median(ph_fwd),
        bench::median(ph_bwd), bench::median(ph_clip), bench::median(ph_opt));
    if (g_no_bound) {
      std::printf(
          "bench=train impl=coil config=%s L=%lld batch=%lld threads=%d reps=%d "
          "median_ms=%.1f tokens_per_s=%.1f peak_mb=%.0f\n",
          cs.name.c_str(), (long long)L, (long long)b, threads, reps, ms, tok_s, peak_mb);
      continue;
    }
    const double gemm_ms = gemms.step_ms(), bound_tok_s = tokens * 1e3 / gemm_ms;
    const double frac = tok_s / bound_tok_s;
    std::printf(
        "bench=train impl=coil config=%s L=%lld batch=%lld threads=%d reps=%d median_ms=%.1f "
        "tokens_per_s=%.1f peak_mb=%.0f gemm_ms=%.1f gemm_gflops=%.1f "
        "gemm_bound_tokens_per_s=%.1f bound_fraction=%.3f loss=%.3f",
        cs.name.c_str(), (long long)L, (long long)b, threads, reps, ms, tok_s, peak_mb, gemm_ms,
        gemms.step_flops() / (gemm_ms * 1e6), bound_tok_s, frac, last_loss);
    if (cs.name == "mamba-130m" || cs.name == "mamba2-130m")
      std::printf(" target=0.5 %s", met(frac >= 0.5));
    std::printf("\n");
    std::fflush(stdout);
  }
}

// Bytes one decoding step must read: every parameter once, except that the tied embedding is
// read in full by the head and once more as one row by the lookup.
double decode_bytes(const nn::MambaLM& m) {
  double bytes = 0;
  std::vector<const void*> seen;
  for (auto& [name, p] : m.named_parameters()) {
    const void* s = p.impl_ptr()->storage.get();
    bool dup = false;
    for (const void* q : seen) dup |= q == s;
    if (dup) continue;
    seen.push_back(s);
    bytes += double(p.nbytes());
  }
  const auto& c = m.config();
  bytes += double(c.hidden_size) * 4.0;  // the looked-up embedding row
  if (!c.tie_word_embeddings) bytes -= double(c.vocab_size - 1) * c.hidden_size * 4.0;
  return bytes;
}

void bench_generate(const Case& cs, const std::vector<int>& thread_counts, int reps,
                    ReadBandwidth& bw) {
  coil::manual_seed(0);
  auto model = std::make_shared<nn::MambaLM>(cs.config);
  model->eval();
  const double bytes = decode_bytes(*model);
  const int64_t V = cs.config.vocab_size, prompt_len = 16, steps_per_round = 8;
  Tensor prompt = coil::randint(0, V, {1, prompt_len});
  for (int threads : thread_counts) {
    coil::set_num_threads(threads);
    coil::NoGradGuard no_grad;
    nn::MambaCache cache;
    Tensor logits = model->forward(prompt, &cache);
    Tensor next = coil::argmax(logits.select(1, prompt_len - 1), -1).view({1, 1});
    auto decode = [&] {
      Tensor lg = model->forward(next, &cache);
      next = coil::argmax(lg.select(1, 0), -1).view({1, 1});
    };
    for (int i = 0; i < 4; ++i) decode();  // warm-up
    g_sink = g_sink + bw.sum(threads);
    std::vector<double> step_ms, bw_ms;
    for (int r = 0; r < reps; ++r) {
      for (int64_t i = 0; i < steps_per_round; ++i) {
        const double t0 = bench::now_ms();
        decode();
        step_ms.push_back(bench::now_ms() - t0);
      }
      const double t0 = bench::now_ms();
      g_sink = g_sink + bw.sum(threads);
      bw_ms.push_back(bench::now_ms() - t0);
    }
    const double ms = bench::median(step_ms), tok_s = 1e3 / ms;
    const double gbps = double(bw.n) * sizeof(float) / (bench::median(bw_ms) * 1e6);
    const double bound_tok_s = gbps * 1e9 / bytes, frac = tok_s / bound_tok_s;
    std::printf(
        "bench=generate impl=coil config=%s batch=1 prompt=%lld threads=%d steps=%zu "
        "median_ms=%.2f tokens_per_s=%.2f read_gbps=%.2f mb_per_token=%.1f "
        "bound_tokens_per_s=%.2f bound_fraction=%.3f target=0.8 %s\n",
        cs.name.c_str(), (long long)prompt_len, threads, step_ms.size(), ms, tok_s, gbps,
        bytes / 1048576.0, bound_tok_s, frac, met(frac >= 0.8));
    std::fflush(stdout);
  }
}

}  // namespace

int main(int argc, char** argv) try {
  std::string mode;
  std::vector<std::string> configs;
  std::vector<int> thread_counts = {1, 2};
  int reps = 0;
  int64_t L_override = 0, batch_override = 0;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto val = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "bench_model: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "train" || a == "generate")
      mode = a;
    else if (a == "--config")
      configs.push_back(val());
    else if (a == "--threads")
      thread_counts = {std::stoi(val())};
    else if (a == "--no-bound")
      g_no_bound = true;
    else if (a == "--L")
      L_override = std::stoll(val());
    else if (a == "--batch")
      batch_override = std::stoll(val());
    else if (a == "--reps")
      reps = std::stoi(val());
    else {
      std::fprintf(stderr,
                   "usage: bench_model [train|generate] [--config NAME]... [--threads N] "
                   "[--reps N] [--L N] [--batch N] [--no-bound]\n");
      return 2;
    }
  }
  std::printf("bench=model_info openblas_core=%s openblas_config=\"%s\"\n", openblas_get_corename(),
              openblas_get_config());
  std::fflush(stdout);

  if (mode.empty() || mode == "train") {
    std::vector<std::string> names = configs;
    if (names.empty()) names = {"demo-mamba", "demo-mamba2", "mamba-130m", "mamba2-130m"};
    for (const auto& n : names) {
      Case cs = make_case(n);
      if (L_override > 0) cs.L = L_override;
      if (batch_override > 0) cs.batch = batch_override;
      const int r =
          reps > 0 ? reps : (cs.L * cs.batch >= 1024 && cs.config.hidden_size >= 768 ? 3 : 7);
      bench_train(cs, thread_counts, r);
    }
  }
  if (mode.empty() || mode == "generate") {
    std::vector<std::string> names = configs;
    if (names.empty()) names = {"mamba-130m", "mamba2-130m"};
    ReadBandwidth bw(size_t(1) << 30);
    for (const auto& n : names)
      bench_generate(make_case(n), thread_counts, reps > 0 ? reps : 8, bw);
  }
  return 0;
} catch (const coil::Error& e) {
  std::fprintf(stderr, "bench_model: %s\n", e.what());
  return 1;
}
