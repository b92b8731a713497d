// Grad mode: whether ops record the graph (per thread, like PyTorch).
#pragma once

namespace coil {

struct GradMode {
  static bool is_enabled();
  static void set_enabled(bool on);
};

// Sets grad mode for a scope and restores the previous mode after it.
class GradModeGuard {
 public:
  explicit GradModeGuard(bool on) : prev_(GradMode::is_enabled()) { GradMode::set_enabled(on); }
  ~GradModeGuard() { GradMode::set_enabled(prev_); }
  GradModeGuard(const GradModeGuard&) = delete;
  GradModeGuard& operator=(const GradModeGuard&) = delete;

 private:
  bool prev_;
};

// Disables graph recording in a scope: { NoGradGuard g; ... }
struct NoGradGuard : GradModeGuard {
  NoGradGuard() : GradModeGuard(false) {}
};
struct EnableGradGuard : GradModeGuard {
  EnableGradGuard() : GradModeGuard(true) {}
};

}  // namespace coil
