// Reductions over dims: a dim that is kept may stay sharded; a reduced sharded dim leaves the
// result Partial (sum: Partial(sum), amax: Partial(max)), which the next op or redistribute
// reduces across ranks. amax, mean and logsumexp over a sharded dim replicate it: amax's
// gradient must reach only the rank holding the global maximum, which the local backward
// cannot know.
#include <algorithm>

#include "../sharding.h"

namespace coil::dist {
namespace {

std::vector<bool> reduced(const OpMeta& m, const Shape& dims) {
  const int64_t n = m.ndim(0);
  std::vector<bool> r(n, dims.empty());
  for (int64_t d : dims) r[wrap_dim(d, n)] = true;
  return r;
}

Shape reduced_shape(const OpMeta& m, const std::vector<bool>& r, bool keepdim) {
  Shape s;
  for (int64_t d = 0; d < m.ndim(0); ++d)
    if (!r[d])
      s.push_back(m.shapes[0][d]);
    else if (keepdim)
      s.push_back(1);
  return s;
}

// Output position of input dim d.
int64_t out_dim(const std::vector<bool>& r, int64_t d, bool keepdim) {
  if (keepdim) return d;
  return d - std::count(r.begin(), r.begin() + d, true);
}

std::vector<Strategy> reduce_strategies(const OpMeta& m, const std::vector<bool>& r, bool keepdim,
                                        int outputs, const Placement* on_reduced) {
  std::vector<Strategy> s;
  for (int64_t d = 0; d < m.ndim(0); ++d) {
    if (!r[d])
      s.push_back({{Shard(d)}, std::vector<Placement>(outputs, Shard(out_dim(r, d, keepdim)))});
    else if (on_reduced)
      s.push_back({{Shard(d)}, std::vector<Placement>(outputs, *on_reduced)});
  }
  if (on_reduced && on_reduced->is_partial() && on_reduced->op == ReduceOp::kSum &&
      is_floating(m.dtypes[0]))
    s.push_back({{Partial()}, {Partial()}});  // a sum of Partial(sum) pieces
  return s;
}

void register_dims(const char* op, const Placement* on_reduced) {
  ShardingRule rule;
  rule.strategies = [on_reduced](const OpMeta& m) {
    const bool keep = m.attr<bool>("keepdim");
    return reduce_strategies(m, reduced(m, m.attr<Shape>("dims")), keep, 1, on_reduced);
  };
  rule.output_shapes = [](const OpMeta& m) {
    return std::vector<Shape>{
        reduced_shape(m, reduced(m, m.attr<Shape>("dims")), m.attr<bool>("keepdim"))};
  };
  register_sharding_rule(op, rule);
}

void register_dim(const char* op, int outputs) {
  auto red = [](const OpMeta& m) {
    std::vector<bool> r(m.ndim(0), false);
    r[m.dim_attr()] = true;
    return r;
  };
  ShardingRule rule;
  rule.strategies = [red, outputs](const OpMeta& m) {
    return reduce_strategies(m, red(m), m.attr<bool>("keepdim"), outputs, nullptr);
  };
  rule.output_shapes = [red, outputs](const OpMeta& m) {
    return std::vector<Shape>(outputs, reduced_shape(m, red(m), m.attr<bool>("keepdim")));
  };
  register_sharding_rule(op, rule);
}

const Placement kPartialSum = Partial(ReduceOp::kSum);

struct Register {
  Register() {
    register_dims("sum", &kPartialSum);
    register_dims("amax", nullptr);
    register_dims("mean", nullptr);
    register_dims("logsumexp", nullptr);
    register_dim("max", 2);
    register_dim("min", 2);
    // argmax / argmin: along a dim, the other dims may stay sharded; over all elements (no
    // "dim" attribute), replicate
    for (const char* op : {"argmax", "argmin"}) {
      ShardingRule rule;
      auto has_dim = [](const OpMeta& m) {
        for (const Attr& a : *m.attrs)
          if (a.name == "dim") return true;
        return false;
      };
      auto red = [has_dim](const OpMeta& m) {
        std::vector<bool> r(m.ndim(0), !has_dim(m));
        if (has_dim(m) && m.ndim(0) > 0) r[m.dim_attr()] = true;
        return r;
      };
      rule.strategies = [has_dim, red](const OpMeta& m) {
        if (!has_dim(m)) return std::vector<Strategy>{};
        return reduce_strategies(m, red(m), m.attr<bool>("keepdim"), 1, nullptr);
      };
      rule.output_shapes = [red](const OpMeta& m) {
        return std::vector<Shape>{reduced_shape(m, red(m), m.attr<bool>("keepdim"))};
      };
      register_sharding_rule(op, rule);
    }
  }
} reg;

}  // namespace
}  // namespace coil::dist
