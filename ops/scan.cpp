// associative_scan (composite, log depth) and the causal depthwise conv of Mamba (fused kernel).
// selective_scan and ssd_scan live in their own files.
#include "scan.h"

#include "binary.h"
#include "copy.h"
#include "creation.h"
#include "index.h"
#include "op_helpers.h"
#include "shape.h"
#include "view.h"

namespace coil {

namespace {

TensorList slice_all(const TensorList& xs, int64_t d, int64_t start, int64_t end, int64_t step) {
  TensorList out;
  for (const Tensor& x : xs) out.push_back(slice(x, d, start, end, step));
  return out;
}

// e[0], o[0], e[1], o[1], ... along d; e has as many elements as o, or one more.
Tensor interleave(const Tensor& e, const Tensor& o, int64_t d) {
  const int64_t no = o.size(d);
  Tensor pairs = flatten(stack({slice(e, d, 0, no), o}, d + 1), d, d + 1);
  return e.size(d) == no ? pairs : cat({pairs, slice(e, d, no, std::nullopt)}, d);
}

TensorList checked_combine(const ScanCombine& combine, const TensorList& a, const TensorList& b) {
  TensorList r = combine(a, b);
  COIL_CHECK(r.size() == a.size(), "associative_scan: combine returned ", r.size(), " tensors for ",
             a.size(), " inputs");
  for (size_t i = 0; i < r.size(); ++i)
    COIL_CHECK(r[i].sizes() == a[i].sizes(), "associative_scan: combine returned shape ",
               r[i].shape_str(), " for inputs of shape ", a[i].shape_str(), " (element ", i, ")");
  return r;
}

// The odd/even recursion: combine neighbouring pairs, scan the half-length sequence of pairs
// (which gives the odd positions), then one more combine fills the even positions.
TensorList scan_rec(const ScanCombine& combine, const TensorList& xs, int64_t d) {
  const int64_t n = xs[0].size(d);
  if (n < 2) return xs;
  const int64_t half = n / 2, n_even = (n + 1) / 2;
  TensorList odd = scan_rec(
      combine,
      checked_combine(combine, slice_all(xs, d, 0, 2 * half, 2), slice_all(xs, d, 1, 2 * half, 2)),
      d);
  TensorList even = slice_all(xs, d, 0, 1, 1);
  if (n_even > 1) {
    TensorList rest =
        checked_combine(combine, slice_all(odd, d, 0, n_even - 1, 1), slice_all(xs, d, 2, n, 2));
    for (size_t i = 0; i < even.size(); ++i) even[i] = cat({even[i], rest[i]}, d);
  }
  TensorList out;
  for (size_t i = 0; i < xs.size(); ++i) out.push_back(interleave(even[i], odd[i], d));
  return out;
}

Tensor flip(const Tensor& x, int64_t d) {
  const int64_t n = x.size(d);
  return index_select(x, d, arange(n - 1, -1, -1, Options(kI64, x.device())));
}

}  // namespace

TensorList associative_scan(const ScanCombine& combine, const TensorList& xs, int64_t dim,
                            bool reverse) {
  COIL_CHECK(!xs.empty(), "associative_scan: xs is empty");
  COIL_CHECK(combine, "associative_scan: combine is empty");
  for (const Tensor& x : xs) {
    COIL_CHECK(x.defined(), "associative_scan: xs holds an undefined tensor");
    COIL_CHECK(x.sizes() == xs[0].sizes(), "associative_scan: xs must share one shape, got ",
               xs[0].shape_str(), " and ", x.shape_str());
  }
  COIL_CHECK(xs[0].dim() > 0, "associative_scan: cannot scan 0-d tensors");
  const int64_t d = normalize_dim("associative_scan", dim, xs[0].dim());
  if (!reverse) return scan_rec(combine, xs, d);
  // As jax.lax.associative_scan: scan the reversed sequence, then reverse the result.
  TensorList flipped;
  for (const Tensor& x : xs) flipped.push_back(flip(x, d));
  TensorList r = scan_rec(combine, flipped, d);
  for (Tensor& t : r) t = flip(t, d);
  return r;
}

std::pair<Tensor, Tensor> causal_conv1d(const Tensor& x, const Tensor& weight,
                                        const CausalConv1dOptions& o) {
  if (detail::AutocastScope ac; ac) {
    CausalConv1dOptions lo = o;
    lo.bias = detail::autocast_to(o.bias, ac.dtype());
    lo.initial_window = detail::autocast_to(o.initial_window, ac.dtype());
    return causal_conv1d(detail::autocast_to(x, ac.dtype()),
                         detail::autocast_to(weight, ac.dtype()), lo);
  }
  COIL_OP("causal_conv1d");
  const Tensor &bias = o.bias, &window = o.initial_window;
  if (any_distributed({&x, &weight, &bias, &window})) {
    TensorList r = dist_dispatch(
        op_, {x, weight, bias, window},
        {{"activation_silu", o.activation_silu}, {"return_final_window", o.return_final_window}});
    return {r[0], r.size() > 1 ? r[1] : Tensor()};
  }
  COIL_CHECK(x.dim() == 3, "causal_conv1d: x must be (batch, L, channels), got ", x.shape_str());
  const int64_t B = x.sizes()[0], L = x.sizes()[1], C = x.sizes()[2];
  COIL_CHECK(weight.dim() == 2 && weight.sizes()[0] == C && weight.sizes()[1] >= 1,
             "causal_conv1d: weight must be ", "(channels, K) = (", C, ", K >= 1), got ",
             weight.shape_str());
  const int64_t K = weight.sizes()[1];
  if (bias.defined())
    COIL_CHECK(bias.dim() == 1 && bias.sizes()[0] == C, "causal_conv1d: bias must be (", C,
               "), got ", bias.shape_str());
  if (window.defined())
    COIL_CHECK(window.sizes() == Shape({B, K - 1, C}),
               "causal_conv1d: initial_window must be (batch, K-1, channels) = ",
               shape_str({B, K - 1, C}), ", got ", window.shape_str());
  COIL_CHECK(is_floating(x.dtype()) && is_floating(weight.dtype()),
             "causal_conv1d: x and weight must be floating ", "point, got ", x.dtype(), " and ",
             weight.dtype());
  check_same_device("causal_conv1d", {x, weight, bias, window});

  const DType ct = compute_dtype(x.dtype());
  auto prep = [&](const Tensor& t) {
    if (!t.defined()) return t;
    NoGradGuard g;
    return contiguous(detail::as_compute(detach(t), ct));
  };
  Tensor xc = prep(x), wc = prep(weight), bc = prep(bias), winc = prep(window);
  Tensor y = empty({B, L, C}, Options(ct, x.device()));
  kernel_for<CausalConvKernel>(op_, x.device())(y, xc, wc, bc, winc, o.activation_silu);
  if (ct != x.dtype()) y = detail::cast(y, x.dtype());
  if (needs_grad({&x, &weight, &bias, &window})) {
    const bool silu = o.activation_silu;
    const bool gw = weight.requires_grad(), gb = bias.defined() && bias.requires_grad(),
               gwin = window.defined() && window.requires_grad();
    SavedTensor sx(xc, "causal_conv1d"), sw(wc, "causal_conv1d"), sb(bc, "causal_conv1d"),
        swin(winc, "causal_conv1d");
    record("causal_conv1d", {x, weight, bias, window}, {y},
           [sx, sw, sb, swin, silu, gw, gb, gwin](const TensorList& g) {
             Tensor xv = sx.unpack(), wv = sw.unpack(), bv = sb.unpack(), winv = swin.unpack();
             Tensor dy = contiguous(detail::as_compute(g[0], xv.dtype()));
             Tensor dx = empty_like(xv);
             Tensor dw = gw ? empty_like(wv) : Tensor();
             Tensor db = gb ? empty_like(bv) : Tensor();
             // an empty sequence reaches no output: the kernels leave the window's gradient
             // unwritten then (its share through the final window is autograd's)
             Tensor dwin = !gwin ? Tensor() : xv.size(1) == 0 ? zeros_like(winv) : empty_like(winv);
             kernel_for<CausalConvBackwardKernel>(op_info("causal_conv1d_backward"), xv.device())(
                 dx, dw, db, dwin, dy, xv, wv, bv, winv, silu);
             return TensorList{dx, dw, db, dwin};
           });
  }
  check_anomaly("causal_conv1d", {x, weight, bias, window}, {y});
  Tensor final_window;
  if (o.return_final_window) {
    // The last K-1 inputs of [window; x], through differentiable ops so its gradient flows.
    Tensor before =
        window.defined() ? window : zeros({B, K - 1, C}, Options(x.dtype(), x.device()));
    final_window = narrow(cat({before, x}, 1), 1, L, K - 1);
  }
  return {y, final_window};
}

namespace {
void register_scan() {
  {
    OpInfo& o = register_op("causal_conv1d", "scan");
    o.set_kernel(kCPU, &cpu::causal_conv_kernel);
    o.boxed = [](const TensorList& in, const Attrs& a) {
      CausalConv1dOptions opt;
      opt.bias = in.size() > 2 ? in[2] : Tensor();
      opt.initial_window = in.size() > 3 ? in[3] : Tensor();
      opt.activation_silu = attr_or(a, "activation_silu", true);
      opt.return_final_window = attr_or(a, "return_final_window", false);
      auto [y, w] = causal_conv1d(in[0], in[1], opt);
      return TensorList{y, w};
    };
    o.gradcheck = [] {
      GradcheckCase c;
      c.inputs = {detail::gc_rand({2, 5, 3}), detail::gc_rand({3, 4}), detail::gc_rand({3}),
                  detail::gc_rand({2, 3, 3})};
      c.fn = [](const TensorList& v) {
        CausalConv1dOptions opt;
        opt.bias = v[2];
        opt.initial_window = v[3];
        opt.return_final_window = true;
        auto [y, w] = causal_conv1d(v[0], v[1], opt);
        return cat({y, w * 2.0}, 1);
      };
      return c;
    };
  }
  {
    // The backward kernel has a row of its own so backends register it like any kernel.
    OpInfo& o = register_op("causal_conv1d_backward", "scan");
    o.differentiable = false;
    o.set_kernel(kCPU, &cpu::causal_conv_backward_kernel);
    o.boxed = [](const TensorList&, const Attrs&) -> TensorList {
      fail("causal_conv1d_backward: called by causal_conv1d's backward only");
    };
  }
}
OpRegistrar reg(register_scan);
}  // namespace

}  // namespace coil
