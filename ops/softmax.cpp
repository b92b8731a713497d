// Softmax and log-softmax: one fused kernel over the input viewed as [outer, n, inner] (no
// transpose copy); 16-bit inputs are computed in f32 and rounded once.
#include "softmax.h"

#include "binary.h"
#include "copy.h"
#include "op_helpers.h"
#include "reduce.h"
#include "unary.h"
#include "view.h"

namespace coil {

namespace {

Tensor softmax_forward(const OpInfo& op, const Tensor& x, int64_t d, bool log) {
  DType ct = compute_dtype(x.dtype());
  Tensor xin;
  {
    NoGradGuard g;
    xin = contiguous(detail::as_compute(detach(x), ct));
  }
  int64_t outer = 1, inner = 1;
  const int64_t n = x.dim() ? x.sizes()[d] : 1;
  for (int64_t i = 0; i < d; ++i) outer *= x.sizes()[i];
  for (int64_t i = d + 1; i < x.dim(); ++i) inner *= x.sizes()[i];
  Tensor out = empty(x.sizes(), Options(ct, x.device()));
  kernel_for<SoftmaxKernel>(op, x.device())(out, xin, outer, n, inner, log);
  return ct == x.dtype() ? out : detail::cast(out, x.dtype());
}

Tensor apply_softmax(const OpInfo& op, const Tensor& x, int64_t dim, bool log) {
  const char* name = op.name.c_str();
  if (any_distributed({&x})) return dist_dispatch(op, {x}, {{"dim", dim}})[0];
  COIL_CHECK(is_floating(x.dtype()), name, ": input dtype must be floating point, got ", x.dtype());
  const int64_t d = normalize_dim(name, dim, x.dim());
  Tensor out = softmax_forward(op, x, d, log);
  if (needs_grad({&x})) {
    SavedTensor sy(out, op.name);
    record(op.name, {x}, {out}, [sy, d, log](const TensorList& g) {
      Tensor y = sy.unpack(), gy = g[0];
      // 16-bit: the row sums below are taken in f32
      const DType t = y.dtype(), ct = compute_dtype(t);
      if (ct != t) {
        y = to_dtype(y, ct);
        gy = to_dtype(gy, ct);
      }
      Tensor dx = log ? gy - exp(y) * sum(gy, {d}, true) : y * (gy - sum(gy * y, {d}, true));
      return TensorList{ct != t ? to_dtype(dx, t) : dx};
    });
  }
  check_anomaly(op.name, {x}, {out});
  return out;
}

}  // namespace

Tensor softmax(const Tensor& x, int64_t dim) {
  if (detail::AutocastScope ac; ac) return softmax(detail::autocast_f32(x), dim);
  COIL_OP("softmax");
  return apply_softmax(op_, x, dim, false);
}

Tensor log_softmax(const Tensor& x, int64_t dim) {
  if (detail::AutocastScope ac; ac) return log_softmax(detail::autocast_f32(x), dim);
  COIL_OP("log_softmax");
  return apply_softmax(op_, x, dim, true);
}

Tensor Tensor::softmax(int64_t dim) const { return coil::softmax(*this, dim); }
Tensor Tensor::log_softmax(int64_t dim) const { return coil::log_softmax(*this, dim); }

namespace {
void register_softmax() {
  for (bool log : {false, true}) {
    OpInfo& o = register_op(log ? "log_softmax" : "softmax", "softmax");
    o.set_kernel(kCPU, &cpu::softmax_kernel);
    o.boxed = [log](const TensorList& in, const Attrs& a) {
      int64_t dim = attr_or<int64_t>(a, "dim", -1);
      return TensorList{log ? log_softmax(in[0], dim) : softmax(in[0], dim)};
    };
    // dim 1 of three: both outer and inner are > 1
    o.gradcheck = [log] {
      return GradcheckCase{{detail::gc_rand({3, 4, 5}, -2, 2)}, [log](const TensorList& x) {
                             return log ? log_softmax(x[0], 1) : softmax(x[0], 1);
                           }};
    };
  }
}
OpRegistrar reg(register_softmax);
}  // namespace

}  // namespace coil
