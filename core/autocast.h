// Mixed precision in one line, as torch.autocast:
//
//   coil::AutocastGuard autocast(coil::kBF16);   // forward (and loss) under it
//   Tensor loss = model->forward(ids) ...;
//   loss.backward();                              // outside or inside: the graph has the casts
//
// Inside the guard, on this thread, the ops that gain from a lower precision (linear, matmul,
// bmm, grouped_mm, causal_conv1d) cast their floating inputs to it, and the ops that need range
// or accuracy (selective_scan, ssd_scan, rms_norm, softmax, log_softmax, cross_entropy,
// logsumexp) compute in float32 from any lower-precision input. Parameters stay float32 (the
// master weights): the casts are differentiable, so their gradients come back in float32, and
// the optimizer updates float32. Other ops follow their inputs, with PyTorch's type promotion
// (a bf16 activation plus a float32 residual is float32).
#pragma once
#include "dtype.h"

namespace coil {

struct AutocastState {
  bool enabled = false;
  DType dtype = kBF16;
};
AutocastState autocast_state();  // this thread's
void set_autocast_state(AutocastState s);

class AutocastGuard {
 public:
  // dtype: kBF16 or kF16; enabled = false turns autocast off inside an enclosing guard.
  explicit AutocastGuard(DType dtype = kBF16, bool enabled = true);
  ~AutocastGuard();
  AutocastGuard(const AutocastGuard&) = delete;
  AutocastGuard& operator=(const AutocastGuard&) = delete;

 private:
  AutocastState prev_;
};

// GEMMs in float32 on a GPU may use TF32 tensor cores (10-bit mantissa inputs, float32
// accumulation), as torch.backends.cuda.matmul.allow_tf32: off by default. Process-wide.
void set_allow_tf32(bool on);
bool allow_tf32();

}  // namespace coil
