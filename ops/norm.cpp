// RMSNorm and LayerNorm, composed from coil ops (backward comes from autograd). 16-bit inputs
// are normalised in f32 and rounded once at the end; the result dtype is promoted with the
// affine parameters', as in PyTorch. On the CPU, rms_norm of f32/f64 (weight of the same dtype
// or none) takes a fused path instead (ops/cpu/norm.cpp), with a fused backward; the op stays
// composite everywhere else.
#include "norm.h"

#include "binary.h"
#include "copy.h"
#include "op_helpers.h"
#include "reduce.h"
#include "unary.h"

namespace coil {

namespace cpu {
// ops/cpu/norm.cpp. x, y, dy, dx contiguous (.., D); weight, dweight (D) or undefined; rstd the
// rows' 1 / sqrt(mean(x^2) + eps). One dtype, f32 or f64. dx or dweight may be undefined.
void rms_norm_kernel(const Tensor& y, const Tensor& rstd, const Tensor& x, const Tensor& weight,
                     double eps);
void rms_norm_backward_kernel(const Tensor& dx, const Tensor& dweight, const Tensor& dy,
                              const Tensor& x, const Tensor& weight, const Tensor& rstd);
}  // namespace cpu

namespace {

// The fused CPU path of rms_norm, for validated inputs.
Tensor fused_rms_norm(const Tensor& x, const Tensor& weight, double eps) {
  const int64_t D = x.sizes().back();
  const Options opt(x.dtype(), x.device());
  Tensor xc = x.detach().contiguous();
  Tensor wc = weight.defined() ? weight.detach().contiguous() : Tensor();
  Tensor y = empty(x.sizes(), opt), rstd = empty({D ? x.numel() / D : 0}, opt);
  cpu::rms_norm_kernel(y, rstd, xc, wc, eps);
  if (needs_grad({&x, &weight})) {
    const bool gx = x.requires_grad(), gw = weight.defined() && weight.requires_grad();
    SavedTensor sx(xc, "rms_norm"), sw = wc.defined() ? SavedTensor(wc, "rms_norm") : SavedTensor();
    record("rms_norm", {x, weight}, {y}, [sx, sw, rstd, gx, gw, opt, D](const TensorList& g) {
      Tensor xs = sx.unpack(), ws = sw.defined() ? sw.unpack() : Tensor();
      Tensor dy = detail::as_compute(g[0].detach(), opt.dtype).contiguous();
      Tensor dx = gx ? empty(xs.sizes(), opt) : Tensor();
      Tensor dw = gw ? empty({D}, opt) : Tensor();
      cpu::rms_norm_backward_kernel(dx, dw, dy, xs, ws, rstd);
      return TensorList{dx, dw};
    });
  }
  return y;
}

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
  if (detail::AutocastScope ac; ac)
    return rms_norm(detail::autocast_f32(x), detail::autocast_f32(weight), eps);
  const char* name = "rms_norm";
  COIL_CHECK(is_floating(x.dtype()), name, ": input must be floating point, got ", x.dtype());
  COIL_CHECK(x.dim() >= 1, name, ": input must have at least one dim, got a 0-d tensor");
  COIL_CHECK(eps >= 0, name, ": eps must be non-negative, got ", eps);
  check_param(name, "weight", weight, {x.sizes().back()}, x);
  const DType out_t = result_dtype(x, weight, Tensor()), ct = compute_dtype(out_t);
  if (x.device().type == kCPU && (x.dtype() == kF32 || x.dtype() == kF64) &&
      (!weight.defined() || weight.dtype() == x.dtype()) && x.numel() > 0 &&
      !any_distributed({&x, &weight}))
    return fused_rms_norm(x, weight, eps);
  Tensor xc = to_dtype(x, ct);
  Tensor y = xc * rsqrt(mean(square(xc), {-1}, true) + eps);
  if (weight.defined()) y = y * to_dtype(weight, ct);
  return to_dtype(y, out_t);
}

Tensor layer_norm(const Tensor& x, const Shape& normalized_shape, const Tensor& weight,
                  const Tensor& bias, double eps) {
  if (detail::AutocastScope ac; ac)
    return layer_norm(detail::autocast_f32(x), normalized_shape, detail::autocast_f32(weight),
                      detail::autocast_f32(bias), eps);
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
