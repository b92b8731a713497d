// Views. A sharded dim survives a view when it maps to one output dim of the same size with
// the same number of elements before it (view/reshape), or moves with the dims (permute,
// unsqueeze, expand of other dims); slice and select keep every dim but their own.
#include <algorithm>

#include "../sharding.h"

namespace coil::dist {
namespace {

int64_t numel(const Shape& s, size_t end) {
  int64_t n = 1;
  for (size_t i = 0; i < end; ++i) n *= s[i];
  return n;
}

Shape infer_shape(const Shape& in, Shape out) {
  int64_t known = 1, neg = -1;
  for (size_t i = 0; i < out.size(); ++i)
    if (out[i] == -1)
      neg = static_cast<int64_t>(i);
    else
      known *= out[i];
  if (neg >= 0) out[neg] = known ? numel(in, in.size()) / known : 0;
  return out;
}

std::vector<Strategy> reshape_strategies(const OpMeta& m) {
  const Shape& in = m.shapes[0];
  const Shape out = infer_shape(in, m.attr<Shape>("shape"));
  std::vector<Strategy> s;
  for (size_t d = 0; d < in.size(); ++d)
    for (size_t e = 0; e < out.size(); ++e)
      if (in[d] == out[e] && in[d] > 1 && numel(in, d) == numel(out, e))
        s.push_back({{Shard(d)}, {Shard(e)}});
  return s;
}

struct Register {
  Register() {
    ShardingRule r;
    r.strategies = reshape_strategies;
    r.output_shapes = [](const OpMeta& m) {
      return std::vector<Shape>{infer_shape(m.shapes[0], m.attr<Shape>("shape"))};
    };
    r.local_shape_attr = "shape";
    register_sharding_rule("view", r);
    register_sharding_rule("reshape", r);

    ShardingRule p;
    p.strategies = [](const OpMeta& m) {
      const Shape dims = m.attr<Shape>("dims");
      std::vector<Strategy> s;
      for (size_t pos = 0; pos < dims.size(); ++pos)
        s.push_back({{Shard(wrap_dim(dims[pos], m.ndim(0)))}, {Shard(pos)}});
      return s;
    };
    p.output_shapes = [](const OpMeta& m) {
      const Shape dims = m.attr<Shape>("dims");
      Shape out;
      for (int64_t d : dims) out.push_back(m.shapes[0][wrap_dim(d, m.ndim(0))]);
      return std::vector<Shape>{out};
    };
    register_sharding_rule("permute", p);

    ShardingRule u;
    u.strategies = [](const OpMeta& m) {
      const int64_t at = m.dim_attr(1);
      std::vector<Strategy> s;
      for (int64_t d = 0; d < m.ndim(0); ++d)
        s.push_back({{Shard(d)}, {Shard(d >= at ? d + 1 : d)}});
      return s;
    };
    u.output_shapes = [](const OpMeta& m) {
      Shape out = m.shapes[0];
      const int64_t at = m.dim_attr(1);
      out.insert(out.begin() + at, 1);
      return std::vector<Shape>{out};
    };
    register_sharding_rule("unsqueeze", u);

    ShardingRule e;
    auto expanded = [](const OpMeta& m) {
      Shape out = m.attr<Shape>("shape");
      const int64_t off = static_cast<int64_t>(out.size()) - m.ndim(0);
      for (int64_t d = 0; d < m.ndim(0); ++d)
        if (out[d + off] == -1) out[d + off] = m.shapes[0][d];
      return out;
    };
    e.strategies = [expanded](const OpMeta& m) {
      const Shape out = expanded(m);
      const int64_t off = static_cast<int64_t>(out.size()) - m.ndim(0);
      std::vector<Strategy> s;
      for (int64_t d = 0; d < m.ndim(0); ++d)
        if (m.shapes[0][d] == out[d + off] && out[d + off] > 1)
          s.push_back({{Shard(d)}, {Shard(d + off)}});
      return s;
    };
    e.output_shapes = [expanded](const OpMeta& m) { return std::vector<Shape>{expanded(m)}; };
    e.local_shape_attr = "shape";
    register_sharding_rule("expand", e);

    ShardingRule sl;
    sl.strategies = [](const OpMeta& m) { return shard_other_dims(m, m.dim_attr(), 1); };
    sl.output_shapes = [](const OpMeta& m) {
      const int64_t dim = m.dim_attr();
      const int64_t n = m.shapes[0][dim], step = m.attr<int64_t>("step");
      auto clampi = [n](int64_t v) { return std::clamp<int64_t>(v < 0 ? v + n : v, 0, n); };
      const int64_t a = clampi(m.attr<int64_t>("start")), b = clampi(m.attr<int64_t>("end"));
      Shape out = m.shapes[0];
      out[dim] = b > a ? (b - a + step - 1) / step : 0;
      return std::vector<Shape>{out};
    };
    register_sharding_rule("slice", sl);

    ShardingRule se;
    se.strategies = [](const OpMeta& m) { return shard_other_dims(m, m.dim_attr(), 1, -1); };
    se.output_shapes = [](const OpMeta& m) {
      Shape out = m.shapes[0];
      out.erase(out.begin() + m.dim_attr());
      return std::vector<Shape>{out};
    };
    register_sharding_rule("select", se);
  }
} reg;

}  // namespace
}  // namespace coil::dist
