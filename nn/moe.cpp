#include "moe.h"

#include <cmath>

#include "../autograd/grad_mode.h"
#include "../dist/dtensor.h"
#include "../ops/ops.h"

namespace coil::nn {

namespace {
constexpr double kInitStd = 0.02;  // Hugging Face's initializer_range for GraniteMoe
}  // namespace

// ---- router ----

TopKRouter::TopKRouter(int64_t hidden, RouterOptions o, DType dtype) : options(o) {
  COIL_CHECK(o.num_experts > 0 && o.top_k > 0 && o.top_k <= o.num_experts,
             "TopKRouter: need 0 < top_k <= num_experts, got top_k ", o.top_k, " and ",
             o.num_experts, " experts");
  COIL_CHECK(o.num_groups >= 1 && o.num_experts % o.num_groups == 0 && o.topk_groups >= 1 &&
                 o.topk_groups <= o.num_groups,
             "TopKRouter: ", o.num_experts, " experts in ", o.num_groups, " groups, keeping ",
             o.topk_groups, ": groups must divide the experts and 1 <= topk_groups <= groups");
  COIL_CHECK(o.num_groups == 1 || o.top_k <= o.topk_groups * (o.num_experts / o.num_groups),
             "TopKRouter: top_k ", o.top_k, " is more than the experts of ", o.topk_groups,
             " groups");
  layer = register_module("layer", std::make_shared<Linear>(hidden, o.num_experts, false, dtype));
  normal_init_(layer->weight, 0, kInitStd);
  expert_bias = zeros({o.num_experts}, Options(kF32));
  // state only when loss-free balancing is on, so that checkpoints without it load strictly
  if (o.bias_update_rate > 0) register_buffer("expert_bias", &expert_bias);
  counts_ = zeros({o.num_experts}, Options(kI64));
}

TopKRouter::Output TopKRouter::forward(const Tensor& x) const {
  COIL_CHECK(x.dim() == 2 && x.size(1) == layer->weight.size(1), "TopKRouter: x must be (tokens, ",
             layer->weight.size(1), "), got ", x.shape_str());
  const RouterOptions& o = options;
  const int64_t T = x.size(0), E = o.num_experts, k = o.top_k;
  Tensor logits = layer->forward(x);
  if (logits.dtype() != kF64) logits = logits.to(kF32);  // routing in f32 (f64 stays, for tests)
  Tensor probs = o.sigmoid ? sigmoid(logits) : softmax(logits, -1);
  Tensor idx;
  {
    NoGradGuard ng;
    Tensor sel = probs.detach();
    if (o.bias_update_rate > 0) sel = sel + expert_bias.to(sel.dtype());
    if (o.num_groups > 1) {  // keep the topk_groups groups with the best expert
      const int64_t G = o.num_groups;
      Tensor best = amax(sel.reshape({T, G, E / G}), {2});
      Tensor keep_groups = topk(best, o.topk_groups, -1).second;
      Tensor mask = zeros({T, G}, Options(kBool));
      mask = scatter_add(mask.to(kI64), 1, keep_groups, ones_like(keep_groups)).to(kBool);
      mask = mask.unsqueeze(2).expand({T, G, E / G}).reshape({T, E});
      sel = where(mask, sel, full({}, -INFINITY, Options(sel.dtype())));
    }
    idx = topk(sel, k, -1).second;
  }
  Tensor weights = gather(probs, 1, idx);
  if (o.sigmoid || o.normalize_topk) weights = weights / weights.sum({1}, true);
  // tokens per expert
  Tensor counts = zeros({E}, Options(kI64));
  {
    const std::vector<int64_t> ids = to_vector<int64_t>(idx);
    int64_t* c = counts.data_ptr<int64_t>();
    for (int64_t e : ids) ++c[e];
  }
  counts_ = counts;
  Tensor aux = zeros({}, Options(probs.dtype()));
  if (o.aux_loss_coef > 0 && T > 0) {
    Tensor f = counts.to(probs.dtype()) / static_cast<double>(o.aux_loss_per_token ? T : T * k);
    aux = aux + (f * probs.mean({0})).sum() * (o.aux_loss_coef * static_cast<double>(E));
  }
  if (o.z_loss_coef > 0 && T > 0)
    aux = aux + logsumexp(logits, {1}).square().mean() * o.z_loss_coef;
  return {weights, idx, aux};
}

void TopKRouter::update_bias(const dist::GroupPtr& group) {
  COIL_CHECK(options.bias_update_rate > 0,
             "TopKRouter::update_bias: loss-free balancing is off (bias_update_rate is 0)");
  Tensor c = counts_.clone();
  if (group) group->all_reduce(c, dist::ReduceOp::kSum, dist::blocking())->wait();
  NoGradGuard ng;
  Tensor cf = c.to(kF32);
  Tensor err = cf - cf.mean();
  expert_bias.copy_(expert_bias - sign(err) * options.bias_update_rate);
}

// ---- experts ----

Experts::Experts(int64_t num_experts, int64_t hidden, int64_t ffn_hidden, DType dtype) {
  COIL_CHECK(num_experts > 0 && hidden > 0 && ffn_hidden > 0, "Experts: sizes must be positive, ",
             "got ", num_experts, " experts, hidden ", hidden, ", ffn_hidden ", ffn_hidden);
  input_linear = empty({num_experts, 2 * ffn_hidden, hidden}, dtype);
  output_linear = empty({num_experts, hidden, ffn_hidden}, dtype);
  normal_init_(input_linear, 0, kInitStd);
  normal_init_(output_linear, 0, kInitStd);
  register_parameter("input_linear.weight", &input_linear);
  register_parameter("output_linear.weight", &output_linear);
}

Tensor Experts::forward(const Tensor& x, const Tensor& offsets) const {
  // this rank's experts (all of them, or its Shard(0) piece under expert parallelism)
  const Tensor win = dist::is_dtensor(input_linear) ? dist::to_local(input_linear) : input_linear;
  const Tensor wout =
      dist::is_dtensor(output_linear) ? dist::to_local(output_linear) : output_linear;
  const int64_t F = win.size(1) / 2;
  Tensor h = grouped_mm(x, win.transpose(1, 2), offsets);  // (n, 2F)
  Tensor a = silu(h.narrow(1, 0, F)) * h.narrow(1, F, F);
  return grouped_mm(a, wout.transpose(1, 2), offsets);
}

GatedMLP::GatedMLP(int64_t hidden, int64_t ffn_hidden, DType dtype) {
  input_linear = register_module("input_linear",
                                 std::make_shared<Linear>(hidden, 2 * ffn_hidden, false, dtype));
  output_linear =
      register_module("output_linear", std::make_shared<Linear>(ffn_hidden, hidden, false, dtype));
}

Tensor GatedMLP::forward(const Tensor& x) const {
  Tensor h = input_linear->forward(x);
  const int64_t F = h.size(-1) / 2;
  return output_linear->forward(silu(h.narrow(-1, 0, F)) * h.narrow(-1, F, F));
}

// ---- the layer ----

MoE::MoE(int64_t hidden, MoEOptions o, DType dtype) : options(o) {
  COIL_CHECK(o.capacity_factor >= 0, "MoE: capacity_factor must be >= 0, got ", o.capacity_factor);
  router = register_module("router", std::make_shared<TopKRouter>(hidden, o.router, dtype));
  // the experts' weights under GraniteMoe's names, directly in this module
  experts = std::make_shared<Experts>(o.router.num_experts, hidden, o.ffn_hidden, dtype);
  register_parameter("input_linear.weight", &experts->input_linear);
  register_parameter("output_linear.weight", &experts->output_linear);
  if (o.shared_ffn_hidden > 0)
    shared_mlp = register_module("shared_mlp",
                                 std::make_shared<GatedMLP>(hidden, o.shared_ffn_hidden, dtype));
}

void MoE::set_expert_parallel(const dist::ExpertParallel& ep) {
  COIL_CHECK(ep.group != nullptr, "MoE::set_expert_parallel: no process group");
  const int64_t P = ep.group->size(), E = options.router.num_experts;
  COIL_CHECK(E % P == 0, "MoE::set_expert_parallel: ", E, " experts do not split over ", P,
             " ranks");
  const dist::DeviceMesh mesh = dist::DeviceMesh::from_group(ep.group, "ep");
  NoGradGuard ng;
  for (Tensor* w : {&experts->input_linear, &experts->output_linear}) {
    if (dist::is_dtensor(*w)) continue;
    const bool rg = w->requires_grad();
    *w = dist::distribute_tensor(w->detach(), mesh, {dist::Shard(0)});
    if (rg) w->requires_grad_(true);
  }
  expert_parallel = ep;
}

Tensor MoE::forward(const Tensor& x) const {
  const int64_t D = experts->input_linear.size(2);
  COIL_CHECK(x.dim() >= 1 && x.size(-1) == D, "MoE: input must be (..., ", D, "), got ",
             x.shape_str());
  const Shape shape = x.sizes();
  Tensor xf = x.reshape({-1, D});
  const int64_t T = xf.size(0), E = options.router.num_experts, k = options.router.top_k;
  TopKRouter::Output r = router->forward(xf);
  aux_ = r.aux_loss;
  // (token, slot) pairs sorted by expert, token order kept within an expert (a counting sort);
  // under a capacity, each expert keeps its first C pairs
  const std::vector<int64_t> ids = to_vector<int64_t>(r.experts);
  std::vector<int64_t> counts(static_cast<size_t>(E), 0);
  for (int64_t e : ids) ++counts[e];
  int64_t cap = T * k;
  if (options.capacity_factor > 0)
    cap = static_cast<int64_t>(
        std::ceil(static_cast<double>(T * k) / static_cast<double>(E) * options.capacity_factor));
  std::vector<int64_t> start(static_cast<size_t>(E) + 1, 0), kept(static_cast<size_t>(E));
  for (int64_t e = 0; e < E; ++e) {
    kept[e] = std::min(counts[e], cap);
    start[e + 1] = start[e] + kept[e];
  }
  dropped_ = T * k - start[E];
  std::vector<int64_t> order(static_cast<size_t>(start[E])), fill(start.begin(), start.end() - 1);
  for (int64_t p = 0; p < T * k; ++p) {
    const int64_t e = ids[p];
    if (fill[e] < start[e + 1]) order[fill[e]++] = p;
  }
  const int64_t n = start[E];
  std::vector<int64_t> token(order.size());
  for (size_t i = 0; i < order.size(); ++i) token[i] = order[i] / k;
  const Tensor token_t = tensor(token, {n}), order_t = tensor(order, {n});
  Tensor xs = index_select(xf, 0, token_t);
  Tensor ys;
  if (expert_parallel && expert_parallel->group->size() > 1) {
    ys = dist::ep_run_experts(
        xs, kept, *expert_parallel,
        [this](const Tensor& xl, const Tensor& off) { return experts->forward(xl, off); });
  } else {
    ys = experts->forward(xs, tensor(start, {E + 1}));
  }
  Tensor w = index_select(r.weights.reshape({T * k}), 0, order_t).to(ys.dtype());
  Tensor out =
      index_add(zeros({T, D}, Options(ys.dtype(), ys.device())), 0, token_t, ys * w.unsqueeze(1));
  if (shared_mlp) out = out + shared_mlp->forward(xf);
  return out.to(x.dtype()).reshape(shape);
}

}  // namespace coil::nn
