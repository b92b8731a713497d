// softmax / log_softmax (any dim but the normalised one), embedding (a sharded id dim, or the
// embedding dim sharded with the table's columns), and the ops that run on DTensors through
// other ops that have rules (mean, var, norms, losses).
#include "../sharding.h"

namespace coil::dist {
namespace {

struct Register {
  Register() {
    ShardingRule sm;
    sm.strategies = [](const OpMeta& m) { return shard_other_dims(m, m.dim_attr(), 1); };
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

    // cross_entropy(logits (N, C, d1...), target (N, d1...)): rows (and extra dims) sharded with
    // their targets; per-row losses stay sharded, their sum is Partial; the mean divides by the
    // count of non-ignored targets over all ranks, so it replicates
    ShardingRule ce;
    ce.strategies = [](const OpMeta& m) {
      const std::string red = m.attr_or<std::string>("reduction", "mean");
      std::vector<Strategy> s;
      if (red == "mean" || m.ndim(0) < 2) return s;
      for (int64_t d = 0; d < m.ndim(0); ++d) {
        if (d == 1) continue;  // classes
        const int64_t t = d == 0 ? 0 : d - 1;
        s.push_back({{Shard(d), Shard(t)}, {red == "none" ? Shard(t) : Partial()}});
      }
      return s;
    };
    ce.output_shapes = [](const OpMeta& m) {
      const std::string red = m.attr_or<std::string>("reduction", "mean");
      return std::vector<Shape>{red == "none" ? m.shapes[1] : Shape{}};
    };
    register_sharding_rule("cross_entropy", ce);

    // one_hot(ids) -> ids.shape + (num_classes): any ids dim sharded
    ShardingRule oh;
    oh.strategies = [](const OpMeta& m) {
      std::vector<Strategy> s;
      for (int64_t d = 0; d < m.ndim(0); ++d) s.push_back({{Shard(d)}, {Shard(d)}});
      return s;
    };
    oh.output_shapes = [](const OpMeta& m) {
      const int64_t c = m.attr<int64_t>("num_classes");
      COIL_CHECK(c >= 0, "one_hot: num_classes -1 (read from the data) is not supported on ",
                 "DTensors; pass the number of classes");
      Shape out = m.shapes[0];
      out.push_back(c);
      return std::vector<Shape>{out};
    };
    register_sharding_rule("one_hot", oh);

    for (const char* op : {"mean", "var", "rms_norm", "layer_norm", "mse_loss"})
      register_composite_rule(op);
  }
} reg;

}  // namespace
}  // namespace coil::dist
