#include "optim.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numbers>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "../../autograd/grad_mode.h"
#include "../../core/parallel.h"
#include "../../dist/dtensor.h"
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
  // Range checks before the casts: a double past the int64 range does not convert.
  const double step_value = scalar("step", true);
  COIL_CHECK(step_value >= 0 && step_value < 0x1p63, who, ".load_state_dict: step ", step_value,
             " is out of range");
  const int64_t step = static_cast<int64_t>(step_value);
  std::vector<double> lrs, wds;
  for (size_t g = 0; g < groups_.size(); ++g) {
    lrs.push_back(scalar(group_key(g, "lr"), false));
    wds.push_back(scalar(group_key(g, "weight_decay"), false));
    const double n = scalar(group_key(g, "num_params"), true);
    COIL_CHECK(n == static_cast<double>(groups_[g].params.size()), who, ".load_state_dict: group ",
               g, " has ", groups_[g].params.size(), " parameters but the state dict has ", n);
  }
  const std::vector<std::string> bufs = buffer_names();
  std::vector<std::vector<std::vector<const Tensor*>>> found(groups_.size());
  for (size_t g = 0; g < groups_.size(); ++g) {
    found[g].resize(groups_[g].params.size());
    for (size_t i = 0; i < groups_[g].params.size(); ++i) {
      // a DTensor parameter's state is its local piece (AdamW::step)
      const Tensor p = dist::is_dtensor(groups_[g].params[i]) ? dist::to_local(groups_[g].params[i])
                                                              : groups_[g].params[i];
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
      const Tensor p = dist::is_dtensor(groups_[g].params[i]) ? dist::to_local(groups_[g].params[i])
                                                              : groups_[g].params[i];
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

namespace {

// The fused AdamW update: one pass over p, g, m, v (CPU, contiguous, one floating dtype) with
// the arithmetic of the composite path below, in the parameter's precision (v / bc2 as a
// multiplication by 1 / bc2), without its temporaries (g * g, v / bc2, sqrt, + eps, m / denom)
// or its ten passes over memory. All parameters of a step run in one parallel region, split in
// pieces of at most kPiece elements: a model has hundreds of small parameters, and a region per
// parameter costs a fork and a join each (milliseconds apiece when another process holds a core).
constexpr int64_t kPiece = int64_t(1) << 15;

template <class T>
struct AdamWItem {
  T* p;
  const T* g;
  T* m;
  T* v;
  int64_t n;
  T decay, step;  // 1 - lr wd, and -lr / bc1
};

template <class T>
void adamw_fused(const std::vector<AdamWItem<T>>& items, double beta1, double beta2, double bc2,
                 double eps) {
  if (items.empty()) return;
  const T b1 = static_cast<T>(beta1), b2 = static_cast<T>(beta2);
  const T a1 = static_cast<T>(1 - beta1), a2 = static_cast<T>(1 - beta2);
  const T inv_c2 = static_cast<T>(1.0 / bc2), e = static_cast<T>(eps);
  std::vector<std::pair<size_t, int64_t>> pieces;  // (item, first element)
  for (size_t k = 0; k < items.size(); ++k)
    for (int64_t i = 0; i < items[k].n; i += kPiece) pieces.emplace_back(k, i);
  parallel_for(0, static_cast<int64_t>(pieces.size()), 1, [&](int64_t lo, int64_t hi) {
    for (int64_t q = lo; q < hi; ++q) {
      const AdamWItem<T>& it = items[pieces[static_cast<size_t>(q)].first];
      const int64_t i0 = pieces[static_cast<size_t>(q)].second;
      const int64_t i1 = std::min(it.n, i0 + kPiece);
      T* p = it.p;
      const T* g = it.g;
      T* m = it.m;
      T* v = it.v;
      const T d = it.decay, s = it.step;
#pragma omp simd
      for (int64_t i = i0; i < i1; ++i) {
        const T gi = g[i];
        const T mi = m[i] * b1 + a1 * gi;
        const T vi = v[i] * b2 + a2 * (gi * gi);
        m[i] = mi;
        v[i] = vi;
        p[i] = p[i] * d + s * (mi / (std::sqrt(vi * inv_c2) + e));
      }
    }
  });
}

bool fusable(const Tensor& p, const Tensor& g, const Tensor& m, const Tensor& v) {
  return p.device().type == kCPU && (p.dtype() == kF32 || p.dtype() == kF64) && p.is_contiguous() &&
         g.device() == p.device() && g.dtype() == p.dtype() && m.dtype() == p.dtype() &&
         v.dtype() == p.dtype() && m.is_contiguous() && v.is_contiguous();
}

}  // namespace

void AdamW::step() {
  NoGradGuard ng;
  ++steps_;
  const double bc1 = 1 - std::pow(o_.beta1, static_cast<double>(steps_));
  const double bc2 = 1 - std::pow(o_.beta2, static_cast<double>(steps_));
  std::vector<AdamWItem<float>> f32;
  std::vector<AdamWItem<double>> f64;
  std::vector<Tensor> keep;  // contiguous copies of non-contiguous gradients, alive until done
  std::unordered_set<const void*> seen;
  for (size_t gi = 0; gi < groups_.size(); ++gi) {
    const ParamGroup& grp = groups_[gi];
    for (size_t pi = 0; pi < grp.params.size(); ++pi) {
      Tensor p = grp.params[pi];
      Tensor g = p.grad();
      if (!g.defined()) continue;
      if (dist::is_dtensor(p)) {
        // a DTensor parameter: each rank updates its piece with the gradient's matching piece
        // (a Partial gradient is reduced here); the state holds pieces too
        const dist::Placements& pl = dist::dtensor_spec(p).placements;
        g = dist::is_dtensor(g) ? dist::to_local(dist::redistribute(g, pl)) : g;
        p = dist::to_local(p);
      }
      Tensor& m = m_[gi][pi];
      Tensor& v = v_[gi][pi];
      if (!m.defined()) {
        // state in f32 at least, whatever the parameter's dtype
        DType st = p.dtype() == kF64 ? kF64 : kF32;
        m = zeros(p.sizes(), Options(st, p.device()));
        v = zeros(p.sizes(), Options(st, p.device()));
      }
      if (fusable(p, g, m, v)) {
        // A parameter listed twice is updated twice, in order, as the composite path would.
        if (!seen.insert(p.raw_data()).second) {
          adamw_fused(f32, o_.beta1, o_.beta2, bc2, o_.eps);
          adamw_fused(f64, o_.beta1, o_.beta2, bc2, o_.eps);
          f32.clear();
          f64.clear();
          seen = {p.raw_data()};
        }
        Tensor gc = g.contiguous();
        keep.push_back(gc);
        const double decay = grp.weight_decay != 0 ? 1 - grp.lr * grp.weight_decay : 1.0;
        const double step = -grp.lr / bc1;
        if (p.dtype() == kF32)
          f32.push_back({p.data_ptr<float>(), gc.data_ptr<float>(), m.data_ptr<float>(),
                         v.data_ptr<float>(), p.numel(), static_cast<float>(decay),
                         static_cast<float>(step)});
        else
          f64.push_back({p.data_ptr<double>(), gc.data_ptr<double>(), m.data_ptr<double>(),
                         v.data_ptr<double>(), p.numel(), decay, step});
        p.bump_version();
        m.bump_version();
        v.bump_version();
        continue;
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
  adamw_fused(f32, o_.beta1, o_.beta2, bc2, o_.eps);
  adamw_fused(f64, o_.beta1, o_.beta2, bc2, o_.eps);
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

namespace {
// A contiguous f32/f64 CPU gradient for the fused loops of clip_grad_norm_.
struct GradSpan {
  void* data;
  bool f64;
  int64_t n;
  bool in_place;  // data is the gradient itself, not a contiguous copy
};
constexpr int64_t kNormBlock = int64_t(1) << 16;

template <class T>
double block_sum_squares(const T* x, int64_t len) {
  double acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < len; ++i) acc += static_cast<double>(x[i]) * x[i];
  return acc;
}
template <class T>
void block_scale(T* x, int64_t len, T s) {
#pragma omp simd
  for (int64_t i = 0; i < len; ++i) x[i] *= s;
}
}  // namespace

// The squares are summed in f64 over fixed blocks of kNormBlock elements of each gradient, then
// the block sums in order, so the norm does not depend on the thread count. All blocks of all
// gradients run in one parallel region (and so does the scaling), not one per parameter.
double clip_grad_norm_(const std::vector<Tensor>& params, double max_norm) {
  NoGradGuard ng;
  double total = 0;
  std::vector<GradSpan> spans;
  std::vector<Tensor> keep;   // contiguous copies of non-contiguous gradients
  std::vector<Tensor> other;  // gradients scaled with mul_ (not contiguous, not CPU f32/f64)
  std::unordered_set<const void*> seen;
  std::vector<Tensor> distributed;  // DTensor gradients: their norm is summed over the pieces
  for (const Tensor& p : params) {
    Tensor g = p.grad();
    if (!g.defined()) continue;
    if (dist::is_dtensor(g)) {
      distributed.push_back(p);
      continue;
    }
    if (g.device().type == kCPU && (g.dtype() == kF32 || g.dtype() == kF64)) {
      Tensor gc = g.contiguous();
      // a gradient met twice (a parameter listed twice) is scaled twice, the second time by mul_
      const bool in_place = g.is_contiguous() && seen.insert(g.raw_data()).second;
      if (!g.is_contiguous()) keep.push_back(gc);
      if (!in_place) other.push_back(g);
      spans.push_back({gc.raw_data(), g.dtype() == kF64, gc.numel(), in_place});
      continue;
    }
    total += sum(square(g.to(kF64))).item<double>();
    other.push_back(g);
  }
  std::vector<std::pair<size_t, int64_t>> blocks;  // (span, first element)
  for (size_t k = 0; k < spans.size(); ++k)
    for (int64_t i = 0; i < spans[k].n; i += kNormBlock) blocks.emplace_back(k, i);
  const int64_t nb = static_cast<int64_t>(blocks.size());
  std::vector<double> part(blocks.size(), 0.0);
  parallel_for(0, nb, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t b = lo; b < hi; ++b) {
      const GradSpan& s = spans[blocks[static_cast<size_t>(b)].first];
      const int64_t i0 = blocks[static_cast<size_t>(b)].second;
      const int64_t len = std::min(kNormBlock, s.n - i0);
      part[static_cast<size_t>(b)] =
          s.f64 ? block_sum_squares(static_cast<const double*>(s.data) + i0, len)
                : block_sum_squares(static_cast<const float*>(s.data) + i0, len);
    }
  });
  for (double v : part) total += v;
  for (const Tensor& p : distributed) {
    // Partial pieces reduced first (the parameter keeps the reduced gradient); a Shard piece's
    // squares are summed over its mesh dim
    Tensor g = p.grad();
    const dist::DeviceMesh mesh = dist::dtensor_spec(g).mesh;  // copies: g is replaced below
    const dist::Placements had = dist::dtensor_spec(g).placements;
    dist::Placements pl = had;
    for (auto& q : pl)
      if (q.is_partial()) q = dist::Replicate();
    if (pl != had) {
      g = dist::redistribute(g, pl);
      const_cast<Tensor&>(p).set_grad(g);
    }
    Tensor sq = full({1}, sum(square(dist::to_local(g).to(kF64))).item<double>(), Options(kF64));
    for (int64_t i = 0; i < mesh.ndim(); ++i)
      if (pl[i].is_shard())
        mesh.group(i)->all_reduce(sq, dist::ReduceOp::kSum, dist::blocking())->wait();
    total += sq.item<double>();
    other.push_back(g);
  }
  double norm = std::sqrt(total);
  if (norm > max_norm && norm > 0) {
    double scale = max_norm / (norm + 1e-6);
    // the contiguous gradients in place, in one region; the others (and the originals of the
    // contiguous copies) with mul_
    parallel_for(0, nb, 1, [&](int64_t lo, int64_t hi) {
      for (int64_t b = lo; b < hi; ++b) {
        const GradSpan& s = spans[blocks[static_cast<size_t>(b)].first];
        if (!s.in_place) continue;
        const int64_t i0 = blocks[static_cast<size_t>(b)].second;
        const int64_t len = std::min(kNormBlock, s.n - i0);
        if (s.f64)
          block_scale(static_cast<double*>(s.data) + i0, len, scale);
        else
          block_scale(static_cast<float*>(s.data) + i0, len, static_cast<float>(scale));
      }
    });
    for (const Tensor& p : params)
      if (p.grad().defined()) p.grad().bump_version();
    for (Tensor& g : other) g.mul_(scale);
  }
  return norm;
}

GuardedStep step_if_finite(Optimizer& opt, const std::vector<Tensor>& params, double max_norm) {
  const double norm =
      clip_grad_norm_(params, max_norm > 0 ? max_norm : std::numeric_limits<double>::infinity());
  if (!std::isfinite(norm)) {
    opt.zero_grad();
    return {norm, true};
  }
  opt.step();
  return {norm, false};
}

}  // namespace coil::optim
