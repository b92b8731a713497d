#include "../core/rng.h"
#include "autograd.h"

namespace coil {

namespace {
// A leaf alias sharing storage, for re-entering the graph in recomputation.
Tensor detached_leaf(const Tensor& t, bool requires_grad) {
  auto alias = std::make_shared<TensorImpl>(t.impl());
  alias->grad_fn = nullptr;
  alias->grad = nullptr;
  alias->grad_accumulator.reset();
  alias->requires_grad = requires_grad;
  return Tensor(alias);
}
}  // namespace

TensorList checkpoint(const std::function<TensorList(const TensorList&)>& fn,
                      const TensorList& inputs) {
  if (!needs_grad(inputs)) return fn(inputs);
  RngState rng = get_rng_state();
  TensorList outs;
  {
    NoGradGuard g;
    outs = fn(inputs);
  }
  std::vector<SavedTensor> saved;
  std::vector<bool> wants;
  for (const Tensor& t : inputs) {
    saved.emplace_back(t, "checkpoint");
    wants.push_back(t.defined() && t.requires_grad());
  }
  record("checkpoint", inputs, outs, [fn, saved, wants, rng](const TensorList& grads) {
    TensorList leaves;
    for (size_t i = 0; i < saved.size(); ++i)
      leaves.push_back(saved[i].defined() ? detached_leaf(saved[i].unpack(), wants[i]) : Tensor());
    RngState now = get_rng_state();
    set_rng_state(rng);
    TensorList re;
    {
      EnableGradGuard eg;
      re = fn(leaves);
    }
    set_rng_state(now);
    TensorList roots, root_grads;
    for (size_t i = 0; i < re.size(); ++i)
      if (re[i].defined() && re[i].requires_grad()) {
        roots.push_back(re[i]);
        root_grads.push_back(grads[i]);
      }
    if (!roots.empty()) backward(roots, root_grads, false);
    TensorList out;
    for (size_t i = 0; i < leaves.size(); ++i)
      out.push_back(wants[i] ? leaves[i].grad() : Tensor());
    return out;
  });
  return outs;
}

}  // namespace coil
