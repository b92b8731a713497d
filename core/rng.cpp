#include "rng.h"

#include <mutex>

namespace coil {
namespace {
std::mutex g_mu;
uint64_t g_seed = 67280421310721ull;
uint64_t g_offset = 0;
}  // namespace

void manual_seed(uint64_t seed) {
  std::lock_guard<std::mutex> lk(g_mu);
  g_seed = seed;
  g_offset = 0;
}

PhiloxDraw philox_reserve(uint64_t n) {
  std::lock_guard<std::mutex> lk(g_mu);
  PhiloxDraw d{g_seed, g_offset};
  g_offset += n;
  return d;
}

}  // namespace coil

namespace coil {
RngState get_rng_state() {
  std::lock_guard<std::mutex> lk(g_mu);
  return {g_seed, g_offset};
}
void set_rng_state(RngState s) {
  std::lock_guard<std::mutex> lk(g_mu);
  g_seed = s.seed;
  g_offset = s.offset;
}
}  // namespace coil
