// Matrix products. linear(x, w, b) = x w^T + b, w (N, K):
//   rows:      x Shard(batch dim), w and b Replicate  -> Shard(same dim)
//   colwise:   x Replicate, w Shard(0), b Shard(0)    -> Shard(last)       (no communication)
//   rowwise:   x Shard(last), w Shard(1), b Partial    -> Partial(sum)     (b added once)
// matmul(a, b), a (..., M, K), b (..., K, N): Shard(M), Shard(N), Shard(K) x Shard(K) -> Partial,
// and a shared batch dim sharded on both.
// grouped_mm(x (n, K), w (E, K, N), offsets): the groups are rows of x, so rows stay whole:
// w Shard(2) -> Shard(1) (each rank its output columns), x Shard(1) and w Shard(1) -> Partial.
#include "../sharding.h"

namespace coil::dist {
namespace {

std::vector<Strategy> linear_strategies(const OpMeta& m) {
  const int64_t n = m.ndim(0);
  std::vector<Strategy> s;
  for (int64_t d = 0; d + 1 < n; ++d)
    s.push_back({{Shard(d), Replicate(), Replicate()}, {Shard(d)}});
  s.push_back({{Replicate(), Shard(0), Shard(0)}, {Shard(n - 1)}});
  s.push_back({{Shard(n - 1), Shard(1), Partial()}, {Partial()}});
  return s;
}

std::vector<Shape> linear_shape(const OpMeta& m) {
  Shape s = m.shapes[0];
  s.back() = m.shapes[1][0];
  return {s};
}

std::vector<Strategy> matmul_strategies(const OpMeta& m) {
  const int64_t na = m.ndim(0), nb = m.ndim(1);
  std::vector<Strategy> s;
  if (na < 2 || nb < 2) return s;  // vector products: replicate
  const int64_t no = std::max(na, nb);
  s.push_back({{Shard(na - 2), Replicate()}, {Shard(no - 2)}});
  s.push_back({{Replicate(), Shard(nb - 1)}, {Shard(no - 1)}});
  s.push_back({{Shard(na - 1), Shard(nb - 2)}, {Partial()}});
  if (na == nb)
    for (int64_t d = 0; d + 2 < na; ++d)
      if (m.shapes[0][d] == m.shapes[1][d]) s.push_back({{Shard(d), Shard(d)}, {Shard(d)}});
  return s;
}

std::vector<Shape> matmul_shape(const OpMeta& m) {
  const Shape &a = m.shapes[0], &b = m.shapes[1];
  if (a.size() == 1 && b.size() == 1) return {Shape{}};
  if (a.size() == 1) {
    Shape s(b.begin(), b.end() - 2);
    s.push_back(b.back());
    return {s};
  }
  if (b.size() == 1) return {Shape(a.begin(), a.end() - 1)};
  Shape batch = broadcast_shape({Shape(a.begin(), a.end() - 2), Shape(b.begin(), b.end() - 2)});
  batch.push_back(a[a.size() - 2]);
  batch.push_back(b.back());
  return {batch};
}

struct Register {
  Register() {
    ShardingRule lin;
    lin.strategies = linear_strategies;
    lin.output_shapes = linear_shape;
    register_sharding_rule("linear", lin);
    ShardingRule mm;
    mm.strategies = matmul_strategies;
    mm.output_shapes = matmul_shape;
    register_sharding_rule("matmul", mm);
    register_sharding_rule("bmm", mm);
    ShardingRule gm;
    gm.strategies = [](const OpMeta&) {
      const Placement R = Replicate();
      return std::vector<Strategy>{{{R, Shard(2), R}, {Shard(1)}},
                                   {{Shard(1), Shard(1), R}, {Partial()}}};
    };
    gm.output_shapes = [](const OpMeta& m) {
      return std::vector<Shape>{{m.shapes[0][0], m.shapes[1][2]}};
    };
    register_sharding_rule("grouped_mm", gm);
  }
} reg;

}  // namespace
}  // namespace coil::dist
