#include "autocast.h"

#include <atomic>

#include "error.h"

namespace coil {

namespace {
thread_local AutocastState t_autocast;
std::atomic<bool> g_allow_tf32{false};
}  // namespace

AutocastState autocast_state() { return t_autocast; }
void set_autocast_state(AutocastState s) { t_autocast = s; }

AutocastGuard::AutocastGuard(DType dtype, bool enabled) : prev_(t_autocast) {
  COIL_CHECK(dtype == kBF16 || dtype == kF16, "AutocastGuard: the lower precision must be ",
             "bfloat16 or float16, got ", dtype);
  t_autocast = {enabled, dtype};
}
AutocastGuard::~AutocastGuard() { t_autocast = prev_; }

void set_allow_tf32(bool on) { g_allow_tf32 = on; }
bool allow_tf32() { return g_allow_tf32; }

}  // namespace coil
