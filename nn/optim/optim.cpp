#include "optim.h"

#include <cmath>

#include "../../autograd/grad_mode.h"
#include "../../ops/ops.h"

namespace coil::optim {

namespace {
void check_params(const char* who, const std::vector<ParamGroup>& groups) {
  for (const auto& g : groups)
    for (const Tensor& p : g.params) {
      COIL_CHECK(p.defined(), who, ": got an undefined parameter");
      COIL_CHECK(p.is_leaf() && p.requires_grad(), who,
                 ": parameters must be leaf tensors that require grad (got shape ", p.shape_str(),
                 ")");
    }
}
}  // namespace

Optimizer::Optimizer(std::vector<ParamGroup> groups, double lr, double weight_decay)
    : groups_(std::move(groups)) {
  for (auto& g : groups_) {
    if (g.lr < 0) g.lr = lr;
    if (g.weight_decay < 0) g.weight_decay = weight_decay;
  }
}

void Optimizer::zero_grad() {
  for (auto& g : groups_)
    for (Tensor& p : g.params) p.set_grad(Tensor());
}

void Optimizer::set_lr(double lr) {
  COIL_CHECK(lr >= 0, "set_lr: learning rate must be non-negative, got ", lr);
  for (auto& g : groups_) g.lr = lr;
}

SGD::SGD(std::vector<Tensor> params, SGDOptions o)
    : SGD(std::vector<ParamGroup>{{std::move(params)}}, o) {}
SGD::SGD(std::vector<ParamGroup> groups, SGDOptions o)
    : Optimizer(std::move(groups), o.lr, o.weight_decay), o_(o) {
  check_params("SGD", groups_);
  COIL_CHECK(o.lr >= 0, "SGD: learning rate must be non-negative, got ", o.lr);
  COIL_CHECK(o.momentum >= 0, "SGD: momentum must be non-negative, got ", o.momentum);
  COIL_CHECK(!o.nesterov || (o.momentum > 0 && o.dampening == 0),
             "SGD: Nesterov needs momentum > 0 and dampening 0");
  momentum_.resize(groups_.size());
  for (size_t i = 0; i < groups_.size(); ++i) momentum_[i].resize(groups_[i].params.size());
}

void SGD::step() {
  NoGradGuard ng;
  ++steps_;
  for (size_t gi = 0; gi < groups_.size(); ++gi) {
    const ParamGroup& grp = groups_[gi];
    for (size_t pi = 0; pi < grp.params.size(); ++pi) {
      Tensor p = grp.params[pi];
      Tensor d = p.grad();
      if (!d.defined()) continue;
      if (grp.weight_decay != 0) d = d + p * grp.weight_decay;
      if (o_.momentum != 0) {
        Tensor& buf = momentum_[gi][pi];
        if (!buf.defined()) {
          buf = d.clone();
        } else {
          buf.mul_(o_.momentum);
          buf.add_(d, 1 - o_.dampening);
        }
        d = o_.nesterov ? d + buf * o_.momentum : buf;
      }
      p.add_(d, -grp.lr);
    }
  }
}

AdamW::AdamW(std::vector<Tensor> params, AdamWOptions o)
    : AdamW(std::vector<ParamGroup>{{std::move(params)}}, o) {}
AdamW::AdamW(std::vector<ParamGroup> groups, AdamWOptions o)
    : Optimizer(std::move(groups), o.lr, o.weight_decay), o_(o) {
  check_params("AdamW", groups_);
  COIL_CHECK(o.lr >= 0, "AdamW: learning rate must be non-negative, got ", o.lr);
  COIL_CHECK(o.beta1 >= 0 && o.beta1 < 1 && o.beta2 >= 0 && o.beta2 < 1,
             "AdamW: betas must be in [0, 1), got (", o.beta1, ", ", o.beta2, ")");
  COIL_CHECK(o.eps >= 0, "AdamW: eps must be non-negative, got ", o.eps);
  m_.resize(groups_.size());
  v_.resize(groups_.size());
  for (size_t i = 0; i < groups_.size(); ++i) {
    m_[i].resize(groups_[i].params.size());
    v_[i].resize(groups_[i].params.size());
  }
}

void AdamW::step() {
  NoGradGuard ng;
  ++steps_;
  const double bc1 = 1 - std::pow(o_.beta1, static_cast<double>(steps_));
  const double bc2 = 1 - std::pow(o_.beta2, static_cast<double>(steps_));
  for (size_t gi = 0; gi < groups_.size(); ++gi) {
    const ParamGroup& grp = groups_[gi];
    for (size_t pi = 0; pi < grp.params.size(); ++pi) {
      Tensor p = grp.params[pi];
      Tensor g = p.grad();
      if (!g.defined()) continue;
      Tensor& m = m_[gi][pi];
      Tensor& v = v_[gi][pi];
      if (!m.defined()) {
        // state in f32 at least, whatever the parameter's dtype
        DType st = p.dtype() == kF64 ? kF64 : kF32;
        m = zeros(p.sizes(), Options(st, p.device()));
        v = zeros(p.sizes(), Options(st, p.device()));
      }
      if (grp.weight_decay != 0) p.mul_(1 - grp.lr * grp.weight_decay);
      m.mul_(o_.beta1);
      m.add_(g, 1 - o_.beta1);
      v.mul_(o_.beta2);
      v.add_(g * g, 1 - o_.beta2);
      Tensor denom = sqrt(v / bc2) + o_.eps;
      p.add_(m / denom, -grp.lr / bc1);
    }
  }
}

double clip_grad_norm_(const std::vector<Tensor>& params, double max_norm) {
  NoGradGuard ng;
  double total = 0;
  for (const Tensor& p : params) {
    Tensor g = p.grad();
    if (!g.defined()) continue;
    total += sum(square(g.to(kF64))).item<double>();
  }
  double norm = std::sqrt(total);
  if (norm > max_norm && norm > 0) {
    double scale = max_norm / (norm + 1e-6);
    for (const Tensor& p : params) {
      Tensor g = p.grad();
      if (g.defined()) g.mul_(scale);
    }
  }
  return norm;
}

}  // namespace coil::optim
