// Sharding rules: how an op runs on DTensors. Each op family registers, per op, the strategies
// it supports on one mesh dim (the placement every tensor input must have, and the placement
// of every output) and the global shapes of its outputs. The dispatcher (dist/dispatch.cpp)
// adds the always-valid strategy "everything Replicate", picks for each mesh dim the strategy
// that moves the fewest bytes to bring the inputs there, redistributes, runs the op on the
// local pieces and wraps the results. Rules live in dist/rules/<family>.cpp.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "../core/op_table.h"
#include "dtensor.h"

namespace coil::dist {

// What a rule sees of a call: each tensor input's global shape and dtype, and the attributes.
struct OpMeta {
  std::vector<bool> defined;
  std::vector<Shape> shapes;
  std::vector<DType> dtypes;
  const Attrs* attrs = nullptr;
  int64_t ndim(size_t i) const { return static_cast<int64_t>(shapes[i].size()); }
  template <class T>
  T attr(const std::string& name) const {
    return coil::attr<T>(*attrs, name);
  }
  template <class T>
  T attr_or(const std::string& name, T dflt) const {
    return coil::attr_or<T>(*attrs, name, dflt);
  }
  // The "dim" attribute made non-negative for input 0's rank plus `extra` (stack: 1).
  int64_t dim_attr(int64_t extra = 0) const;
};

// One way to run the op on one mesh dim.
struct Strategy {
  std::vector<Placement> inputs;   // one per tensor input (ignored for undefined ones)
  std::vector<Placement> outputs;  // one per output
};

struct ShardingRule {
  // Valid strategies besides all-Replicate, best first (ties go to the earlier one).
  std::function<std::vector<Strategy>(const OpMeta&)> strategies;
  // Global shapes of the outputs.
  std::function<std::vector<Shape>(const OpMeta&)> output_shapes;
  // An attribute holding the output shape (view, reshape, expand): the local call gets the
  // local piece's shape instead.
  std::string local_shape_attr;
  // The op runs on DTensors through other ops that have rules (nothing to dispatch itself).
  bool composite = false;
  // The op draws from the default generator. It runs on each local piece inside a DrawPieceScope
  // (core/rng.h), so the pieces hold what the single-process call draws there; every rank's
  // generator must be at the same state, which the dispatcher checks with one small all_reduce.
  bool draws = false;
  // The op overwrites its one input with values (uniform_, normal_, bernoulli_): the target keeps
  // its placements; on a Partial(sum) mesh dim only the first rank keeps them, the others zero.
  bool fills_in_place = false;
  // A factory (no tensor input): made on a mesh by dist/factories.h, never dispatched. Its
  // output_shapes reads the "shape" attribute.
  bool factory = false;
  // A kernel row that only this op's backward calls. Autograd on DTensors runs on the local
  // pieces (from_local / to_local around the op), so the row never sees a DTensor: the forward
  // op's rule covers it, and a direct call on DTensors is an error naming that op.
  std::string backward_of;
};

void register_sharding_rule(const std::string& op, ShardingRule rule);
void register_composite_rule(const std::string& op);

// A factory op's DTensor: each rank makes only its piece (dist/factories.h).
Tensor make_factory(const std::string& op, const Attrs& attrs, const DeviceMesh& mesh,
                    const Placements& placements);
// coil::Error naming `op` unless every rank of the mesh has the same generator state.
void check_same_generator(const DeviceMesh& mesh, const std::string& op);

// Helpers for rules.
inline int64_t wrap_dim(int64_t d, int64_t n) { return d < 0 ? d + n : d; }
Shape broadcast_shape(const std::vector<Shape>& shapes);
// Every tensor input and every output sharded on one dim d != dim (input 0's dims); an output
// dim past `dim` moves by `shift` (stack inserts one, select removes one: -1).
std::vector<Strategy> shard_other_dims(const OpMeta& m, int64_t dim, size_t outputs,
                                       int64_t shift = 0);

}  // namespace coil::dist
