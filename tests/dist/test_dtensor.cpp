// DeviceMesh and DTensor at any world size (a world of one, mpirun -np 2 and 4). Every rank
// builds the same global tensors from a seed, so each can check its piece and the whole.
#include <random>

#include "../test_util.h"

using namespace coil;
namespace dist = coil::dist;
using dist::Partial;
using dist::Replicate;
using dist::Shard;

namespace {

Tensor global_tensor(const Shape& s, uint64_t seed) {
  Tensor x = zeros(s, Options(kF64));
  std::mt19937_64 g(seed);
  std::uniform_int_distribution<int> u(-8, 8);
  for (int64_t i = 0; i < x.numel(); ++i) x.data_ptr<double>()[i] = u(g) * 0.25;
  return x;
}

bool equal(const Tensor& a, const Tensor& b) {
  if (a.sizes() != b.sizes()) return false;
  Tensor x = a.contiguous(), y = b.contiguous();
  for (int64_t i = 0; i < x.numel(); ++i)
    if (x.data_ptr<double>()[i] != y.data_ptr<double>()[i]) return false;
  return true;
}

// The piece of `global` a rank holds under placements without Partial.
Tensor expected_piece(const Tensor& global, const dist::DeviceMesh& mesh,
                      const dist::Placements& p) {
  dist::LocalShard s = dist::local_shard(global.sizes(), mesh, p);
  Tensor x = global;
  for (int64_t d = 0; d < global.dim(); ++d) x = x.narrow(d, s.offsets[d], s.sizes[d]);
  return x.contiguous();
}

std::vector<dist::Placements> one_dim_placements() {
  return {{Shard(0)}, {Shard(1)}, {Replicate()}, {Partial()}};
}

}  // namespace

TEST_SUITE("dist") {
  TEST_CASE("DeviceMesh: coordinates, groups per dim, slicing") {
    const int n = dist::world_size(), me = dist::rank();
    dist::DeviceMesh flat = dist::DeviceMesh::world("dp");
    CHECK(flat.ndim() == 1);
    CHECK(flat.size() == n);
    CHECK(flat.coordinate(0) == me);
    CHECK(flat.group("dp")->size() == n);
    CHECK_THROWS_WITH_AS(flat.dim_index("tp"), doctest::Contains("no dim named 'tp'"), Error);
    if (n == 4) {
      dist::DeviceMesh mesh({2, 2}, {"dp", "tp"});
      CHECK(mesh.coordinate() == std::vector<int64_t>{me / 2, me % 2});
      CHECK(mesh.group("tp")->world_ranks() == std::vector<int>{me / 2 * 2, me / 2 * 2 + 1});
      CHECK(mesh.group("dp")->world_ranks() == std::vector<int>{me % 2, me % 2 + 2});
      dist::DeviceMesh tp = mesh["tp"];
      CHECK(tp.ndim() == 1);
      CHECK(tp.ranks() == mesh.group("tp")->world_ranks());
      CHECK(mesh.str() == "DeviceMesh(dp=2, tp=2)");
      // a mesh over a subset: ranks 1 and 3
      dist::DeviceMesh odd({2}, {"x"}, {1, 3});
      CHECK(odd.contains_me() == (me % 2 == 1));
      if (!odd.contains_me())
        CHECK_THROWS_WITH_AS(odd.coordinate(), doctest::Contains("is not in"), Error);
    }
    CHECK_THROWS_WITH_AS(dist::DeviceMesh({n + 1}, {"x"}), doctest::Contains("holds"), Error);
  }

  TEST_CASE("distribute_tensor and full_tensor: every 1-d placement, uneven and empty shards") {
    dist::DeviceMesh mesh = dist::DeviceMesh::world();
    Tensor g = global_tensor({5, 3}, 11);  // 3 columns over 4 ranks: one empty shard
    for (const auto& p : one_dim_placements()) {
      CAPTURE(dist::str(p));
      Tensor dt = dist::distribute_tensor(g, mesh, p);
      CHECK(dist::is_dtensor(dt));
      CHECK(dist::dtensor_spec(dt).global_shape == g.sizes());
      if (!p[0].is_partial()) CHECK(equal(dist::to_local(dt), expected_piece(g, mesh, p)));
      CHECK(equal(dist::full_tensor(dt), g));
    }
  }

  TEST_CASE("redistribute: every pair of 1-d placements gives the same global tensor") {
    dist::DeviceMesh mesh = dist::DeviceMesh::world();
    Tensor g = global_tensor({7, 3}, 12);
    for (const auto& src : one_dim_placements())
      for (const auto& dst : one_dim_placements()) {
        CAPTURE(dist::str(src));
        CAPTURE(dist::str(dst));
        Tensor y = dist::redistribute(dist::distribute_tensor(g, mesh, src), dst);
        CHECK(dist::dtensor_spec(y).placements == dst);
        if (!dst[0].is_partial()) CHECK(equal(dist::to_local(y), expected_piece(g, mesh, dst)));
        CHECK(equal(dist::full_tensor(y), g));
      }
  }

  TEST_CASE("redistribute on a 2x2 mesh: a seeded sample of placement pairs") {
    if (dist::world_size() != 4) return;
    dist::DeviceMesh mesh({2, 2}, {"dp", "tp"});
    const std::vector<dist::Placement> opts = {Shard(0), Shard(1), Replicate(), Partial()};
    Tensor g = global_tensor({5, 6}, 13);
    std::mt19937 rng(7);  // the same sample on every rank
    for (int k = 0; k < 40; ++k) {
      dist::Placements src = {opts[rng() % 4], opts[rng() % 4]};
      dist::Placements dst = {opts[rng() % 4], opts[rng() % 4]};
      CAPTURE(dist::str(src));
      CAPTURE(dist::str(dst));
      Tensor y = dist::redistribute(dist::distribute_tensor(g, mesh, src), dst);
      if (!dst[0].is_partial() && !dst[1].is_partial())
        CHECK(equal(dist::to_local(y), expected_piece(g, mesh, dst)));
      CHECK(equal(dist::full_tensor(y), g));
    }
  }

  TEST_CASE("from_local finds the global shape; redistribute is differentiable") {
    dist::DeviceMesh mesh = dist::DeviceMesh::world();
    Tensor g = global_tensor({6, 5}, 14), w = global_tensor({6, 5}, 15);
    for (const auto& src : one_dim_placements())
      for (const auto& dst : one_dim_placements()) {
        CAPTURE(dist::str(src));
        CAPTURE(dist::str(dst));
        Tensor piece = dist::to_local(dist::distribute_tensor(g, mesh, src)).clone();
        piece.requires_grad_(true);
        Tensor dt = dist::from_local(piece, mesh, src);
        CHECK(dist::dtensor_spec(dt).global_shape == g.sizes());
        // the same loss on every rank: sum(full * w); d/d(global) = w
        Tensor full = dist::full_tensor(dist::redistribute(dt, dst));
        (full * w).sum().backward();
        // a Shard or Replicate piece's gradient is its piece of w; a Partial piece's is all of w
        Tensor want = src[0].is_partial() ? w : expected_piece(w, mesh, src);
        CHECK(equal(piece.grad(), want));
      }
  }

  TEST_CASE("DTensor errors name the call and the placements") {
    dist::DeviceMesh mesh = dist::DeviceMesh::world();
    Tensor g = global_tensor({4, 2}, 16);
    CHECK_THROWS_WITH_AS(dist::distribute_tensor(g, mesh, {Shard(0), Shard(1)}),
                         doctest::Contains("2 placements for a mesh of 1 dims"), Error);
    CHECK_THROWS_WITH_AS(dist::distribute_tensor(g, mesh, {Shard(2)}),
                         doctest::Contains("Shard(2) is out of range"), Error);
    CHECK_THROWS_WITH_AS(dist::to_local(g), doctest::Contains("is not a DTensor"), Error);
    CHECK_THROWS_WITH_AS(
        dist::distribute_tensor(zeros({2}, Options(kI64)), mesh, {Partial(dist::ReduceOp::kAvg)}),
        doctest::Contains("needs a floating dtype"), Error);
    if (dist::world_size() > 1) {
      // all rows on the last rank: not torch.chunk's pieces anywhere
      const int n = dist::world_size();
      Tensor wrong = zeros({dist::rank() == n - 1 ? 4 * n : 0, 2}, Options(kF64));
      CHECK_THROWS_WITH_AS(dist::from_local(wrong, mesh, {Shard(0)}),
                           doctest::Contains("is not its [Shard(0)] piece"), Error);
    }
  }
}
