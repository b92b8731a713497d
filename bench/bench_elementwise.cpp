// Elementwise ops on 16M contiguous f32 values, called as a user calls them (the op allocates its
// output; coil's caching allocator hands back last call's block, so no page faults after warm-up),
// against a plain OpenMP triad loop a[i] = b[i] + s * c[i] as the memory-bandwidth reference.
// Bytes moved = inputs read + output written (add/mul/triad 12 B per element, silu/exp 8 B).
// Each op's calls are interleaved with triad calls, so both see the same background load.
#include <omp.h>

#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include <coil/coil.h>

#include "bench_common.h"

namespace {

constexpr int64_t kN = int64_t(1) << 24;  // 16,777,216

// The reference: first-touched by the same threads, written with one OpenMP parallel for.
struct Triad {
  float *a, *b, *c;
  Triad() {
    a = static_cast<float*>(std::aligned_alloc(64, kN * sizeof(float)));
    b = static_cast<float*>(std::aligned_alloc(64, kN * sizeof(float)));
    c = static_cast<float*>(std::aligned_alloc(64, kN * sizeof(float)));
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < kN; ++i) {
      a[i] = 0.0f;
      b[i] = 1.0f;
      c[i] = 2.0f;
    }
  }
  ~Triad() {
    std::free(a);
    std::free(b);
    std::free(c);
  }
  void run(float s) {
    float* __restrict pa = a;
    const float* __restrict pb = b;
    const float* __restrict pc = c;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < kN; ++i) pa[i] = pb[i] + s * pc[i];
  }
};

struct Op {
  const char* name;
  int n_inputs;
  std::function<coil::Tensor()> call;
};

double gbps(double bytes, double ms) { return bytes / (ms * 1e6); }

}  // namespace

int main() {
  coil::Tensor x = coil::randn({kN}), y = coil::randn({kN});
  Triad triad;
  const std::vector<Op> ops = {
      {"add", 2, [&] { return coil::add(x, y); }},
      {"mul", 2, [&] { return coil::mul(x, y); }},
      {"silu", 1, [&] { return coil::silu(x); }},
      {"exp", 1, [&] { return coil::exp(x); }},
  };
  const double triad_bytes = 3.0 * kN * sizeof(float);
  double worst_ratio = 1e9;
  std::string worst;
  for (int threads : {1, 2}) {
    coil::set_num_threads(threads);  // omp_set_num_threads: the triad's parallel for follows it too
    std::vector<double> triad_ms_all;
    std::vector<std::vector<double>> op_ms;
    for (const Op& op : ops) {
      auto t = bench::time_interleaved(
          {[&] { coil::Tensor r = op.call(); }, [&] { triad.run(0.5f); }}, 800);
      op_ms.push_back(t[0]);
      triad_ms_all.insert(triad_ms_all.end(), t[1].begin(), t[1].end());
    }
    const double triad_ms = bench::median(triad_ms_all);
    const double triad_gbps = gbps(triad_bytes, triad_ms);
    std::printf("bench=elementwise op=triad_ref n=%lld threads=%d median_ms=%.3f gbps=%.2f\n",
                (long long)kN, threads, triad_ms, triad_gbps);
    for (size_t i = 0; i < ops.size(); ++i) {
      const double ms = bench::median(op_ms[i]);
      const double g = gbps((ops[i].n_inputs + 1.0) * kN * sizeof(float), ms);
      const double ratio = g / triad_gbps;
      std::printf("bench=elementwise op=%s n=%lld threads=%d median_ms=%.3f gbps=%.2f ratio=%.2f\n",
                  ops[i].name, (long long)kN, threads, ms, g, ratio);
      if (ratio < worst_ratio) {
        worst_ratio = ratio;
        worst = std::string(ops[i].name) + ":t" + std::to_string(threads);
      }
    }
    std::fflush(stdout);
  }
  std::printf("bench=elementwise_summary ratio_min=%.2f worst_case=%s target=0.70 %s\n",
              worst_ratio, worst.c_str(), worst_ratio >= 0.7 ? "met=yes" : "met=no");
  return 0;
}
