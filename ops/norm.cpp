// RMSNorm and LayerNorm, composed from coil ops (backward comes from autograd). 16-bit inputs
// are normalised in f32 and rounded once at the end; the result dtype is promoted with the
// affine parameters', as in PyTorch.
#include "norm.h"

#include "binary.h"
#include "copy.h"
#include "op_helpers.h"
#include "reduce.h"
#include "unary.h"

namespace coil {

namespace {

void check_param(const char* op, const char* what, const Tensor& p, const Shape& expect,
                 const Tensor& x) {
  if (!p.defined()) return;
  COIL_CHECK(p.sizes() == expect, op, ": ", what, " of shape ", p.shape_str(),
             " does not match the normalized shape ", shape_str(expect), " of input ",
             x.shape_str());
  COIL_CHECK(is_floating(p.dtype()), op, ": ", what, " must be floating point, got ", p.dtype());
  check_same_device(op, {x, p});
}

DType result_dtype(const Tensor& x, const Tensor& w, const Tensor& b) {
  TensorList ts{x};
  if (w.defined()) ts.push_back(w);
  if (b.defined()) ts.push_back(b);
  return result_type(ts);
}

}  // namespace

Tensor rms_norm(const Tensor& x, const Tensor& weight, double eps) {
  const char* name = "rms_norm";
  COIL_CHECK(is_floating(x.dtype()), name, ": input must be floating point, got ", x.dtype());
  COIL_CHECK(x.dim() >= 1, name, ": input must have at least one dim, got a 0-d tensor");
  COIL_CHECK(eps >= 0, name, ": eps must be non-negative, got ", eps);
  check_param(name, "weight", weight, {x.sizes().back()}, x);
  const DType out_t = result_dtype(x, weight, Tensor()), ct = compute_dtype(out_t);
  Tensor xc = to_dtype(x, ct);
  Tensor y = xc * rsqrt(mean(square(xc), {-1}, true) + eps);
  if (weight.defined()) y = y * to_dtype(weight, ct);
  return to_dtype(y, out_t);
}

Tensor layer_norm(const Tensor& x, const Shape& normalized_shape, const Tensor& weight,
                  const Tensor& bias, double eps) {
  const char* name = "layer_norm";
  COIL_CHECK(is_floating(x.dtype()), name, ": input must be floating point, got ", x.dtype());
  const int64_t k = static_cast<int64_t>(normalized_shape.size());
  COIL_CHECK(k >= 1, name, ": normalized_shape must have at least one dim");
  COIL_CHECK(eps >= 0, name, ": eps must be non-negative, got ", eps);
  bool trailing = k <= x.dim();
  for (int64_t i = 0; trailing && i < k; ++i)
    trailing = x.sizes()[x.dim() - k + i] == normalized_shape[i];
  COIL_CHECK(trailing, name, ": normalized_shape ", shape_str(normalized_shape),
             " does not match the trailing dims of input ", x.shape_str());
  check_param(name, "weight", weight, normalized_shape, x);
  check_param(name, "bias", bias, normalized_shape, x);
  Shape dims;
  for (int64_t i = x.dim() - k; i < x.dim(); ++i) dims.push_back(i);
  const DType out_t = result_dtype(x, weight, bias), ct = compute_dtype(out_t);
  Tensor xc = to_dtype(x, ct);
  Tensor centered = xc - mean(xc, dims, true);
  Tensor y = centered * rsqrt(mean(square(centered), dims, true) + eps);
  if (weight.defined()) y = y * to_dtype(weight, ct);
  if (bias.defined()) y = y + to_dtype(bias, ct);
  return to_dtype(y, out_t);
}

namespace {
void register_norm() {
  {
    OpInfo& o = register_op("rms_norm", "norm");
    o.composite = true;
    o.boxed = [](const TensorList& in, const Attrs& a) {
      Tensor w = in.size() > 1 ? in[1] : Tensor();
      return TensorList{rms_norm(in[0], w, attr_or<double>(a, "eps", 1e-5))};
    };
    o.gradcheck = [] {
      return GradcheckCase{{detail::gc_rand({3, 5}), detail::gc_rand({5}, 0.5, 1.5)},
                           [](const TensorList& x) { return rms_norm(x[0], x[1]); }};
    };
  }
  {
    OpInfo& o = register_op("layer_norm", "norm");
    o.composite = true;
    o.boxed = [](const TensorList& in, const Attrs& a) {
      Tensor w = in.size() > 1 ? in[1] : Tensor(), b = in.size() > 2 ? in[2] : Tensor();
      return TensorList{layer_norm(in[0], attr<Shape>(a, "normalized_shape"), w, b,
                                   attr_or<double>(a, "eps", 1e-5))};
    };
    o.gradcheck = [] {
      return GradcheckCase{
          {detail::gc_rand({2, 3, 4}), detail::gc_rand({3, 4}, 0.5, 1.5), detail::gc_rand({3, 4})},
          [](const TensorList& x) {
            return layer_norm(x[0], {3, 4}, x[1], x[2]);
          }};
    };
  }
}
OpRegistrar reg(register_norm);
}  // namespace

}  // namespace coil
