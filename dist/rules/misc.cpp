// softmax / log_softmax (any dim but the normalised one), embedding (a sharded id dim, or the
// embedding dim sharded with the table's columns), and the ops that run on DTensors through
// other ops that have rules (mean, var, norms, losses).
#include "../sharding.h"

namespace coil::dist {
namespace {

struct Register {
  Register() {
    ShardingRule sm;
    sm.strategies = [](const OpMeta& m) {
      const int64_t dim = wrap_dim(m.attr<int64_t>("dim"), m.ndim(0));
      std::vector<Strategy> s;
      for (int64_t d = 0; d < m.ndim(0); ++d)
        if (d != dim) s.push_back({{Shard(d)}, {Shard(d)}});
      return s;
    };
    sm.output_shapes = [](const OpMeta& m) { return std::vector<Shape>{m.shapes[0]}; };
    register_sharding_rule("softmax", sm);
    register_sharding_rule("log_softmax", sm);

    // embedding(weight (V, D), ids) -> ids.shape + (D)
    ShardingRule emb;
    emb.strategies = [](const OpMeta& m) {
      const int64_t n = m.ndim(1);
      std::vector<Strategy> s;
      for (int64_t d = 0; d < n; ++d) s.push_back({{Replicate(), Shard(d)}, {Shard(d)}});
      s.push_back({{Shard(1), Replicate()}, {Shard(n)}});
      return s;
    };
    emb.output_shapes = [](const OpMeta& m) {
      Shape out = m.shapes[1];
      out.push_back(m.shapes[0][1]);
      return std::vector<Shape>{out};
    };
    register_sharding_rule("embedding", emb);

    for (const char* op : {"mean", "var", "rms_norm", "layer_norm", "mse_loss"})
      register_composite_rule(op);
  }
} reg;

}  // namespace
}  // namespace coil::dist
