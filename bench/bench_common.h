// Timing helpers shared by the benchmark programs (not part of the library).
#pragma once
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <vector>

namespace bench {

inline double now_ms() {
  using clock = std::chrono::steady_clock;
  return std::chrono::duration<double, std::milli>(clock::now().time_since_epoch()).count();
}

inline double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Runs the candidates in turn (a, b, a, b, ...) so that noise from other processes falls on all
// of them alike. Each is warmed up first; the repetition count is chosen from the warm-up time
// so the whole case takes about `budget_ms`, within [min_reps, max_reps]. Returns one list of
// per-call times (ms) per candidate.
inline std::vector<std::vector<double>> time_interleaved(
    const std::vector<std::function<void()>>& fns, double budget_ms = 600, int min_reps = 5,
    int max_reps = 2000) {
  const size_t nf = fns.size();
  double one_round = 0;
  for (const auto& f : fns) {
    f();  // first touch, caches, thread pools
    double t0 = now_ms();
    f();
    one_round += now_ms() - t0;
  }
  int reps = one_round > 0 ? static_cast<int>(budget_ms / one_round) : max_reps;
  reps = std::clamp(reps, min_reps, max_reps);
  std::vector<std::vector<double>> times(nf);
  for (auto& t : times) t.reserve(reps);
  for (int r = 0; r < reps; ++r) {
    for (size_t i = 0; i < nf; ++i) {
      double t0 = now_ms();
      fns[i]();
      times[i].push_back(now_ms() - t0);
    }
  }
  return times;
}

}  // namespace bench
