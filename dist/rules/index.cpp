// Indexing along a dim (index_select, gather, scatter_add, index_add), padding and
// repeat_interleave: every dim but the indexed, padded or repeated one may stay sharded (the
// index, for gather and scatter_add, sharded with it). Factories take no tensor input, so they
// never meet a DTensor: distribute their result with distribute_tensor.
#include "../sharding.h"

namespace coil::dist {
namespace {

const Placement R = Replicate();

struct Register {
  Register() {
    // index_select(x, index) -> x with dim resized to the index's length
    ShardingRule is;
    is.strategies = [](const OpMeta& m) {
      std::vector<Strategy> s;
      for (int64_t d = 0; d < m.ndim(0); ++d)
        if (d != m.dim_attr()) s.push_back({{Shard(d), R}, {Shard(d)}});
      return s;
    };
    is.output_shapes = [](const OpMeta& m) {
      Shape out = m.shapes[0];
      out[m.dim_attr()] = m.shapes[1].empty() ? 1 : m.shapes[1][0];
      return std::vector<Shape>{out};
    };
    register_sharding_rule("index_select", is);

    // gather(x, index) -> index's shape; x and index sharded together off dim
    ShardingRule ga;
    ga.strategies = [](const OpMeta& m) {
      std::vector<Strategy> s;
      for (int64_t d = 0; d < m.ndim(0); ++d)
        if (d != m.dim_attr() && m.shapes[0][d] == m.shapes[1][d])
          s.push_back({{Shard(d), Shard(d)}, {Shard(d)}});
      return s;
    };
    ga.output_shapes = [](const OpMeta& m) { return std::vector<Shape>{m.shapes[1]}; };
    register_sharding_rule("gather", ga);

    // scatter_add(x, index, src) and index_add(x, index, src) -> x's shape
    ShardingRule sa;
    sa.strategies = [](const OpMeta& m) {
      std::vector<Strategy> s;
      for (int64_t d = 0; d < m.ndim(0); ++d)
        if (d != m.dim_attr() && m.shapes[0][d] == m.shapes[1][d] &&
            m.shapes[2][d] == m.shapes[0][d])
          s.push_back({{Shard(d), Shard(d), Shard(d)}, {Shard(d)}});
      return s;
    };
    sa.output_shapes = [](const OpMeta& m) { return std::vector<Shape>{m.shapes[0]}; };
    register_sharding_rule("scatter_add", sa);
    ShardingRule ia;
    ia.strategies = [](const OpMeta& m) {
      std::vector<Strategy> s;
      for (int64_t d = 0; d < m.ndim(0); ++d)
        if (d != m.dim_attr()) s.push_back({{Shard(d), R, Shard(d)}, {Shard(d)}});
      return s;
    };
    ia.output_shapes = sa.output_shapes;
    register_sharding_rule("index_add", ia);

    // pad(x): pads are (before, after) pairs from the last dim backwards
    ShardingRule pd;
    pd.strategies = [](const OpMeta& m) {
      const Shape pads = m.attr<Shape>("pads");
      std::vector<Strategy> s;
      for (int64_t d = 0; d < m.ndim(0); ++d) {
        const int64_t k = m.ndim(0) - 1 - d;  // pair index of dim d
        const bool padded = 2 * k + 1 < static_cast<int64_t>(pads.size()) &&
                            (pads[2 * k] != 0 || pads[2 * k + 1] != 0);
        if (!padded) s.push_back({{Shard(d)}, {Shard(d)}});
      }
      return s;
    };
    pd.output_shapes = [](const OpMeta& m) {
      const Shape pads = m.attr<Shape>("pads");
      Shape out = m.shapes[0];
      for (size_t k = 0; 2 * k + 1 < pads.size(); ++k)
        out[out.size() - 1 - k] += pads[2 * k] + pads[2 * k + 1];
      return std::vector<Shape>{out};
    };
    register_sharding_rule("pad", pd);

    // repeat_interleave(x[, repeats tensor]) along dim
    ShardingRule ri;
    ri.strategies = [](const OpMeta& m) {
      std::vector<Strategy> s;
      if (m.ndim(0) == 0) return s;
      for (int64_t d = 0; d < m.ndim(0); ++d)
        if (d != m.dim_attr()) {
          std::vector<Placement> in{Shard(d)};
          if (m.shapes.size() > 1) in.push_back(R);
          s.push_back({in, {Shard(d)}});
        }
      return s;
    };
    ri.output_shapes = [](const OpMeta& m) -> std::vector<Shape> {
      // a repeats tensor's total is data, not shape: only the int form is shape-known here
      COIL_CHECK(m.shapes.size() == 1, "repeat_interleave: a tensor of repeats on DTensors is ",
                 "not supported; pass an int");
      Shape out = m.shapes[0].empty() ? Shape{1} : m.shapes[0];
      out[m.shapes[0].empty() ? 0 : m.dim_attr()] *= m.attr<int64_t>("repeats");
      return {out};
    };
    register_sharding_rule("repeat_interleave", ri);
  }
} reg;

}  // namespace
}  // namespace coil::dist
