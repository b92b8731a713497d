// f32 GEMM: coil::matmul / coil::linear against cblas_sgemm (OpenBLAS, OpenMP build) called
// directly on the same data, interleaved call by call, at 1 and 2 threads.
//
// Layouts (C (m x n) = op(A) (m x k) * op(B) (k x n), all row-major and contiguous in memory):
//   nn  A (m, k), B (k, n)                          coil::matmul(a, b)
//   tn  A stored (k, m), passed as the view a.t()   coil::matmul(a.t(), b)   (A^T B: a weight grad)
//   nt  B stored (n, k), passed as the view b.t()   coil::matmul(a, b.t()), or coil::linear(x, w)
// The views are not copied: ops/cpu/gemm.cpp hands them to BLAS as Trans with the view's stride.
//
// Then: two 1024^3 products from inside a coil parallel region (one per worker) against the
// same two run one after the other (at 2 threads, and at 1 thread as the baseline), which shows
// BLAS does not oversubscribe the cores.
#include <cblas.h>
#include <omp.h>

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include <coil/coil.h>

#include "bench_common.h"

namespace {

enum class Layout { nn, tn, nt };
const char* layout_name(Layout l) { return l == Layout::nn ? "nn" : l == Layout::tn ? "tn" : "nt"; }

struct Case {
  const char* name;
  int64_t m, n, k;
  Layout layout;
  bool use_linear;  // coil side calls coil::linear(x, w) (= matmul(x, w.t())) instead of matmul
};

struct Result {
  std::string label;
  double ratio;         // coil gflops / openblas gflops, from the medians
  double paired_ratio;  // median over adjacent (coil, openblas) call pairs of their time ratio
};

void set_threads(int t) {
  coil::set_num_threads(t);     // omp_set_num_threads
  openblas_set_num_threads(t);  // the OpenMP build follows omp's setting anyway; be explicit
}

double gflops(int64_t m, int64_t n, int64_t k, double ms) { return 2.0 * m * n * k / (ms * 1e6); }

// The operands as stored: A is (m, k) for nn/nt and (k, m) for tn; B is (k, n) for nn/tn and
// (n, k) for nt.
struct Operands {
  coil::Tensor a, b;
  std::vector<float> c;  // OpenBLAS's output, reused across calls
};

Operands make_operands(const Case& c) {
  Operands o;
  o.a = c.layout == Layout::tn ? coil::randn({c.k, c.m}) : coil::randn({c.m, c.k});
  o.b = c.layout == Layout::nt ? coil::randn({c.n, c.k}) : coil::randn({c.k, c.n});
  o.c.assign(static_cast<size_t>(c.m * c.n), 0.0f);
  return o;
}

coil::Tensor coil_gemm(const Case& c, const Operands& o) {
  switch (c.layout) {
    case Layout::nn:
      return coil::matmul(o.a, o.b);
    case Layout::tn:
      return coil::matmul(o.a.t(), o.b);
    case Layout::nt:
      return c.use_linear ? coil::linear(o.a, o.b) : coil::matmul(o.a, o.b.t());
  }
  return {};
}

void blas_gemm(const Case& c, Operands& o) {
  const int m = static_cast<int>(c.m), n = static_cast<int>(c.n), k = static_cast<int>(c.k);
  const float* a = o.a.data_ptr<float>();
  const float* b = o.b.data_ptr<float>();
  switch (c.layout) {
    case Layout::nn:
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, n, k, 1.0f, a, k, b, n, 0.0f,
                  o.c.data(), n);
      break;
    case Layout::tn:
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, m, n, k, 1.0f, a, m, b, n, 0.0f,
                  o.c.data(), n);
      break;
    case Layout::nt:
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, 1.0f, a, k, b, k, 0.0f,
                  o.c.data(), n);
      break;
  }
}

// Both implementations must compute the same product, or the timings mean nothing.
// Also counts the allocations one coil call makes: 1 is the output alone, so no operand was copied.
bool same_result(const Case& c, Operands& o, int64_t* allocs) {
  const int64_t before = coil::memory_stats().num_allocs;
  coil::Tensor y = coil_gemm(c, o);
  *allocs = coil::memory_stats().num_allocs - before;
  y = y.contiguous();
  blas_gemm(c, o);
  const float* p = y.data_ptr<float>();
  double worst = 0;
  for (int64_t i = 0; i < c.m * c.n; ++i)
    worst = std::max(worst, std::abs(double(p[i]) - o.c[i]) / (1.0 + std::abs(double(o.c[i]))));
  if (worst > 1e-4) {
    std::fprintf(stderr, "bench_matmul: coil and openblas differ on %s (max rel diff %g)\n", c.name,
                 worst);
    return false;
  }
  return true;
}

void print_line(const char* impl, const Case& c, int threads, int64_t allocs, double ms) {
  std::printf(
      "bench=matmul impl=%s m=%lld n=%lld k=%lld layout=%s threads=%d case=%s api=%s "
      "allocs_per_call=%lld "
      "median_ms=%.3f gflops=%.1f\n",
      impl, (long long)c.m, (long long)c.n, (long long)c.k, layout_name(c.layout), threads, c.name,
      impl[0] == 'o' ? "cblas_sgemm" : (c.use_linear ? "linear" : "matmul"), (long long)allocs, ms,
      gflops(c.m, c.n, c.k, ms));
  std::fflush(stdout);
}

// Two independent 1024^3 products, each on its own worker of a 2-thread coil parallel region,
// against the same two run back to back with both threads given to BLAS, and against the two run
// back to back on 1 thread (the baseline: perfect use of 2 cores is speedup_vs_1thread=2).
// Were BLAS to start 2 threads per worker inside the region (4 on 2 cores), the region would be
// slower than sequential; OpenBLAS's OpenMP build runs on the calling thread alone when
// omp_in_parallel() is true, so it is not.
void bench_parallel_region() {
  const int64_t N = 1024;
  const int workers = 2;
  set_threads(2);
  std::vector<coil::Tensor> A, B;
  std::vector<std::vector<float>> C(workers, std::vector<float>(N * N));
  for (int w = 0; w < workers; ++w) {
    A.push_back(coil::randn({N, N}));
    B.push_back(coil::randn({N, N}));
  }
  auto blas_one = [&](int64_t w) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, N, N, 1.0f, A[w].data_ptr<float>(), N,
                B[w].data_ptr<float>(), N, 0.0f, C[w].data(), N);
  };
  int worker_in_region = 0;  // do the workers see themselves inside a region (what BLAS asks)?
  coil::parallel_for(0, workers, 1, [&](int64_t lo, int64_t) {
    if (lo == 0) worker_in_region = coil::in_parallel_region() ? 1 : 0;
  });
  struct Mode {
    const char* impl;
    const char* mode;
    int threads;
    std::function<void()> fn;
  };
  const std::vector<Mode> modes = {
      {"coil", "sequential", 1,
       [&] {
         set_threads(1);
         for (int w = 0; w < workers; ++w) coil::Tensor y = coil::matmul(A[w], B[w]);
         set_threads(2);
       }},
      {"coil", "sequential", 2,
       [&] {
         for (int w = 0; w < workers; ++w) coil::Tensor y = coil::matmul(A[w], B[w]);
       }},
      {"coil", "parallel_region", 2,
       [&] {
         coil::parallel_for(0, workers, 1, [&](int64_t lo, int64_t hi) {
           for (int64_t w = lo; w < hi; ++w) coil::Tensor y = coil::matmul(A[w], B[w]);
         });
       }},
      {"openblas", "sequential", 2,
       [&] {
         for (int w = 0; w < workers; ++w) blas_one(w);
       }},
      {"openblas", "parallel_region", 2,
       [&] {
#pragma omp parallel num_threads(workers)
         blas_one(omp_get_thread_num());
       }},
  };
  std::vector<std::function<void()>> fns;
  for (const Mode& m : modes) fns.push_back(m.fn);
  auto t = bench::time_interleaved(fns, 2500);
  const double flop_g = gflops(N, N, N, 1.0) * workers;  // GFLOP/s of both products at 1 ms
  std::vector<double> g;
  for (size_t i = 0; i < modes.size(); ++i) g.push_back(flop_g / bench::median(t[i]));
  for (size_t i = 0; i < modes.size(); ++i) {
    const bool region = modes[i].mode[0] == 'p';
    std::printf(
        "bench=matmul_in_parallel_region impl=%s mode=%s workers=%d m=%lld n=%lld k=%lld "
        "threads=%d "
        "in_region=%d median_ms=%.3f gflops=%.1f speedup_vs_1thread=%.2f\n",
        modes[i].impl, modes[i].mode, workers, (long long)N, (long long)N, (long long)N,
        modes[i].threads, region ? worker_in_region : 0, bench::median(t[i]), g[i], g[i] / g[0]);
  }
  std::printf(
      "bench=matmul_in_parallel_region_summary coil_region_over_sequential=%.2f "
      "openblas_region_over_sequential=%.2f coil_region_over_openblas_region=%.2f\n",
      g[2] / g[1], g[4] / g[3], g[2] / g[4]);
  std::fflush(stdout);
}

}  // namespace

int main() {
  const int64_t T = 4096;  // tokens (batch x sequence) of a Mamba layer's Linear
  const std::vector<Case> cases = {
      {"square", 256, 256, 256, Layout::nn, false},
      {"square", 1024, 1024, 1024, Layout::nn, false},
      {"square", 2048, 2048, 2048, Layout::nn, false},
      {"square_AtB", 1024, 1024, 1024, Layout::tn, false},
      {"square_ABt", 1024, 1024, 1024, Layout::nt, false},
      // Linear 768 -> 3072: y = x W^T, dx = dy W, dW = dy^T x
      {"in_proj_fwd", T, 3072, 768, Layout::nt, true},
      {"in_proj_dx", T, 768, 3072, Layout::nn, false},
      {"in_proj_dW", 3072, 768, T, Layout::tn, false},
      // Linear 1536 -> 768
      {"out_proj_fwd", T, 768, 1536, Layout::nt, true},
      {"out_proj_dx", T, 1536, 768, Layout::nn, false},
      {"out_proj_dW", 768, 1536, T, Layout::tn, false},
  };
  // OpenBLAS picks its kernels at load time from the CPU model (DYNAMIC_ARCH); OPENBLAS_CORETYPE
  // in the environment overrides it. Both columns below use the same kernels.
  std::printf(
      "# bench_matmul: openblas_core=%s omp_max_threads=%d; ~0.4 s per case and implementation\n",
      openblas_get_corename(), omp_get_max_threads());
  std::vector<Result> results;
  bool ok = true;
  for (const Case& c : cases) {
    Operands o = make_operands(c);
    set_threads(2);
    int64_t allocs = -1;
    ok = same_result(c, o, &allocs) && ok;
    for (int threads : {1, 2}) {
      set_threads(threads);
      auto t = bench::time_interleaved(
          {[&] { coil::Tensor y = coil_gemm(c, o); }, [&] { blas_gemm(c, o); }}, 800);
      const double ms_coil = bench::median(t[0]), ms_blas = bench::median(t[1]);
      print_line("coil", c, threads, allocs, ms_coil);
      print_line("openblas", c, threads, 0, ms_blas);
      char label[160];
      std::snprintf(label, sizeof label, "%s:%lldx%lldx%lld:%s:t%d", c.name, (long long)c.m,
                    (long long)c.n, (long long)c.k, layout_name(c.layout), threads);
      // The two calls of a pair run back to back, so a burst of load from outside (this machine's
      // cores are shared) mostly hits both; the median of the pair ratios is the steadier figure.
      std::vector<double> pairs;
      for (size_t r = 0; r < t[0].size(); ++r) pairs.push_back(t[1][r] / t[0][r]);
      results.push_back({label, ms_blas / ms_coil, bench::median(pairs)});
    }
  }
  bench_parallel_region();

  std::vector<double> ratios;
  double paired_ratio_min = 1e9;
  const Result* worst = &results[0];
  for (const Result& r : results) {
    ratios.push_back(r.ratio);
    paired_ratio_min = std::min(paired_ratio_min, r.paired_ratio);
    if (r.ratio < worst->ratio) worst = &r;
  }
  std::printf(
      "bench=matmul_summary ratio_min=%.3f ratio_median=%.3f ratio_max=%.3f worst_case=%s "
      "cases=%zu "
      "paired_ratio_min=%.3f openblas_core=%s\n",
      *std::min_element(ratios.begin(), ratios.end()), bench::median(ratios),
      *std::max_element(ratios.begin(), ratios.end()), worst->label.c_str(), ratios.size(),
      paired_ratio_min, openblas_get_corename());
  return ok ? 0 : 1;
}
