#include "stop_signal.h"

#include <signal.h>

#include <csignal>
#include <string>

#include "../core/tensor.h"
#include "../ops/creation.h"
#include "../dist/process_group.h"

namespace coil::nn {

namespace {
volatile std::sig_atomic_t g_signal = 0;

extern "C" void on_stop_signal(int sig) {
  if (g_signal != 0) {  // the second one: the default action (terminate) right away
    std::signal(sig, SIG_DFL);
    std::raise(sig);
    return;
  }
  g_signal = sig;
}
}  // namespace

void install_stop_handler() {
  struct sigaction sa = {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;  // reads and writes in progress carry on
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
}

int stop_requested() { return g_signal; }

int stop_requested_by_any_rank() {
  if (dist::world_size() == 1) return g_signal;
  Tensor s = full({1}, static_cast<double>(g_signal), Options(kI32));
  dist::all_reduce(s, dist::ReduceOp::kMax);
  return s.item<int32_t>();
}

const char* signal_name(int sig) {
  if (sig == SIGINT) return "SIGINT";
  if (sig == SIGTERM) return "SIGTERM";
  static thread_local std::string s;
  s = "signal " + std::to_string(sig);
  return s.c_str();
}

}  // namespace coil::nn
