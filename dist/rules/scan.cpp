// The SSM ops on a non-sharded sequence: batch-sharded (every per-batch input split with it,
// parameters replicated) or channel-sharded (channels, or heads for ssd_scan with one group of
// B and C, split together with their parameters). A sharded sequence is context parallelism's
// business (its own issue), so L is never sharded here.
#include "../sharding.h"

namespace coil::dist {
namespace {

const Placement R = Replicate();

struct Register {
  Register() {
    // selective_scan(u, delta, A, B, C, D, z, delta_bias, h0) -> y, final state
    ShardingRule ss;
    ss.strategies = [](const OpMeta& m) {
      std::vector<Strategy> s;
      s.push_back({{Shard(0), Shard(0), R, Shard(0), Shard(0), R, Shard(0), R, Shard(0)},
                   {Shard(0), Shard(0)}});
      if (m.ndim(3) == 3)  // B, C shared by all channels
        s.push_back({{Shard(2), Shard(2), Shard(0), R, R, Shard(0), Shard(2), Shard(0), Shard(1)},
                     {Shard(2), Shard(1)}});
      return s;
    };
    ss.output_shapes = [](const OpMeta& m) {
      const Shape& u = m.shapes[0];
      return std::vector<Shape>{u, Shape{u[0], u[2], m.shapes[2][1]}};
    };
    register_sharding_rule("selective_scan", ss);

    // ssd_scan(x, dt, A, B, C, D, z, dt_bias, h0) -> y (, final state)
    ShardingRule sd;
    sd.strategies = [](const OpMeta& m) {
      const size_t outs = m.attr_or<bool>("return_final_state", false) ? 2 : 1;
      std::vector<Strategy> s;
      s.push_back({{Shard(0), Shard(0), R, Shard(0), Shard(0), R, Shard(0), R, Shard(0)},
                   std::vector<Placement>(outs, Shard(0))});
      if (m.shapes[3][2] == 1)  // one group of B, C: heads are independent
        s.push_back({{Shard(2), Shard(2), Shard(0), R, R, Shard(0), Shard(2), Shard(0), Shard(1)},
                     outs == 2 ? std::vector<Placement>{Shard(2), Shard(1)}
                               : std::vector<Placement>{Shard(2)}});
      return s;
    };
    sd.output_shapes = [](const OpMeta& m) {
      const Shape& x = m.shapes[0];
      std::vector<Shape> out{x};
      if (m.attr_or<bool>("return_final_state", false))
        out.push_back({x[0], x[2], x[3], m.shapes[3][3]});
      return out;
    };
    register_sharding_rule("ssd_scan", sd);

    // causal_conv1d(x, weight, bias, window) -> y, final window
    ShardingRule cv;
    cv.strategies = [](const OpMeta&) {
      return std::vector<Strategy>{
          {{Shard(0), R, R, Shard(0)}, {Shard(0), Shard(0)}},
          {{Shard(2), Shard(0), Shard(0), Shard(2)}, {Shard(2), Shard(2)}}};
    };
    cv.output_shapes = [](const OpMeta& m) {
      const Shape& x = m.shapes[0];
      return std::vector<Shape>{x, Shape{x[0], m.shapes[1][1] - 1, x[2]}};
    };
    register_sharding_rule("causal_conv1d", cv);

    // The fused backward kernels' rows: their ops' backward runs on local pieces (dispatch.cpp)
    ShardingRule bw;
    bw.backward_of = "causal_conv1d";
    register_sharding_rule("causal_conv1d_backward", bw);
    bw.backward_of = "selective_scan";
    register_sharding_rule("selective_scan_backward", bw);
  }
} reg;

}  // namespace
}  // namespace coil::dist
