// Optimizers, as torch.optim: SGD (momentum, Nesterov, weight decay) and AdamW (decoupled
// weight decay). Parameter groups carry their own lr and weight decay, so A_log, D and norms
// can be excluded from decay.
#pragma once
#include <vector>

#include "../../core/tensor.h"

namespace coil::optim {

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
  void set_lr(double lr);  // every group: what a schedule calls each step
  double lr() const { return groups_.empty() ? 0 : groups_[0].lr; }
  std::vector<ParamGroup>& param_groups() { return groups_; }
  int64_t step_count() const { return steps_; }

 protected:
  Optimizer(std::vector<ParamGroup> groups, double lr, double weight_decay);
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

 private:
  AdamWOptions o_;
  std::vector<std::vector<Tensor>> m_, v_;
};

// Scales gradients so their global L2 norm is at most max_norm; returns the norm before.
double clip_grad_norm_(const std::vector<Tensor>& params, double max_norm);

}  // namespace coil::optim
