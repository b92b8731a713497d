// Optimizers, as torch.optim: SGD (momentum, Nesterov, weight decay) and AdamW (decoupled
// weight decay). Parameter groups carry their own lr and weight decay, so A_log, D and norms
// can be excluded from decay. Learning-rate schedules as transformers' get_*_schedule_with_warmup.
// Optimizer state goes in and out as a flat list of named tensors, ready for a safetensors file.
#pragma once
#include <string>
#include <utility>
#include <vector>

#include "../../core/tensor.h"

namespace coil::optim {

// An ordered list of (name, tensor): what state_dict() returns and a safetensors file holds.
using StateDict = std::vector<std::pair<std::string, Tensor>>;

struct ParamGroup {
  std::vector<Tensor> params;
  double lr = -1;            // < 0: the optimizer's default
  double weight_decay = -1;  // < 0: the optimizer's default
};

class Optimizer {
 public:
  virtual ~Optimizer() = default;
  virtual void step() = 0;
  // Drops gradients (set_to_none, PyTorch's default since 2.0).
  void zero_grad();
  void set_lr(double lr);  // every group to one value (LRScheduler scales each group instead)
  double lr() const { return groups_.empty() ? 0 : groups_[0].lr; }
  std::vector<ParamGroup>& param_groups() { return groups_; }
  int64_t step_count() const { return steps_; }

  // The optimizer's state as named tensors:
  //   "step"                    i64 0-d, steps taken
  //   "group.<g>.lr"            f64 0-d, and "group.<g>.weight_decay"
  //   "group.<g>.num_params"    i64 0-d, to check the layout on load
  //   "state.<g>.<i>.<buffer>"  a parameter's buffers (SGD: momentum_buffer; AdamW: exp_avg,
  //                             exp_avg_sq), only those that exist yet
  // The tensors are the live buffers, not copies: save them before the next step.
  StateDict state_dict() const;
  // Restores a state_dict() of the same optimizer type over parameters of the same layout
  // (groups, parameter counts, shapes): the next steps are bit-identical to the original's.
  // Buffers are copied (never aliased) onto each parameter's device. Missing, unexpected or
  // mis-shaped entries throw coil::Error naming them, and then nothing is changed.
  void load_state_dict(const StateDict& sd);

 protected:
  Optimizer(std::vector<ParamGroup> groups, double lr, double weight_decay);
  // Per-parameter buffers, for state_dict: their names, and the slot of buffer b of param (g, i).
  virtual std::vector<std::string> buffer_names() const = 0;
  virtual Tensor& buffer(size_t b, size_t g, size_t i) = 0;
  // The dtype a buffer of parameter p is kept in.
  virtual DType buffer_dtype(const Tensor& p) const { return p.dtype(); }
  const char* name_ = "Optimizer";
  std::vector<ParamGroup> groups_;
  int64_t steps_ = 0;
};

struct SGDOptions {
  double lr = 1e-2;
  double momentum = 0;
  double dampening = 0;
  double weight_decay = 0;  // L2, added to the gradient
  bool nesterov = false;
};

class SGD : public Optimizer {
 public:
  SGD(std::vector<Tensor> params, SGDOptions o = {});
  SGD(std::vector<ParamGroup> groups, SGDOptions o = {});
  void step() override;

 protected:
  std::vector<std::string> buffer_names() const override { return {"momentum_buffer"}; }
  Tensor& buffer(size_t, size_t g, size_t i) override { return momentum_[g][i]; }

 private:
  SGDOptions o_;
  std::vector<std::vector<Tensor>> momentum_;  // per group, per param
};

struct AdamWOptions {
  double lr = 1e-3;
  double beta1 = 0.9, beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 1e-2;  // decoupled: p -= lr * wd * p
};

class AdamW : public Optimizer {
 public:
  AdamW(std::vector<Tensor> params, AdamWOptions o = {});
  AdamW(std::vector<ParamGroup> groups, AdamWOptions o = {});
  void step() override;

 protected:
  std::vector<std::string> buffer_names() const override { return {"exp_avg", "exp_avg_sq"}; }
  Tensor& buffer(size_t b, size_t g, size_t i) override { return b == 0 ? m_[g][i] : v_[g][i]; }
  DType buffer_dtype(const Tensor& p) const override { return p.dtype() == kF64 ? kF64 : kF32; }

 private:
  AdamWOptions o_;
  std::vector<std::vector<Tensor>> m_, v_;
};

// Scales gradients so their global L2 norm is at most max_norm; returns the norm before. A NaN
// or infinite norm scales nothing (and is returned).
double clip_grad_norm_(const std::vector<Tensor>& params, double max_norm);

// The guard against non-finite gradients (an overflow, a bad batch): clips to max_norm (when
// > 0), then runs opt.step() only if the gradients' norm is finite. A skipped step leaves the
// parameters and the optimizer's state (moments, step count) exactly as they were and clears the
// gradients. Under data parallelism call it after the gradients are reduced, so that every rank
// sees the same norm and makes the same choice.
struct GuardedStep {
  double grad_norm;
  bool skipped;
};
GuardedStep step_if_finite(Optimizer& opt, const std::vector<Tensor>& params, double max_norm);

// ---- learning-rate schedules ----
// A schedule is a multiplier of each group's base learning rate as a function of the step
// (0-based: the factor at step k is the one optimizer step k uses), as transformers':
//   warmup (step < warmup_steps):  step / max(1, warmup_steps)      (so step 0 trains at 0)
//   then, with progress = (step - warmup) / max(1, total - warmup) clamped to [0, 1]:
//   constant  1
//   linear    min_ratio + (1 - min_ratio) * (1 - progress)
//   cosine    min_ratio + (1 - min_ratio) * 0.5 * (1 + cos(pi * progress))
// With min_ratio = 0 these are get_constant_schedule_with_warmup,
// get_linear_schedule_with_warmup and get_cosine_schedule_with_warmup; with min_ratio > 0 the
// cosine is get_cosine_with_min_lr_schedule_with_warmup(min_lr_rate=min_ratio). Past
// total_steps the factor stays at min_ratio (transformers' cosine would rise again).
struct LRSchedule {
  enum class Kind { constant, linear, cosine };
  Kind kind = Kind::constant;
  int64_t warmup_steps = 0;
  int64_t total_steps = 0;  // linear / cosine: where the decay reaches min_ratio
  double min_ratio = 0;

  static LRSchedule constant(int64_t warmup_steps = 0);
  static LRSchedule linear(int64_t warmup_steps, int64_t total_steps, double min_ratio = 0);
  static LRSchedule cosine(int64_t warmup_steps, int64_t total_steps, double min_ratio = 0);
};

double lr_factor(const LRSchedule& s, int64_t step);
inline double lr_at(const LRSchedule& s, double base_lr, int64_t step) {
  return base_lr * lr_factor(s, step);
}

// Drives an optimizer's groups through a schedule, as torch's LambdaLR: it remembers each
// group's lr at construction as its base, sets the step-0 lr at once, and step() (called after
// optimizer.step()) moves to the next step. To resume, set_step(saved last_step()).
class LRScheduler {
 public:
  LRScheduler(Optimizer& opt, LRSchedule schedule);
  void step() { set_step(step_ + 1); }
  void set_step(int64_t step);
  int64_t last_step() const { return step_; }
  const LRSchedule& schedule() const { return schedule_; }

 private:
  Optimizer& opt_;
  LRSchedule schedule_;
  std::vector<double> base_lrs_;
  int64_t step_ = 0;
};

}  // namespace coil::optim
