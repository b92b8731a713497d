#include "optim.h"

#include <cmath>
#include <numbers>
#include <unordered_map>

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

namespace {
std::string group_key(size_t g, const char* what) {
  return "group." + std::to_string(g) + "." + what;
}
std::string state_key(size_t g, size_t i, const std::string& buf) {
  return "state." + std::to_string(g) + "." + std::to_string(i) + "." + buf;
}
Tensor i64_scalar(int64_t v) { return tensor(std::vector<int64_t>{v}, Shape{}); }
Tensor f64_scalar(double v) { return tensor(std::vector<double>{v}, Shape{}); }
}  // namespace

StateDict Optimizer::state_dict() const {
  auto* self = const_cast<Optimizer*>(this);  // buffer() hands out slots; nothing changes
  const std::vector<std::string> bufs = buffer_names();
  StateDict sd;
  sd.emplace_back("step", i64_scalar(steps_));
  for (size_t g = 0; g < groups_.size(); ++g) {
    sd.emplace_back(group_key(g, "lr"), f64_scalar(groups_[g].lr));
    sd.emplace_back(group_key(g, "weight_decay"), f64_scalar(groups_[g].weight_decay));
    sd.emplace_back(group_key(g, "num_params"),
                    i64_scalar(static_cast<int64_t>(groups_[g].params.size())));
  }
  for (size_t g = 0; g < groups_.size(); ++g)
    for (size_t i = 0; i < groups_[g].params.size(); ++i)
      for (size_t b = 0; b < bufs.size(); ++b) {
        const Tensor& t = self->buffer(b, g, i);
        if (t.defined()) sd.emplace_back(state_key(g, i, bufs[b]), t);
      }
  return sd;
}

void Optimizer::load_state_dict(const StateDict& sd) {
  const char* who = name_;
  std::unordered_map<std::string, const Tensor*> byname;
  for (const auto& [k, t] : sd) {
    COIL_CHECK(byname.emplace(k, &t).second, who, ".load_state_dict: duplicate entry '", k, "'");
    COIL_CHECK(t.defined(), who, ".load_state_dict: entry '", k, "' is undefined");
  }
  size_t used = 0;
  auto scalar = [&](const std::string& k, bool integral) -> double {
    auto it = byname.find(k);
    COIL_CHECK(it != byname.end(), who, ".load_state_dict: missing entry '", k, "'");
    const Tensor& t = *it->second;
    COIL_CHECK(t.numel() == 1 && (!integral || is_integral(t.dtype())), who,
               ".load_state_dict: entry '", k, "' must be a single ",
               integral ? "integer" : "number", ", got ", t.dtype(), " of shape ", t.shape_str());
    ++used;
    return t.item_double();
  };
  const int64_t step = static_cast<int64_t>(scalar("step", true));
  COIL_CHECK(step >= 0, who, ".load_state_dict: negative step ", step);
  std::vector<double> lrs, wds;
  for (size_t g = 0; g < groups_.size(); ++g) {
    lrs.push_back(scalar(group_key(g, "lr"), false));
    wds.push_back(scalar(group_key(g, "weight_decay"), false));
    const auto n = static_cast<int64_t>(scalar(group_key(g, "num_params"), true));
    COIL_CHECK(n == static_cast<int64_t>(groups_[g].params.size()), who, ".load_state_dict: group ",
               g, " has ", groups_[g].params.size(), " parameters but the state dict has ", n);
  }
  const std::vector<std::string> bufs = buffer_names();
  std::vector<std::vector<std::vector<const Tensor*>>> found(groups_.size());
  for (size_t g = 0; g < groups_.size(); ++g) {
    found[g].resize(groups_[g].params.size());
    for (size_t i = 0; i < groups_[g].params.size(); ++i) {
      const Tensor& p = groups_[g].params[i];
      for (const std::string& b : bufs) {
        const std::string k = state_key(g, i, b);
        auto it = byname.find(k);
        const Tensor* t = it == byname.end() ? nullptr : it->second;
        if (t) {
          COIL_CHECK(t->sizes() == p.sizes(), who, ".load_state_dict: entry '", k, "' has shape ",
                     t->shape_str(), " but parameter ", i, " of group ", g, " has shape ",
                     p.shape_str());
          COIL_CHECK(t->is_floating_point(), who, ".load_state_dict: entry '", k, "' is ",
                     t->dtype(), ", expected a floating dtype");
          ++used;
        }
        found[g][i].push_back(t);
      }
    }
  }
  if (used != byname.size()) {
    for (const auto& [k, t] : sd) {
      bool known = k == "step";
      for (size_t g = 0; g < groups_.size() && !known; ++g) {
        for (const char* s : {"lr", "weight_decay", "num_params"}) known |= k == group_key(g, s);
        for (size_t i = 0; i < groups_[g].params.size() && !known; ++i)
          for (const std::string& b : bufs) known |= k == state_key(g, i, b);
      }
      COIL_CHECK(known, who, ".load_state_dict: unexpected entry '", k,
                 "' (another optimizer type, or more groups or parameters than this one has)");
    }
  }

  // Everything checked: apply.
  NoGradGuard ng;
  steps_ = step;
  for (size_t g = 0; g < groups_.size(); ++g) {
    groups_[g].lr = lrs[g];
    groups_[g].weight_decay = wds[g];
    for (size_t i = 0; i < groups_[g].params.size(); ++i) {
      const Tensor& p = groups_[g].params[i];
      for (size_t b = 0; b < bufs.size(); ++b) {
        const Tensor* src = found[g][i][b];
        Tensor& dst = buffer(b, g, i);
        if (!src) {
          dst = Tensor();
          continue;
        }
        dst = empty(p.sizes(), Options(buffer_dtype(p), p.device()));
        dst.copy_(src->detach());
      }
    }
  }
}

SGD::SGD(std::vector<Tensor> params, SGDOptions o)
    : SGD(std::vector<ParamGroup>{{std::move(params)}}, o) {}
SGD::SGD(std::vector<ParamGroup> groups, SGDOptions o)
    : Optimizer(std::move(groups), o.lr, o.weight_decay), o_(o) {
  name_ = "SGD";
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
  name_ = "AdamW";
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

LRSchedule LRSchedule::constant(int64_t warmup_steps) {
  COIL_CHECK(warmup_steps >= 0, "LRSchedule::constant: warmup_steps must be >= 0, got ",
             warmup_steps);
  return {Kind::constant, warmup_steps, 0, 0};
}

namespace {
LRSchedule decaying(const char* who, LRSchedule::Kind k, int64_t warmup, int64_t total,
                    double min_ratio) {
  COIL_CHECK(warmup >= 0 && total >= warmup, who,
             ": need 0 <= warmup_steps <= total_steps, got warmup_steps ", warmup, ", total_steps ",
             total);
  COIL_CHECK(min_ratio >= 0 && min_ratio <= 1, who, ": min_ratio must be in [0, 1], got ",
             min_ratio);
  return {k, warmup, total, min_ratio};
}
}  // namespace

LRSchedule LRSchedule::linear(int64_t warmup_steps, int64_t total_steps, double min_ratio) {
  return decaying("LRSchedule::linear", Kind::linear, warmup_steps, total_steps, min_ratio);
}
LRSchedule LRSchedule::cosine(int64_t warmup_steps, int64_t total_steps, double min_ratio) {
  return decaying("LRSchedule::cosine", Kind::cosine, warmup_steps, total_steps, min_ratio);
}

double lr_factor(const LRSchedule& s, int64_t step) {
  COIL_CHECK(step >= 0, "lr_factor: step must be >= 0, got ", step);
  if (step < s.warmup_steps)
    return static_cast<double>(step) / static_cast<double>(std::max<int64_t>(1, s.warmup_steps));
  if (s.kind == LRSchedule::Kind::constant) return 1.0;
  double progress = static_cast<double>(step - s.warmup_steps) /
                    static_cast<double>(std::max<int64_t>(1, s.total_steps - s.warmup_steps));
  progress = std::min(1.0, progress);
  const double decay = s.kind == LRSchedule::Kind::linear
                           ? 1.0 - progress
                           : 0.5 * (1.0 + std::cos(std::numbers::pi * progress));
  return s.min_ratio + (1.0 - s.min_ratio) * decay;
}

LRScheduler::LRScheduler(Optimizer& opt, LRSchedule schedule) : opt_(opt), schedule_(schedule) {
  for (const ParamGroup& g : opt_.param_groups()) base_lrs_.push_back(g.lr);
  set_step(0);
}

void LRScheduler::set_step(int64_t step) {
  const double f = lr_factor(schedule_, step);
  auto& groups = opt_.param_groups();
  COIL_CHECK(groups.size() == base_lrs_.size(), "LRScheduler: the optimizer had ", base_lrs_.size(),
             " parameter groups when the scheduler was made, now ", groups.size());
  for (size_t g = 0; g < groups.size(); ++g) groups[g].lr = base_lrs_[g] * f;
  step_ = step;
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
