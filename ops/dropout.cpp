// Dropout: one fused kernel draws the keep mask from the Philox stream and scales the kept
// elements; the bool mask is saved for backward. The draw goes through the default generator, so
// checkpoint's RNG replay reproduces the same mask.
#include "dropout.h"

#include "../core/rng.h"
#include "binary.h"
#include "copy.h"
#include "creation.h"
#include "op_helpers.h"
#include "view.h"

namespace coil {

Tensor dropout(const Tensor& x, double p, bool train) {
  COIL_OP("dropout");
  if (any_distributed({&x})) return dist_dispatch(op_, {x}, {{"p", p}, {"train", train}})[0];
  COIL_CHECK(p >= 0 && p <= 1, "dropout: p must be in [0, 1], got ", p);
  COIL_CHECK(is_floating(x.dtype()), "dropout: input must be floating point, got ", x.dtype());
  if (!train || p == 0) return x;
  const double scale = p == 1 ? 0.0 : 1.0 / (1.0 - p);
  Tensor xin;
  {
    NoGradGuard g;
    xin = contiguous(detach(x));
  }
  Tensor out = empty(x.sizes(), Options(x.dtype(), x.device()));
  Tensor mask = empty(x.sizes(), Options(kBool, x.device()));
  auto k = kernel_for<DropoutKernel>(op_, x.device());
  const int64_t n = x.numel();
  Tensor of = out.view({n}), mf = mask.view({n}), xf = xin.view({n});
  detail::for_each_draw_run("dropout", x.sizes(), 4,
                            [&](int64_t at, int64_t len, PhiloxDraw d, uint64_t first) {
                              k(of.narrow(0, at, len), mf.narrow(0, at, len), xf.narrow(0, at, len),
                                p, scale, d.seed, d.offset, first);
                            });
  if (needs_grad({&x})) {
    SavedTensor sm(mask, "dropout");
    record("dropout", {x}, {out}, [sm, scale](const TensorList& g) {
      Tensor zero = zeros({}, Options(g[0].dtype(), g[0].device()));
      return TensorList{where(sm.unpack(), g[0] * scale, zero)};
    });
  }
  check_anomaly("dropout", {x}, {out});
  return out;
}

namespace {
void register_dropout() {
  OpInfo& o = register_op("dropout", "dropout");
  o.set_kernel(kCPU, &cpu::dropout_kernel);
  o.boxed = [](const TensorList& in, const Attrs& a) {
    return TensorList{
        dropout(in[0], attr_or<double>(a, "p", 0.5), attr_or<bool>(a, "train", true))};
  };
  // gradcheck evaluates fn many times: each call replays one fixed draw, so the mask is the same
  o.gradcheck = [] {
    return GradcheckCase{{detail::gc_rand({4, 5})}, [](const TensorList& x) {
                           RngState saved = get_rng_state();
                           set_rng_state({1234, 0});
                           Tensor y = dropout(x[0], 0.3);
                           set_rng_state(saved);
                           return y;
                         }};
  };
}
OpRegistrar reg(register_dropout);
}  // namespace

}  // namespace coil
