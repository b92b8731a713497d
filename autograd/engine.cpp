// The backward engine: reverse topological order by dependency counts, gradient buffers per
// node, saved tensors freed as nodes finish. Gradient arithmetic (add, zeros, casts) goes through
// the op table, so autograd never includes ops.
#include <atomic>
#include <queue>
#include <unordered_map>
#include <unordered_set>

#include "../core/autocast.h"
#include "../core/op_table.h"
#include "node.h"

namespace coil {

namespace {
thread_local bool t_grad_enabled = true;
std::atomic<uint64_t> g_next_sequence{0};

Tensor call1(const char* op, const TensorList& in, const Attrs& attrs = {}) {
  return op_info(op).boxed(in, attrs)[0];
}
Tensor zeros_for(const OutputMeta& m) {
  // on the output's device: a GPU op's backward reads it as device memory
  return call1("zeros", {}, {{"shape", m.shape}, {"dtype", m.dtype}, {"device", m.device.str()}});
}
// Makes g fit the metadata of the output it is the gradient of.
Tensor conform(const Tensor& g, const OutputMeta& m, const Node& node) {
  COIL_CHECK(g.sizes() == m.shape, "backward: ", node.name, " got a gradient of shape ",
             g.shape_str(), " for an output of shape ", shape_str(m.shape));
  if (g.dtype() != m.dtype) return call1("to_dtype", {g}, {{"dtype", m.dtype}});
  return g;
}
}  // namespace

bool GradMode::is_enabled() { return t_grad_enabled; }
void GradMode::set_enabled(bool on) { t_grad_enabled = on; }

Node::Node() : sequence_nr(g_next_sequence.fetch_add(1)) {}

SavedTensor::SavedTensor(const Tensor& t, const std::string& op) : op_(op) {
  if (!t.defined()) return;
  auto alias = std::make_shared<TensorImpl>(t.impl());
  alias->grad_fn = nullptr;
  alias->grad = nullptr;
  alias->requires_grad = false;
  alias->grad_accumulator.reset();
  data_ = Tensor(alias);
  version_ = t.version();
}

Tensor SavedTensor::unpack() const {
  if (!data_.defined()) return data_;
  COIL_CHECK(data_.version() == version_, "backward of ", op_, ": a tensor it saved (shape ",
             data_.shape_str(), ") was modified in place after ", "it was saved (version ",
             version_, " -> ", data_.version(), ")");
  return data_;
}

TensorList FunctionNode::apply(TensorList&& grads) {
  COIL_CHECK(fn, "backward: trying to backward through ", name, " a second time; its saved ",
             "tensors were freed after the first backward (pass retain_graph=true)");
  return fn(grads);
}

TensorList AccumulateGrad::apply(TensorList&& grads) {
  Tensor g = std::move(grads[0]);  // moved, so an exclusive buffer can be taken below
  for (auto& hook : variable->hooks) {
    Tensor r = hook(g);
    if (r.defined()) g = conform(r, outputs[0], *this);
  }
  if (!variable->grad) {
    // Take the incoming buffer if nobody else holds it; otherwise own a copy.
    bool exclusive = g.impl_ptr().use_count() == 1 && g.impl().storage.use_count() == 1 &&
                     g.is_contiguous() && g.impl().grad_fn == nullptr;
    variable->grad = exclusive ? g.impl_ptr() : call1("clone", {g}).impl_ptr();
  } else {
    Tensor acc(variable->grad);
    op_info("add_").boxed({acc, g}, {});
  }
  return {};
}

bool needs_grad(std::initializer_list<const Tensor*> inputs) {
  if (!GradMode::is_enabled()) return false;
  for (const Tensor* t : inputs)
    if (t->defined() && t->requires_grad()) return true;
  return false;
}
bool needs_grad(const TensorList& inputs) {
  if (!GradMode::is_enabled()) return false;
  for (const Tensor& t : inputs)
    if (t.defined() && t.requires_grad()) return true;
  return false;
}

Edge gradient_edge(const Tensor& t) {
  TensorImpl& im = t.impl();
  if (im.grad_fn) return Edge{im.grad_fn, im.output_nr};
  if (!im.requires_grad) return Edge{};
  auto acc = im.grad_accumulator.lock();
  if (!acc) {
    auto node = std::make_shared<AccumulateGrad>();
    node->name = "AccumulateGrad";
    node->variable = t.impl_ptr();
    node->outputs.push_back({im.sizes, im.dtype, t.device()});
    node->pre_hooks.resize(1);
    node->sequence_nr = UINT64_MAX;  // accumulate as soon as ready
    im.grad_accumulator = node;
    acc = node;
  }
  return Edge{acc, 0};
}

std::shared_ptr<Node> record(const std::string& name, const TensorList& inputs,
                             const TensorList& outputs, BackwardFn fn) {
  auto node = std::make_shared<FunctionNode>();
  node->name = name;
  node->fn = std::move(fn);
  node->next_edges.reserve(inputs.size());
  for (const Tensor& in : inputs)
    node->next_edges.push_back(in.defined() && in.requires_grad() ? gradient_edge(in) : Edge{});
  uint32_t nr = 0;
  for (const Tensor& out : outputs) {
    node->outputs.push_back({out.sizes(), out.dtype(), out.device()});
    if (out.defined() && is_floating(out.dtype())) {
      out.impl().grad_fn = node;
      out.impl().output_nr = nr;
    }
    ++nr;
  }
  node->pre_hooks.resize(outputs.size());
  return node;
}

namespace {
void run_backward(const TensorList& roots, const TensorList& root_grads, bool retain_graph) {
  // Backward formulas run in the dtypes the forward recorded: autocast stays off in them even
  // when backward() is called inside an AutocastGuard.
  AutocastGuard autocast_off(autocast_state().dtype, /*enabled=*/false);
  std::vector<std::pair<Edge, Tensor>> starts;
  for (size_t i = 0; i < roots.size(); ++i) {
    const Tensor& r = roots[i];
    COIL_CHECK(r.requires_grad(), "backward: tensor of shape ", r.shape_str(),
               " does not require grad and has no grad_fn");
    Tensor g = root_grads[i];
    if (!g.defined()) {
      COIL_CHECK(r.numel() == 1, "backward: grad can be implicitly created only for scalar ",
                 "outputs, got shape ", r.shape_str(), "; pass a gradient");
      g = call1("ones", {},
                {{"shape", r.sizes()}, {"dtype", r.dtype()}, {"device", r.device().str()}});
    }
    COIL_CHECK(g.sizes() == r.sizes(), "backward: gradient shape ", g.shape_str(),
               " does not match output shape ", r.shape_str());
    starts.push_back({gradient_edge(r), g});
  }

  // Dependencies: how many edges point at each node reachable from the roots.
  std::unordered_map<Node*, int> deps;
  std::vector<Node*> stack;
  std::unordered_set<Node*> seen;
  for (auto& [e, g] : starts)
    if (seen.insert(e.fn.get()).second) stack.push_back(e.fn.get());
  while (!stack.empty()) {
    Node* n = stack.back();
    stack.pop_back();
    for (const Edge& e : n->next_edges) {
      if (!e.valid()) continue;
      deps[e.fn.get()]++;
      if (seen.insert(e.fn.get()).second) stack.push_back(e.fn.get());
    }
  }

  std::unordered_map<Node*, TensorList> buffers;
  std::unordered_map<Node*, std::shared_ptr<Node>> keep;  // nodes alive while queued
  auto add_to_buffer = [&](const Edge& e, Tensor g) {
    Node* n = e.fn.get();
    TensorList& buf = buffers[n];
    if (buf.empty()) buf.resize(n->outputs.size());
    g = conform(g, n->outputs[e.input_nr], *n);
    Tensor& slot = buf[e.input_nr];
    slot = slot.defined() ? call1("add", {slot, g}) : g;
    keep[n] = e.fn;
  };
  auto cmp = [](Node* a, Node* b) { return a->sequence_nr < b->sequence_nr; };
  std::priority_queue<Node*, std::vector<Node*>, decltype(cmp)> ready(cmp);
  for (auto& [e, g] : starts) add_to_buffer(e, g);
  std::unordered_set<Node*> queued;
  for (auto& [e, g] : starts)
    if (deps[e.fn.get()] == 0 && queued.insert(e.fn.get()).second) ready.push(e.fn.get());

  NoGradGuard no_grad;  // backward formulas are not themselves recorded
  while (!ready.empty()) {
    Node* n = ready.top();
    ready.pop();
    std::shared_ptr<Node> hold = keep[n];
    TensorList grads = std::move(buffers[n]);
    buffers.erase(n);
    grads.resize(n->outputs.size());
    for (size_t i = 0; i < grads.size(); ++i) {
      if (!grads[i].defined()) grads[i] = zeros_for(n->outputs[i]);
      for (auto& hook : n->pre_hooks[i]) {
        Tensor r = hook(grads[i]);
        if (r.defined()) grads[i] = conform(r, n->outputs[i], *n);
      }
    }
    TensorList in_grads;
    // in anomaly mode the incoming gradients are the backward's inputs its message lists
    const TensorList grads_in = anomaly_mode() ? grads : TensorList{};
    {
      AnomalyContext ctx(n->name);
      profiler::BackwardPhase phase;
      in_grads = n->apply(std::move(grads));
    }
    if (!retain_graph) n->release();
    check_anomaly("backward of " + n->name, grads_in, in_grads);
    for (size_t i = 0; i < n->next_edges.size(); ++i) {
      const Edge& e = n->next_edges[i];
      if (!e.valid()) continue;
      if (i < in_grads.size() && in_grads[i].defined()) add_to_buffer(e, in_grads[i]);
      if (--deps[e.fn.get()] == 0) {
        keep[e.fn.get()] = e.fn;
        ready.push(e.fn.get());
      }
    }
    keep.erase(n);
  }
}
}  // namespace

void backward(const TensorList& roots, const TensorList& grads, bool retain_graph) {
  TensorList g = grads;
  g.resize(roots.size());
  run_backward(roots, g, retain_graph);
}

void Tensor::backward(const Tensor& grad, bool retain_graph) const {
  run_backward({*this}, {grad}, retain_graph);
}

void Tensor::register_hook(TensorHook hook) const {
  COIL_CHECK(requires_grad(), "register_hook: cannot register a hook on a tensor that does not ",
             "require grad (shape ", shape_str(), ")");
  if (is_leaf()) {
    impl().hooks.push_back(std::move(hook));  // the accumulator node may not exist yet
    return;
  }
  Edge e = gradient_edge(*this);
  e.fn->pre_hooks[e.input_nr].push_back(std::move(hook));
}

void Tensor::retain_grad() const {
  COIL_CHECK(requires_grad(), "retain_grad: tensor does not require grad");
  if (is_leaf() || impl().retains_grad) return;
  impl().retains_grad = true;
  std::weak_ptr<TensorImpl> weak = impl_ptr();
  register_hook([weak](const Tensor& g) {
    if (auto im = weak.lock()) {
      im->grad = im->grad ? call1("add", {Tensor(im->grad), g}).impl_ptr()
                          : call1("clone", {g}).impl_ptr();
    }
    return Tensor();
  });
}

}  // namespace coil
