// The handler every op entry calls when an input is a DTensor (core/op_table.h's hook): it picks
// a strategy of the op's sharding rule per mesh dim, redistributes the inputs, runs the op on
// the local pieces and wraps the outputs. Every step is differentiable (redistribute, to_local,
// the op itself, from_local), so backward needs nothing of its own.
#include <algorithm>
#include <limits>

#include "../autograd/node.h"
#include "../core/rng.h"
#include "sharding.h"

namespace coil::dist {

void register_sharding_rule(const std::string& op, ShardingRule rule) {
  op_row(op).sharding_rule = std::move(rule);
}
void register_composite_rule(const std::string& op) {
  ShardingRule r;
  r.composite = true;
  op_row(op).sharding_rule = std::move(r);
}

int64_t OpMeta::dim_attr(int64_t extra) const {
  return wrap_dim(attr<int64_t>("dim"), ndim(0) + extra);
}

std::vector<Strategy> shard_other_dims(const OpMeta& m, int64_t dim, size_t outputs,
                                       int64_t shift) {
  std::vector<Strategy> s;
  const size_t k = m.shapes.size();
  for (int64_t d = 0; d < m.ndim(0); ++d)
    if (d != dim)
      s.push_back({std::vector<Placement>(k, Shard(d)),
                   std::vector<Placement>(outputs, Shard(d > dim ? d + shift : d))});
  return s;
}

Shape broadcast_shape(const std::vector<Shape>& shapes) {
  size_t n = 0;
  for (const Shape& s : shapes) n = std::max(n, s.size());
  Shape out(n, 1);
  for (const Shape& s : shapes)
    for (size_t i = 0; i < s.size(); ++i) {
      int64_t& o = out[n - s.size() + i];
      if (s[i] != 1) o = s[i];
    }
  return out;
}

void check_same_generator(const DeviceMesh& mesh, const std::string& op) {
  if (mesh.size() == 1) return;
  // max of (seed, offset) and of their complements: equal on every rank iff min == max
  const RngState st = get_rng_state();
  const int64_t seed = static_cast<int64_t>(st.seed), off = static_cast<int64_t>(st.offset);
  Tensor v = tensor(std::vector<int64_t>{seed, off, ~seed, ~off}, {4});
  for (int64_t i = 0; i < mesh.ndim(); ++i)
    mesh.group(i)->all_reduce(v, ReduceOp::kMax, blocking())->wait();
  const int64_t* r = v.data_ptr<int64_t>();
  COIL_CHECK(r[0] == seed && r[1] == off && r[2] == ~seed && r[3] == ~off, op,
             ": a random op on DTensors needs the same generator state on every rank of ",
             mesh.str(), " (this rank: seed ", st.seed, ", offset ", st.offset,
             "); call manual_seed with the same seed on every rank and draw the same tensors");
}

namespace {

// Calls the op on local pieces. An op that draws does so as this rank's piece (placements p) of
// one draw over the global shape, after checking that every rank's generator is in step.
TensorList call_local(const OpInfo& op, const ShardingRule& rule, const TensorList& locals,
                      const Attrs& attrs, const DeviceMesh& mesh, const Shape& global,
                      const Placements& p) {
  if (!rule.draws) return op.boxed(locals, attrs);
  check_same_generator(mesh, op.name);
  DrawPieceScope scope(DrawPiece{global, local_shard(global, mesh, p).offsets});
  return op.boxed(locals, attrs);
}

std::string describe(const TensorList& inputs) {
  std::string s;
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (i) s += ", ";
    if (!inputs[i].defined())
      s += "none";
    else if (is_dtensor(inputs[i]))
      s += str(dtensor_spec(inputs[i]).placements);
    else
      s += "plain " + inputs[i].shape_str();
  }
  return s;
}

// Rough bytes moved per rank to take a tensor of `bytes` from p to q along one mesh dim.
double move_cost(const Placement& p, const Placement& q, double bytes) {
  if (p == q) return 0;
  if (q.is_replicate()) return p.is_partial() ? 2 * bytes : bytes;  // all_reduce / all_gather
  if (q.is_shard()) {
    if (p.is_replicate()) return 0;    // a local chunk
    if (p.is_partial()) return bytes;  // reduce_scatter
    return 0.5 * bytes;                // all_to_all
  }
  return p.is_replicate() ? 0 : 3 * bytes;  // to Partial: free from Replicate
}

// This rank's piece of a plain (replicated) tensor under placements without Partial: narrow is
// differentiable, so the plain tensor gets its gradient back.
Tensor plain_piece(const Tensor& x, const DeviceMesh& mesh, const Placements& p) {
  LocalShard s = local_shard(x.sizes(), mesh, p);
  Tensor y = x;
  for (int64_t d = 0; d < x.dim(); ++d)
    if (s.sizes[d] != x.size(d)) y = y.narrow(d, s.offsets[d], s.sizes[d]);
  return y;
}

TensorList run_rule(const OpInfo& op, const ShardingRule& rule, const TensorList& inputs,
                    const Attrs& attrs) {
  // the mesh: every DTensor input's
  const DTensorSpec* first = nullptr;
  for (const Tensor& t : inputs)
    if (is_dtensor(t)) {
      const DTensorSpec& s = dtensor_spec(t);
      if (!first) first = &s;
      COIL_CHECK(s.mesh == first->mesh, op.name, ": DTensor inputs on different meshes (",
                 first->mesh.str(), " and ", s.mesh.str(), ")");
    }
  const DeviceMesh mesh = first->mesh;
  const size_t n = inputs.size();
  OpMeta meta;
  meta.attrs = &attrs;
  for (const Tensor& t : inputs) {
    meta.defined.push_back(t.defined());
    meta.shapes.push_back(!t.defined()    ? Shape{}
                          : is_dtensor(t) ? dtensor_spec(t).global_shape
                                          : t.sizes());
    meta.dtypes.push_back(t.defined() ? t.dtype() : kF32);
  }
  const std::vector<Shape> out_shapes = rule.output_shapes(meta);
  std::vector<Strategy> cands = rule.strategies ? rule.strategies(meta) : std::vector<Strategy>{};
  cands.push_back({std::vector<Placement>(n, Replicate()),
                   std::vector<Placement>(out_shapes.size(), Replicate())});
  // per mesh dim, the cheapest valid strategy
  std::vector<Placements> in_p(n, Placements(mesh.ndim())),
      out_p(out_shapes.size(), Placements(mesh.ndim()));
  for (int64_t i = 0; i < mesh.ndim(); ++i) {
    double best = std::numeric_limits<double>::infinity();
    const Strategy* pick = nullptr;
    for (const Strategy& c : cands) {
      double cost = 0;
      for (size_t j = 0; j < n; ++j) {
        if (!inputs[j].defined()) continue;
        const Placement cur =
            is_dtensor(inputs[j]) ? dtensor_spec(inputs[j]).placements[i] : Replicate();
        // a plain tensor is the same on every rank: it can be cut, never made Partial
        if (!is_dtensor(inputs[j]) && c.inputs[j].is_partial()) cost = best;
        int64_t numel = 1;
        for (int64_t s : meta.shapes[j]) numel *= s;
        cost += move_cost(cur, c.inputs[j], double(numel) * dtype_size(meta.dtypes[j]));
      }
      if (cost < best) {
        best = cost;
        pick = &c;
      }
    }
    for (size_t j = 0; j < n; ++j) in_p[j][i] = pick->inputs[j];
    for (size_t k = 0; k < out_shapes.size(); ++k) out_p[k][i] = pick->outputs[k];
  }
  // A Replicate input's gradient is Partial(sum) on a mesh dim where the ranks compute
  // different pieces (an output there is Shard or Partial); a Partial input's is Replicate.
  std::vector<bool> split(mesh.ndim(), false);
  for (int64_t i = 0; i < mesh.ndim(); ++i)
    for (const Placements& q : out_p) split[i] = split[i] || !q[i].is_replicate();
  TensorList locals(n);
  for (size_t j = 0; j < n; ++j) {
    const Tensor& t = inputs[j];
    if (!t.defined()) continue;
    if (is_dtensor(t)) {
      const bool same = dtensor_spec(t).placements == in_p[j];
      Placements grad_p = in_p[j];
      for (int64_t i = 0; i < mesh.ndim(); ++i) {
        if (grad_p[i].is_partial())
          grad_p[i] = Replicate();
        else if (grad_p[i].is_replicate() && split[i])
          grad_p[i] = Partial();
      }
      locals[j] = to_local(same ? t : redistribute(t, in_p[j]), grad_p);
    } else {
      locals[j] = plain_piece(t, mesh, in_p[j]);
    }
  }
  Attrs la = attrs;
  if (!rule.local_shape_attr.empty())
    for (Attr& a : la)
      if (a.name == rule.local_shape_attr)
        a.value = local_shard(out_shapes[0], mesh, out_p[0]).sizes;
  TensorList outs = call_local(op, rule, locals, la, mesh, out_shapes[0], out_p[0]);
  COIL_CHECK(outs.size() == out_shapes.size(), op.name, ": its sharding rule gives ",
             out_shapes.size(), " outputs, the op ", outs.size());
  for (size_t k = 0; k < outs.size(); ++k)
    if (outs[k].defined()) outs[k] = from_local(outs[k], mesh, out_p[k], out_shapes[k]);
  return outs;
}

const ShardingRule* rule_of(const OpInfo& op) {
  return std::any_cast<ShardingRule>(&op.sharding_rule);
}

TensorList handle(const OpInfo& op, const TensorList& inputs, const Attrs& attrs) {
  const ShardingRule* rule = rule_of(op);
  COIL_CHECK(rule && !rule->composite, op.name, ": no sharding rule for DTensor inputs (",
             describe(inputs), ")");
  COIL_CHECK(rule->backward_of.empty(), op.name, ": runs only inside ", rule->backward_of,
             "'s backward, on local pieces; call ", rule->backward_of, " on the DTensors (",
             describe(inputs), ")");
  if (rule->fills_in_place) {
    const Tensor& dst = inputs[0];
    COIL_CHECK(!needs_grad(inputs), op.name, ": in-place ops on DTensors that require grad are ",
               "not supported");
    const DTensorSpec& s = dtensor_spec(dst);
    Tensor local = to_local(dst);
    call_local(op, *rule, {local}, attrs, s.mesh, s.global_shape, s.placements);
    for (int64_t i = 0; i < s.mesh.ndim(); ++i)
      if (s.placements[i] == Partial(ReduceOp::kSum) && s.mesh.coordinate(i) != 0) {
        NoGradGuard g;
        local.zero_();
      }
    return {dst};
  }
  if (op.name == "copy_" || op.name == "fill_") {
    // in place on the DTensor's local piece: the source brought to the target's placements
    const Tensor& dst = inputs[0];
    COIL_CHECK(is_dtensor(dst), op.name, ": the target must be a DTensor when a source is one (",
               describe(inputs), ")");
    COIL_CHECK(!needs_grad(inputs), op.name, ": in-place ops on DTensors that require grad are ",
               "not supported; use the out-of-place op");
    const DTensorSpec& s = dtensor_spec(dst);
    for (const Placement& q : s.placements)
      COIL_CHECK(!q.is_partial() || op.name == "copy_", op.name,
                 ": a Partial target cannot be filled with one value (", str(s.placements), ")");
    Tensor local = to_local(dst);
    if (op.name == "fill_") {
      op.boxed({local}, attrs);
    } else {
      Tensor src = inputs[1];
      if (!is_dtensor(src))
        src = distribute_tensor(src.expand(s.global_shape), s.mesh, s.placements);
      Tensor moved = to_local(redistribute(src, s.placements));
      op.boxed({local, moved}, attrs);
    }
    return {dst};
  }
  return run_rule(op, *rule, inputs, attrs);
}

}  // namespace

Tensor make_factory(const std::string& name, const Attrs& attrs, const DeviceMesh& mesh,
                    const Placements& placements) {
  const OpInfo& op = op_info(name);
  const ShardingRule* rule = rule_of(op);
  COIL_CHECK(rule && rule->factory, "dist::", name, ": not a factory op");
  COIL_CHECK(static_cast<int64_t>(placements.size()) == mesh.ndim(), "dist::", name, ": ",
             placements.size(), " placements for a ", mesh.ndim(), "-d mesh ", mesh.str());
  for (const Placement& q : placements)
    COIL_CHECK(!q.is_partial(), "dist::", name, ": a new tensor cannot be Partial (",
               str(placements), "); make it Replicate, or Shard a dim");
  OpMeta meta;
  meta.attrs = &attrs;
  const Shape global = rule->output_shapes(meta)[0];
  Attrs la = attrs;
  for (Attr& a : la)
    if (a.name == "shape") a.value = local_shard(global, mesh, placements).sizes;
  Tensor local = call_local(op, *rule, {}, la, mesh, global, placements)[0];
  return from_local(local, mesh, placements, global);
}

namespace {

struct Install {
  Install() { set_dist_handler(handle); }
} install;

}  // namespace
}  // namespace coil::dist
