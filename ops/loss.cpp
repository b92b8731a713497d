// Losses, composed from other coil ops (so they run and differentiate wherever those do).
// cross_entropy picks each target's log-probability with a class == target mask rather than a
// gather, and computes in f32 for 16-bit logits. On the CPU, (N, C) f32/f64 logits take a fused
// path instead (ops/cpu/loss.cpp): one kernel for the per-row losses and one for the gradient of
// the logits, with the same results; the op stays composite everywhere else.
#include "loss.h"

#include <vector>

#include "binary.h"
#include "copy.h"
#include "creation.h"
#include "op_helpers.h"
#include "reduce.h"
#include "softmax.h"
#include "unary.h"
#include "view.h"

namespace coil {

namespace cpu {
// ops/cpu/loss.cpp. loss, lse (N) and logits (N, C) contiguous, one dtype (f32 or f64); target
// (N) contiguous int64. The backward writes dlogits (N, C) from grad_rows (N), the gradient of
// each row's loss.
void cross_entropy_kernel(const Tensor& loss, const Tensor& lse, const Tensor& logits,
                          const Tensor& target, int64_t ignore_index, double label_smoothing);
void cross_entropy_backward_kernel(const Tensor& dlogits, const Tensor& grad_rows,
                                   const Tensor& logits, const Tensor& lse, const Tensor& target,
                                   int64_t ignore_index, double label_smoothing);
}  // namespace cpu

namespace {

void check_reduction(const char* op, const std::string& reduction) {
  COIL_CHECK(reduction == "mean" || reduction == "sum" || reduction == "none", op,
             ": reduction must be \"mean\", \"sum\" or \"none\", got \"", reduction, "\"");
}

// The fused CPU path for validated (N, C) logits lg and targets tg (N); `valid` counts the
// targets that are not ignore_index.
Tensor fused_cross_entropy(const Tensor& lg, const Tensor& tg, int64_t ignore_index,
                           double label_smoothing, const std::string& reduction, int64_t valid,
                           bool unbatched) {
  const int64_t N = lg.sizes()[0], C = lg.sizes()[1];
  const Options opt(lg.dtype(), lg.device());
  Tensor x = lg.detach().contiguous();
  Tensor t = detail::as_compute(tg.detach(), kI64).contiguous();
  Tensor rows = empty({N}, opt), lse = empty({N}, opt);
  cpu::cross_entropy_kernel(rows, lse, x, t, ignore_index, label_smoothing);
  Tensor loss;
  if (reduction == "sum")
    loss = sum(rows);
  else if (reduction == "mean")
    loss = sum(rows) / static_cast<double>(valid);  // no valid targets: 0 / 0 = NaN, as PyTorch
  else
    loss = unbatched ? squeeze(rows, 0) : rows;
  if (needs_grad({&lg})) {
    SavedTensor sx(x, "cross_entropy");
    record("cross_entropy", {lg}, {loss},
           [sx, t, lse, N, C, opt, ignore_index, label_smoothing, reduction,
            valid](const TensorList& g) {
             // the gradient of each row's loss
             Tensor gr = reduction == "none" ? g[0].reshape({N})
                         : reduction == "mean"
                             ? (g[0] / static_cast<double>(valid)).reshape({1}).expand({N})
                             : g[0].reshape({1}).expand({N});
             gr = detail::as_compute(gr.detach(), opt.dtype).contiguous();
             Tensor dx = empty({N, C}, opt);
             cpu::cross_entropy_backward_kernel(dx, gr, sx.unpack(), lse, t, ignore_index,
                                                label_smoothing);
             return TensorList{dx};
           });
  }
  return loss;
}

}  // namespace

Tensor cross_entropy(const Tensor& logits, const Tensor& target, int64_t ignore_index,
                     double label_smoothing, const std::string& reduction) {
  if (detail::AutocastScope ac; ac)
    return cross_entropy(detail::autocast_f32(logits), target, ignore_index, label_smoothing,
                         reduction);
  const char* name = "cross_entropy";
  if (any_distributed({&logits, &target})) {
    static const OpInfo& op = op_info(name);
    return dist_dispatch(op, {logits, target},
                         {{"ignore_index", ignore_index},
                          {"label_smoothing", label_smoothing},
                          {"reduction", reduction}})[0];
  }
  check_reduction(name, reduction);
  COIL_CHECK(is_floating(logits.dtype()), name, ": logits must be floating point, got ",
             logits.dtype());
  COIL_CHECK(target.dtype() == kI64 || target.dtype() == kI32, name,
             ": target must hold int64 (or int32) class indices, got ", target.dtype());
  check_same_device(name, {logits, target});
  COIL_CHECK(label_smoothing >= 0 && label_smoothing <= 1, name,
             ": label_smoothing must be in [0, 1], got ", label_smoothing);
  COIL_CHECK(logits.dim() >= 1, name, ": logits must be (C), (N, C) or (N, C, d1, ...), got ",
             logits.shape_str());
  // Unbatched (C) logits with a 0-d target, as PyTorch allows.
  const bool unbatched = logits.dim() == 1;
  Tensor lg = unbatched ? unsqueeze(logits, 0) : logits;
  Tensor tg = unbatched ? unsqueeze(target, 0) : target;
  Shape expect = lg.sizes();
  expect.erase(expect.begin() + 1);
  COIL_CHECK(tg.sizes() == expect, name, ": target of shape ", target.shape_str(),
             " does not match logits of shape ", logits.shape_str(), " (expected target shape ",
             shape_str(unbatched ? Shape{} : expect), ")");
  const int64_t C = lg.sizes()[1];
  COIL_CHECK(C > 0, name, ": logits of shape ", logits.shape_str(), " have no classes");

  // Validate the class indices on the host; the count of valid ones is the mean's denominator.
  int64_t valid = 0;
  for (int64_t v : to_vector<int64_t>(tg)) {
    if (v == ignore_index) continue;
    COIL_CHECK(v >= 0 && v < C, name, ": target value ", v, " is out of range for ", C,
               " classes (expected in [0, ", C - 1, "] or ignore_index ", ignore_index, ")");
    ++valid;
  }

  const Device dev = logits.device();
  const DType out_t = logits.dtype(), ct = compute_dtype(out_t);
  if (lg.dim() == 2 && dev.type == kCPU && (out_t == kF32 || out_t == kF64) &&
      !any_distributed({&logits, &target}))
    return fused_cross_entropy(lg, tg, ignore_index, label_smoothing, reduction, valid, unbatched);
  Tensor logp = log_softmax(to_dtype(lg, ct), 1);
  Shape cls_shape(static_cast<size_t>(lg.dim()), 1);
  cls_shape[1] = C;
  Tensor classes = reshape(arange(C, Options(kI64, dev)), cls_shape);
  Tensor t64 = detail::as_compute(tg, kI64);
  Tensor hit = eq(classes, unsqueeze(t64, 1));  // (N, C, d...): true at each target's class
  Tensor zero = zeros({}, Options(ct, dev));
  // where, not a multiply: a -inf log-probability off the target must not turn into NaN
  Tensor loss = -sum(where(hit, logp, zero), {1});
  if (label_smoothing > 0)
    loss = (1.0 - label_smoothing) * loss - label_smoothing * mean(logp, {1});
  if (valid < tg.numel()) loss = where(ne(t64, detail::wrap(ignore_index, dev)), loss, zero);

  if (reduction == "sum") {
    loss = sum(loss);
  } else if (reduction == "mean") {
    loss = sum(loss) / static_cast<double>(valid);  // no valid targets: 0 / 0 = NaN, as PyTorch
  } else if (unbatched) {
    loss = squeeze(loss, 0);
  }
  return ct == out_t ? loss : to_dtype(loss, out_t);
}

Tensor mse_loss(const Tensor& input, const Tensor& target, const std::string& reduction) {
  const char* name = "mse_loss";
  check_reduction(name, reduction);
  COIL_CHECK(is_floating(input.dtype()) && is_floating(target.dtype()), name,
             ": input and target must be floating point, got ", input.dtype(), " and ",
             target.dtype());
  COIL_CHECK(input.sizes() == target.sizes(), name, ": input of shape ", input.shape_str(),
             " and target of shape ", target.shape_str(), " differ");
  check_same_device(name, {input, target});
  Tensor sq = square(input - target);
  if (reduction == "none") return sq;
  if (reduction == "sum") return sum(sq);
  return mean(sq);  // empty: 0 / 0 = NaN, as PyTorch
}

namespace {
void register_loss() {
  {
    OpInfo& o = register_op("cross_entropy", "loss");
    o.composite = true;
    o.boxed = [](const TensorList& in, const Attrs& a) {
      return TensorList{cross_entropy(in[0], in[1], attr_or<int64_t>(a, "ignore_index", -100),
                                      attr_or<double>(a, "label_smoothing", 0.0),
                                      attr_or<std::string>(a, "reduction", "mean"))};
    };
    o.gradcheck = [] {
      Tensor target = tensor(std::vector<int64_t>{1, 0, 4, 2}, {4});
      return GradcheckCase{{detail::gc_rand({4, 5}, -2, 2), target},
                           [](const TensorList& x) { return cross_entropy(x[0], x[1]); }};
    };
  }
  {
    OpInfo& o = register_op("mse_loss", "loss");
    o.composite = true;
    o.boxed = [](const TensorList& in, const Attrs& a) {
      return TensorList{mse_loss(in[0], in[1], attr_or<std::string>(a, "reduction", "mean"))};
    };
    o.gradcheck = [] {
      return GradcheckCase{{detail::gc_rand({3, 4}), detail::gc_rand({3, 4})},
                           [](const TensorList& x) { return mse_loss(x[0], x[1]); }};
    };
  }
}
OpRegistrar reg(register_loss);
}  // namespace

}  // namespace coil
