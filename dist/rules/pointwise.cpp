// Pointwise ops: unary ones keep any Shard; binary ones (and where) broadcast, so an output dim
// may be sharded when every input that has it at full size is sharded there too. Sums and
// differences of Partial(sum) inputs stay Partial, and so do products and quotients with one
// Partial factor (the ops are linear in it).
#include "../sharding.h"

namespace coil::dist {
namespace {

std::vector<Shape> same_shape(const OpMeta& m) { return {m.shapes[0]}; }

std::vector<Strategy> unary_strategies(const OpMeta& m, bool linear) {
  std::vector<Strategy> s;
  for (int64_t d = 0; d < m.ndim(0); ++d) s.push_back({{Shard(d)}, {Shard(d)}});
  if (linear && is_floating(m.dtypes[0])) s.push_back({{Partial()}, {Partial()}});
  return s;
}

// Output dim od sharded: each input shards its aligned dim if it has it at full size, else
// stays Replicate (a broadcast input is the same for every piece).
std::vector<Strategy> broadcast_strategies(const OpMeta& m, const std::string& op) {
  const Shape out = broadcast_shape(m.shapes);
  const int64_t n = static_cast<int64_t>(out.size());
  std::vector<Strategy> s;
  const size_t k = m.shapes.size();
  for (int64_t od = 0; od < n; ++od) {
    Strategy st{std::vector<Placement>(k, Replicate()), {Shard(od)}};
    for (size_t i = 0; i < k; ++i) {
      const int64_t d = od - (n - m.ndim(i));
      if (d >= 0 && m.shapes[i][d] == out[od] && out[od] != 1) st.inputs[i] = Shard(d);
    }
    s.push_back(st);
  }
  if (k == 2 && is_floating(m.dtypes[0]) && is_floating(m.dtypes[1])) {
    if (op == "add" || op == "sub") s.push_back({{Partial(), Partial()}, {Partial()}});
    if (op == "mul" || op == "div") s.push_back({{Partial(), Replicate()}, {Partial()}});
    if (op == "mul") s.push_back({{Replicate(), Partial()}, {Partial()}});
  }
  return s;
}

struct Register {
  Register() {
    for (const char* op :
         {"abs",   "clamp",       "erf",        "exp",        "gelu",   "isfinite", "log",
          "log1p", "logical_not", "pow_scalar", "reciprocal", "relu",   "rsqrt",    "sigmoid",
          "sign",  "silu",        "softplus",   "sqrt",       "square", "tanh"}) {
      ShardingRule r;
      r.strategies = [](const OpMeta& m) { return unary_strategies(m, false); };
      r.output_shapes = same_shape;
      register_sharding_rule(op, r);
    }
    for (const char* op : {"neg", "clone", "to_dtype"}) {
      ShardingRule r;
      r.strategies = [](const OpMeta& m) { return unary_strategies(m, true); };
      r.output_shapes = same_shape;
      register_sharding_rule(op, r);
    }
    for (const char* op : {"add", "sub", "mul", "div", "eq", "ne", "lt", "le", "gt", "ge",
                           "maximum", "minimum", "pow", "logical_and", "logical_or", "where"}) {
      ShardingRule r;
      const std::string name = op;
      r.strategies = [name](const OpMeta& m) { return broadcast_strategies(m, name); };
      r.output_shapes = [](const OpMeta& m) {
        return std::vector<Shape>{broadcast_shape(m.shapes)};
      };
      register_sharding_rule(op, r);
    }
    // in place: the dispatcher computes the out-of-place result and copies it into the target
    for (const char* op : {"add_", "copy_", "fill_"}) {
      ShardingRule r;
      r.output_shapes = same_shape;
      register_sharding_rule(op, r);
    }
  }
} reg;

}  // namespace
}  // namespace coil::dist
