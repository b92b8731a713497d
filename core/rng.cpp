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

namespace coil {
namespace {
thread_local const DrawPiece* t_piece = nullptr;
}
const DrawPiece* current_draw_piece() { return t_piece; }
DrawPieceScope::DrawPieceScope(DrawPiece piece) : piece_(std::move(piece)), prev_(t_piece) {
  t_piece = &piece_;
}
DrawPieceScope::~DrawPieceScope() { t_piece = prev_; }

void for_each_piece_run(const DrawPiece& piece, const std::vector<int64_t>& local,
                        const std::function<void(int64_t, int64_t, int64_t)>& fn) {
  const std::vector<int64_t>& g = piece.global;
  const int64_t n = static_cast<int64_t>(g.size());
  int64_t numel = 1;
  for (int64_t s : local) numel *= s;
  if (numel == 0) return;
  // k: the last dim the box does not cover whole; dims after it are whole, so each index of the
  // dims before it starts one run of local[k] * (their product) elements
  int64_t k = -1;
  for (int64_t d = 0; d < n; ++d)
    if (local[d] != g[d]) k = d;
  if (k < 0) return fn(0, 0, numel);
  std::vector<int64_t> stride(n, 1);
  for (int64_t d = n - 2; d >= 0; --d) stride[d] = stride[d + 1] * g[d + 1];
  const int64_t len = local[k] * stride[k];
  std::vector<int64_t> idx(k, 0);
  for (int64_t run = 0, start = 0; start < numel; ++run, start += len) {
    int64_t gs = piece.offsets[k] * stride[k];
    for (int64_t d = 0; d < k; ++d) gs += (piece.offsets[d] + idx[d]) * stride[d];
    fn(start, gs, len);
    for (int64_t d = k - 1; d >= 0; --d) {  // next index of the outer dims
      if (++idx[d] < local[d]) break;
      idx[d] = 0;
    }
  }
}
}  // namespace coil
