// Losses, composed from other coil ops (so they run and differentiate wherever those do).
// cross_entropy picks each target's log-probability with a class == target mask rather than a
// gather, and computes in f32 for 16-bit logits.
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

namespace {

void check_reduction(const char* op, const std::string& reduction) {
  COIL_CHECK(reduction == "mean" || reduction == "sum" || reduction == "none", op,
             ": reduction must be \"mean\", \"sum\" or \"none\", got \"", reduction, "\"");
}

}  // namespace

Tensor cross_entropy(const Tensor& logits, const Tensor& target, int64_t ignore_index,
                     double label_smoothing, const std::string& reduction) {
  const char* name = "cross_entropy";
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
