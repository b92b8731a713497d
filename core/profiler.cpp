#include "profiler.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <sstream>

#include "device.h"

namespace coil::profiler {

namespace detail {
std::atomic<bool> g_on{false};
}

namespace {

struct Table {
  std::mutex mu;
  std::map<std::pair<std::string, bool>, Entry> rows;
};
Table& table() {
  static Table* t = new Table();  // never destroyed: the exit report reads it
  return *t;
}
thread_local int t_depth = 0;
thread_local bool t_backward = false;

double now_ms() {
  return std::chrono::duration<double, std::milli>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// Waits for every GPU's queued work, so that a call's time is its own.
void sync_devices() {
  static const int n = cuda_device_count();
  for (int d = 0; d < n; ++d) synchronize(Device(kCUDA, d));
}

// COIL_PROFILE=1: on from the start, the report on stderr at exit.
struct FromEnvironment {
  FromEnvironment() {
    const char* e = std::getenv("COIL_PROFILE");
    if (e && std::string(e) == "1") {
      enable(true);
      std::atexit([] { std::fputs(report().c_str(), stderr); });
    }
  }
} g_from_environment;

}  // namespace

void enable(bool on) { detail::g_on.store(on, std::memory_order_relaxed); }

void reset() {
  Table& t = table();
  std::lock_guard<std::mutex> lk(t.mu);
  t.rows.clear();
}

std::vector<Entry> entries() {
  Table& t = table();
  std::vector<Entry> r;
  {
    std::lock_guard<std::mutex> lk(t.mu);
    for (const auto& [key, e] : t.rows) r.push_back(e);
  }
  std::stable_sort(r.begin(), r.end(),
                   [](const Entry& a, const Entry& b) { return a.total_ms > b.total_ms; });
  return r;
}

std::string report() {
  const std::vector<Entry> es = entries();
  double total = 0;
  for (const Entry& e : es) total += e.total_ms;
  std::ostringstream os;
  char line[512];
  for (const Entry& e : es) {
    std::snprintf(line, sizeof(line),
                  "profile op=%s phase=%s calls=%lld total_ms=%.3f share=%.3f\n", e.name.c_str(),
                  e.backward ? "bwd" : "fwd", static_cast<long long>(e.calls), e.total_ms,
                  total > 0 ? e.total_ms / total : 0.0);
    os << line;
  }
  std::snprintf(line, sizeof(line), "profile total_ms=%.3f\n", total);
  os << line;
  return os.str();
}

void Scope::begin() {
  outer_ = t_depth++ == 0;
  if (!outer_) return;
  sync_devices();
  t0_ = now_ms();
}

void Scope::end() {
  --t_depth;
  if (!outer_) return;
  sync_devices();
  const double ms = now_ms() - t0_;
  Table& t = table();
  std::lock_guard<std::mutex> lk(t.mu);
  Entry& e = t.rows[{name_, t_backward}];
  e.name = name_;
  e.backward = t_backward;
  e.calls++;
  e.total_ms += ms;
}

BackwardPhase::BackwardPhase() : prev_(t_backward) { t_backward = true; }
BackwardPhase::~BackwardPhase() { t_backward = prev_; }

}  // namespace coil::profiler
