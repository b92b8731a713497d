// Where the time goes, per op: a profile of every kernel coil dispatches (CPU and CUDA).
//
//   COIL_PROFILE=1 ./train_lm ...          // the table goes to stderr at exit
//   coil::profiler::enable();  ...;  std::cout << coil::profiler::report();
//
// Each kernel call through the op table is timed from start to end with the devices
// synchronised around it, so a GPU kernel's time is its own (and the run is slower: use it to
// find the ops worth speeding up, not for the run's total speed). Calls nested inside another
// timed call count toward the outer one only. Calls made while the autograd engine runs a
// backward are listed apart (phase bwd).
#pragma once
#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

namespace coil::profiler {

namespace detail {
extern std::atomic<bool> g_on;
}
inline bool enabled() { return detail::g_on.load(std::memory_order_relaxed); }
void enable(bool on = true);
void reset();

struct Entry {
  std::string name;
  bool backward = false;
  int64_t calls = 0;
  double total_ms = 0;
};
std::vector<Entry> entries();  // largest total first
// One line per entry: "profile op=<name> phase=<fwd|bwd> calls=<n> total_ms=<t> share=<s>",
// then "profile total_ms=<t>".
std::string report();

// Times its lifetime as a call of `name` (outermost scopes only); nothing when disabled.
class Scope {
 public:
  explicit Scope(const char* name) : name_(enabled() ? name : nullptr) {
    if (name_) begin();
  }
  ~Scope() {
    if (name_) end();
  }
  Scope(const Scope&) = delete;
  Scope& operator=(const Scope&) = delete;

 private:
  void begin();
  void end();
  const char* name_;
  bool outer_ = false;
  double t0_ = 0;
};

// Marks the calls of its lifetime as the backward's (the autograd engine holds one).
class BackwardPhase {
 public:
  BackwardPhase();
  ~BackwardPhase();
  BackwardPhase(const BackwardPhase&) = delete;
  BackwardPhase& operator=(const BackwardPhase&) = delete;

 private:
  bool prev_;
};

}  // namespace coil::profiler
