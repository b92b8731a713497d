// Random ops and factories on DTensors: every placement gives, through full_tensor, exactly the
// single-process draw after the same seed, and the generators stay in step. Runs at 1, 2 and 4
// ranks.
#include "../test_util.h"

using namespace coil;
namespace dist = coil::dist;

namespace {

// Placements of a 2-d tensor on the world's mesh, and some on a 2x2 mesh at 4 ranks.
std::vector<std::pair<dist::DeviceMesh, dist::Placements>> layouts(bool partial) {
  std::vector<std::pair<dist::DeviceMesh, dist::Placements>> out;
  dist::DeviceMesh flat = dist::DeviceMesh::world();
  for (const dist::Placement& p : {dist::Replicate(), dist::Shard(0), dist::Shard(1)})
    out.push_back({flat, {p}});
  if (partial)
    for (dist::ReduceOp r : {dist::ReduceOp::kSum, dist::ReduceOp::kAvg, dist::ReduceOp::kMax})
      out.push_back({flat, {dist::Partial(r)}});
  if (dist::world_size() == 4) {
    dist::DeviceMesh grid(Shape{2, 2}, {"a", "b"});
    out.push_back({grid, {dist::Shard(0), dist::Shard(1)}});
    out.push_back({grid, {dist::Shard(1), dist::Shard(1)}});
    out.push_back({grid, {dist::Replicate(), dist::Shard(0)}});
    if (partial) out.push_back({grid, {dist::Partial(), dist::Shard(1)}});
  }
  return out;
}

bool same(const Tensor& a, const Tensor& b) {
  return a.sizes() == b.sizes() && ct::vals(a) == ct::vals(b);
}

}  // namespace

TEST_SUITE("dist") {
  TEST_CASE("random factories: each piece is the single-process draw's") {
    const Shape shape = {5, 7};  // uneven over 2 and 4 ranks
    using Single = std::function<Tensor()>;
    using Dist = std::function<Tensor(const dist::DeviceMesh&, const dist::Placements&)>;
    struct F {
      const char* name;
      Single one;
      Dist many;
    };
    const std::vector<F> fs = {
        {"rand", [&] { return rand(shape, kF64); },
         [&](auto& m, auto& p) { return dist::rand(shape, m, p, kF64); }},
        {"randn", [&] { return randn(shape); },
         [&](auto& m, auto& p) { return dist::randn(shape, m, p); }},
        {"randn bf16", [&] { return randn(shape, kBF16); },
         [&](auto& m, auto& p) { return dist::randn(shape, m, p, kBF16); }},
        {"randint", [&] { return randint(0, 100, shape); },
         [&](auto& m, auto& p) { return dist::randint(0, 100, shape, m, p); }},
        {"zeros", [&] { return zeros(shape); },
         [&](auto& m, auto& p) { return dist::zeros(shape, m, p); }},
        {"ones", [&] { return ones(shape, kF64); },
         [&](auto& m, auto& p) { return dist::ones(shape, m, p, kF64); }}};
    for (const F& f : fs) {
      CAPTURE(f.name);
      manual_seed(123);
      const Tensor ref = f.one();
      const uint64_t after = get_rng_state().offset;
      for (const auto& [mesh, p] : layouts(false)) {
        CAPTURE(dist::str(p));
        manual_seed(123);
        Tensor d = f.many(mesh, p);
        CHECK(dist::dtensor_spec(d).placements == p);
        CHECK(get_rng_state().offset == after);
        CHECK(same(dist::full_tensor(d), ref));
      }
    }
    // requires_grad makes a leaf whose gradient comes back with its placements
    Tensor w = dist::ones({4, 3}, dist::DeviceMesh::world(), {dist::Shard(0)},
                          Options(kF64).with_requires_grad());
    (w * 2.0).sum().backward();
    CHECK(same(dist::full_tensor(w.grad()), full({4, 3}, 2.0, kF64)));
  }

  TEST_CASE("uniform_, normal_, bernoulli_ on DTensors, Partial targets included") {
    const Shape shape = {6, 5};
    using Fill = std::function<void(Tensor&)>;
    const std::vector<std::pair<const char*, Fill>> fills = {
        {"uniform_", [](Tensor& t) { uniform_(t, -2, 3); }},
        {"normal_", [](Tensor& t) { normal_(t, 1, 0.5); }},
        {"bernoulli_", [](Tensor& t) { bernoulli_(t, 0.25); }}};
    for (const auto& [name, fill] : fills) {
      CAPTURE(name);
      Tensor ref = zeros(shape, kF64);
      manual_seed(9);
      fill(ref);
      for (const auto& [mesh, p] : layouts(true)) {
        CAPTURE(dist::str(p));
        Tensor d = dist::distribute_tensor(full(shape, 7.0, kF64), mesh, p);
        manual_seed(9);
        fill(d);
        CHECK(dist::dtensor_spec(d).placements == p);
        CHECK(same(dist::full_tensor(d), ref));
      }
    }
  }

  TEST_CASE("dropout keeps its input's placements and draws the single-process mask") {
    manual_seed(1);
    const Tensor x = randn({6, 9}, kF64);
    manual_seed(3);
    const Tensor ref = dropout(x, 0.4);
    for (const auto& [mesh, p] : layouts(true)) {
      CAPTURE(dist::str(p));
      Tensor d = dist::distribute_tensor(x, mesh, p);
      manual_seed(3);
      Tensor y = dropout(d, 0.4);
      CHECK(dist::dtensor_spec(y).placements == p);
      Tensor got = dist::full_tensor(y);
      // Partial(avg) and Partial(sum) reduce in a different order than one process
      CHECK((got - ref).abs().max().item<double>() <= 1e-12);
    }
  }

  TEST_CASE("random ops on DTensors: errors") {
    dist::DeviceMesh mesh = dist::DeviceMesh::world();
    ct::check_error([&] { dist::rand({4}, mesh, {dist::Partial()}); },
                    {"dist::rand: a new tensor cannot be Partial"});
    ct::check_error(
        [&] {
          dist::zeros({4}, mesh, {dist::Shard(0), dist::Shard(0)});
        },
        {"dist::zeros: 2 placements for a 1-d mesh"});
    Tensor d = dist::zeros({4, 4}, mesh, {dist::Shard(0)});
    ct::check_error([&] { dist_dispatch(op_info("selective_scan_backward"), {d}, {}); },
                    {"selective_scan_backward: runs only inside selective_scan's backward"});
    if (dist::world_size() > 1) {
      // every rank sees the mismatch (one all_reduce), so every rank throws: no hang
      manual_seed(100 + dist::rank());
      ct::check_error([&] { dist::randn({8}, mesh, {dist::Shard(0)}); },
                      {"randn: a random op on DTensors needs the same generator state on every "
                       "rank"});
      ct::check_error([&] { dropout(d, 0.5); }, {"dropout: a random op on DTensors needs"});
    }
  }
}
