// Counter-based RNG (Philox 4x32-10). Element i of a draw uses counter (offset + i), so the
// numbers are the same whatever the thread count or device.
#pragma once
#include <array>
#include <cstdint>
#include <functional>
#include <vector>

namespace coil {

void manual_seed(uint64_t seed);

struct PhiloxDraw {
  uint64_t seed;
  uint64_t offset;  // first counter of this draw
};
// Reserves n counters from the default generator (thread-safe).
PhiloxDraw philox_reserve(uint64_t n);

// The 4 outputs of Philox4x32-10 for (key = seed, counter).
inline std::array<uint32_t, 4> philox4x32(uint64_t seed, uint64_t counter) {
  uint32_t c0 = static_cast<uint32_t>(counter), c1 = static_cast<uint32_t>(counter >> 32), c2 = 0,
           c3 = 0;
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int r = 0; r < 10; ++r) {
    uint64_t p0 = uint64_t(0xD2511F53u) * c0, p1 = uint64_t(0xCD9E8D57u) * c2;
    uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ k0;
    uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ k1;
    c0 = n0;
    c1 = static_cast<uint32_t>(p1);
    c2 = n2;
    c3 = static_cast<uint32_t>(p0);
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return {c0, c1, c2, c3};
}

// Uniform in [0, 1) with 24 random bits; uniform in (0, 1] for logs.
inline float uint_to_unit(uint32_t x) { return static_cast<float>(x >> 8) * (1.0f / 16777216.0f); }
inline double uint_to_unit_f64(uint32_t hi, uint32_t lo) {
  uint64_t v = (static_cast<uint64_t>(hi) << 21) ^ lo;  // 53 bits
  return static_cast<double>(v & ((uint64_t(1) << 53) - 1)) * (1.0 / 9007199254740992.0);
}

}  // namespace coil

namespace coil {
// The default generator's position, for replaying a draw (checkpoint recompute).
struct RngState {
  uint64_t seed;
  uint64_t offset;
};
RngState get_rng_state();
void set_rng_state(RngState s);
}  // namespace coil

namespace coil {
// One rank's box of a larger draw (a DTensor's local piece). While a DrawPieceScope is alive on
// this thread, a random fill or dropout reserves counters for the whole `global` tensor (every
// rank reserves the same, so generators stay in step) and writes into its local output the values
// the single-process draw gives at the box that starts at `offsets`.
struct DrawPiece {
  std::vector<int64_t> global;
  std::vector<int64_t> offsets;
};
const DrawPiece* current_draw_piece();  // null outside a scope
class DrawPieceScope {
 public:
  explicit DrawPieceScope(DrawPiece piece);
  ~DrawPieceScope();
  DrawPieceScope(const DrawPieceScope&) = delete;
  DrawPieceScope& operator=(const DrawPieceScope&) = delete;

 private:
  DrawPiece piece_;
  const DrawPiece* prev_;
};
// The box `local` (sizes) of `piece` as runs contiguous in both the local and the global
// row-major order: fn(local_start, global_start, length) per run.
void for_each_piece_run(const DrawPiece& piece, const std::vector<int64_t>& local,
                        const std::function<void(int64_t, int64_t, int64_t)>& fn);
}  // namespace coil
