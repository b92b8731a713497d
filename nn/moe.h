// Mixture of experts (../shared/MATH.md section 6): a top-k router, SwiGLU experts stored as
// stacked weights and run as grouped GEMMs over the tokens sorted by expert, optional shared
// experts, and expert parallelism (dist/expert_parallel.h). Names follow Hugging Face's
// GraniteMoe: router.layer.weight, input_linear.weight (E, 2F, D: gate rows, then up rows),
// output_linear.weight (E, D, F).
//
//   nn::MoEOptions o;
//   o.router.num_experts = 8;
//   o.router.top_k = 2;
//   o.ffn_hidden = 512;
//   nn::MoE moe(768, o);
//   Tensor y = moe.forward(x);                 // x (..., 768)
//   Tensor loss = task_loss + moe.aux_loss();  // load balancing and z-loss, when enabled
#pragma once
#include <optional>

#include "../dist/expert_parallel.h"
#include "layers.h"

namespace coil::nn {

struct RouterOptions {
  int64_t num_experts = 8;
  int64_t top_k = 2;
  bool sigmoid = false;         // scores by sigmoid (then the k weights always sum to 1)
  bool normalize_topk = false;  // softmax scores: renormalise the k weights to sum 1
  // Group-limited routing: the experts in num_groups groups; a token picks its experts from the
  // topk_groups groups with the best expert (1 group: off).
  int64_t num_groups = 1, topk_groups = 1;
  // Switch load-balancing loss alpha * E * sum_i f_i * P_i, f_i the fraction of the T * k
  // assignments that go to expert i (Megatron's normalisation), P_i its mean probability.
  double aux_loss_coef = 0;
  // f_i over the T tokens instead of the T * k assignments (k times larger): Hugging Face's
  // load_balancing_loss_func, for matching models trained with it.
  bool aux_loss_per_token = false;
  double z_loss_coef = 0;  // coef * mean over tokens of logsumexp(logits)^2
  // Loss-free balancing: a routing-only bias added to the scores that pick the experts (not
  // to the weights); update_bias() moves it by rate * sign(mean count - count).
  double bias_update_rate = 0;
};

class TopKRouter : public Module {
 public:
  TopKRouter(int64_t hidden, RouterOptions o, DType dtype = kF32);
  struct Output {
    Tensor weights;   // (T, k) routing weights (differentiable)
    Tensor experts;   // (T, k) int64 expert ids
    Tensor aux_loss;  // scalar: the enabled balancing losses (zero when none)
  };
  Output forward(const Tensor& x) const;  // x (T, hidden)
  // Tokens routed to each expert by the last forward, (E) int64.
  Tensor tokens_per_expert() const { return counts_; }
  // Loss-free balancing step: counts of the last forward summed over `group` (the data ranks;
  // null: this process alone), then expert_bias -= rate * sign(count - mean count).
  void update_bias(const dist::GroupPtr& group = nullptr);

  std::shared_ptr<Linear> layer;  // (E, hidden), no bias
  Tensor expert_bias;  // (E) routing only; a buffer (state_dict) when bias_update_rate > 0
  RouterOptions options;

 private:
  mutable Tensor counts_;
};

// E SwiGLU experts, stacked: out = (silu(x W_gate^T) * (x W_up^T)) W_down^T per expert.
class Experts : public Module {
 public:
  Experts(int64_t num_experts, int64_t hidden, int64_t ffn_hidden, DType dtype = kF32);
  // x (n, hidden): rows sorted by expert, group e = rows offsets[e] .. offsets[e+1] - 1 (offsets
  // int64 (E_here + 1) for the experts this rank holds).
  Tensor forward(const Tensor& x, const Tensor& offsets) const;
  Tensor input_linear;   // (E, 2 * ffn_hidden, hidden)
  Tensor output_linear;  // (E, hidden, ffn_hidden)
};

// A dense SwiGLU MLP with GraniteMoe's shared_mlp names: input_linear (2F, D), output_linear
// (D, F). The shared experts of an MoE layer, or a dense feed-forward.
class GatedMLP : public Module {
 public:
  GatedMLP(int64_t hidden, int64_t ffn_hidden, DType dtype = kF32);
  Tensor forward(const Tensor& x) const;
  std::shared_ptr<Linear> input_linear, output_linear;
};

struct MoEOptions {
  RouterOptions router;
  int64_t ffn_hidden = 512;
  int64_t shared_ffn_hidden = 0;  // > 0: a shared GatedMLP every token also goes through
  // > 0: each expert takes at most ceil(T * k / E * capacity_factor) of a rank's tokens, the
  // first in token order; the rest are dropped (their slot adds nothing). 0: dropless.
  double capacity_factor = 0;
};

class MoE : public Module {
 public:
  MoE(int64_t hidden, MoEOptions o, DType dtype = kF32);
  Tensor forward(const Tensor& x) const;               // x (..., hidden)
  Tensor aux_loss() const { return aux_; }             // of the last forward (a scalar)
  int64_t dropped_tokens() const { return dropped_; }  // (token, slot) pairs the capacity dropped
  // Spreads the experts over ep.group (distributes the expert weights as Shard(0) DTensors):
  // each rank then routes its own tokens and the experts' inputs travel by all_to_all.
  void set_expert_parallel(const dist::ExpertParallel& ep);

  std::shared_ptr<TopKRouter> router;
  std::shared_ptr<Experts> experts;      // its weights are this module's input_linear.weight, ...
  std::shared_ptr<GatedMLP> shared_mlp;  // null without shared experts
  MoEOptions options;
  std::optional<dist::ExpertParallel> expert_parallel;

 private:
  mutable Tensor aux_;
  mutable int64_t dropped_ = 0;
};

}  // namespace coil::nn
