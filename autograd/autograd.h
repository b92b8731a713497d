// Public autograd API: backward over several roots, checkpointing, gradcheck, anomaly mode.
#pragma once
#include <functional>
#include <string>

#include "../core/op_table.h"
#include "grad_mode.h"
#include "node.h"

namespace coil {

// Backpropagates from several outputs at once (grads may be undefined for scalar outputs).
void backward(const TensorList& outputs, const TensorList& grads = {}, bool retain_graph = false);

// Runs fn without saving its activations; backward recomputes it (replaying the RNG, so
// dropout inside sees the same mask) and backpropagates through the recomputation.
TensorList checkpoint(const std::function<TensorList(const TensorList&)>& fn,
                      const TensorList& inputs);

struct GradcheckResult {
  bool ok = true;
  double max_abs_err = 0;
  std::string message;  // the worst element when !ok
};
// Compares analytic gradients of fn at `inputs` (float64, contiguous, on cpu) with central
// differences, through a random projection of fn's output. Inputs without requires_grad are
// held fixed.
GradcheckResult gradcheck(const std::function<Tensor(const TensorList&)>& fn,
                          const TensorList& inputs, double eps = 1e-6, double atol = 1e-5,
                          double rtol = 1e-3);

namespace autograd {
// In anomaly mode every op checks its outputs (and backward its gradients) for NaN/Inf and
// throws naming the first op that produced one.
class DetectAnomalyGuard {
 public:
  DetectAnomalyGuard() : prev_(anomaly_mode()) { set_anomaly_mode(true); }
  ~DetectAnomalyGuard() { set_anomaly_mode(prev_); }
  DetectAnomalyGuard(const DetectAnomalyGuard&) = delete;
  DetectAnomalyGuard& operator=(const DetectAnomalyGuard&) = delete;

 private:
  bool prev_;
};
inline void detect_anomaly(bool on) { set_anomaly_mode(on); }
}  // namespace autograd

}  // namespace coil
