// Random ops and factories. Their pieces are drawn as pieces of one global draw (core/rng.h's
// DrawPiece), so every placement gives the single-process values:
// - factories (zeros, ones, rand, randn, randint) are made on a mesh by dist/factories.h;
// - uniform_, normal_, bernoulli_ refill a DTensor in place, keeping its placements;
// - dropout keeps its input's placements, Partial ones included: one mask on every rank makes
//   it linear with a non-negative scale, so it commutes with sum, avg, max and min.
#include "../sharding.h"

namespace coil::dist {
namespace {

struct Register {
  Register() {
    ShardingRule f;
    f.factory = true;
    f.output_shapes = [](const OpMeta& m) { return std::vector<Shape>{m.attr<Shape>("shape")}; };
    for (const char* op : {"zeros", "ones"}) register_sharding_rule(op, f);
    f.draws = true;
    for (const char* op : {"rand", "randn", "randint"}) register_sharding_rule(op, f);

    ShardingRule fill;
    fill.draws = fill.fills_in_place = true;
    fill.output_shapes = [](const OpMeta& m) { return std::vector<Shape>{m.shapes[0]}; };
    for (const char* op : {"uniform_", "normal_", "bernoulli_"}) register_sharding_rule(op, fill);

    ShardingRule drop;
    drop.draws = true;
    drop.strategies = [](const OpMeta& m) {
      // Replicate first: a replicated input stays replicated (cutting it is free, so a tie)
      std::vector<Strategy> s = {{{Replicate()}, {Replicate()}}};
      for (int64_t d = 0; d < m.ndim(0); ++d) s.push_back({{Shard(d)}, {Shard(d)}});
      for (ReduceOp r : {ReduceOp::kSum, ReduceOp::kAvg, ReduceOp::kMax, ReduceOp::kMin})
        s.push_back({{Partial(r)}, {Partial(r)}});
      return s;
    };
    drop.output_shapes = [](const OpMeta& m) { return std::vector<Shape>{m.shapes[0]}; };
    register_sharding_rule("dropout", drop);
  }
} reg;

}  // namespace
}  // namespace coil::dist
