#include "cumulative.h"

#include "copy.h"
#include "op_helpers.h"

namespace coil {

namespace {
struct Layout {
  int64_t outer = 1, n = 1, inner = 1;
};
Layout layout(const Tensor& x, int64_t d) {
  Layout l;
  for (int64_t i = 0; i < x.dim(); ++i) {
    if (i < d)
      l.outer *= x.sizes()[i];
    else if (i == d)
      l.n = x.sizes()[i];
    else
      l.inner *= x.sizes()[i];
  }
  return l;
}

Tensor run_scan(const char* name, ScanOp sop, const Tensor& x, const Tensor& aux, int64_t d,
                bool reverse, DType ct) {
  Layout l = layout(x, d);
  Tensor xin, ain;
  {
    NoGradGuard g;
    xin = contiguous(detail::as_compute(x.detach(), ct));
    if (aux.defined()) ain = contiguous(detail::as_compute(aux.detach(), ct));
  }
  Tensor out = empty(x.sizes(), Options(ct, x.device()));
  kernel_for<ScanKernel>(op_info(name), x.device())(sop, out, xin, ain, l.outer, l.n, l.inner,
                                                    reverse);
  return out;
}
}  // namespace

Tensor cumsum(const Tensor& x, int64_t dim, bool reverse) {
  COIL_OP("cumsum");
  if (any_distributed({&x}))
    return dist_dispatch(op_, {x}, {{"dim", dim}, {"reverse", reverse}})[0];
  int64_t d = normalize_dim("cumsum", dim, x.dim());
  DType out_t = is_floating(x.dtype()) ? x.dtype() : kI64, ct = compute_dtype(out_t);
  Tensor out = run_scan("cumsum", ScanOp::cumsum, x, Tensor(), d, reverse, ct);
  if (ct != out_t) out = detail::cast(out, out_t);
  if (needs_grad({&x})) {
    record("cumsum", {x}, {out},
           [d, reverse](const TensorList& g) { return TensorList{cumsum(g[0], d, !reverse)}; });
  }
  check_anomaly("cumsum", {x}, {out});
  return out;
}

Tensor cumprod(const Tensor& x, int64_t dim) {
  COIL_OP("cumprod");
  if (any_distributed({&x})) return dist_dispatch(op_, {x}, {{"dim", dim}})[0];
  int64_t d = normalize_dim("cumprod", dim, x.dim());
  DType out_t = is_floating(x.dtype()) ? x.dtype() : kI64, ct = compute_dtype(out_t);
  Tensor out = run_scan("cumprod", ScanOp::cumprod, x, Tensor(), d, false, ct);
  if (ct != out_t) out = detail::cast(out, out_t);
  if (needs_grad({&x})) {
    SavedTensor sx(x, "cumprod");
    record("cumprod", {x}, {out}, [sx, d](const TensorList& g) {
      Tensor xv = sx.unpack();
      DType ct2 = compute_dtype(xv.dtype());
      Tensor r = run_scan("cumprod", ScanOp::cumprod_grad, xv, g[0], d, false, ct2);
      return TensorList{r};
    });
  }
  check_anomaly("cumprod", {x}, {out});
  return out;
}

namespace {
void register_cumulative() {
  {
    OpInfo& o = register_op("cumsum", "cumulative");
    o.set_kernel(kCPU, &cpu::scan_kernel);
    o.boxed = [](const TensorList& i, const Attrs& a) {
      return TensorList{cumsum(i[0], attr<int64_t>(a, "dim"), attr_or(a, "reverse", false))};
    };
    o.gradcheck = [] {
      return GradcheckCase{{detail::gc_rand({3, 5, 2})},
                           [](const TensorList& x) { return cumsum(x[0], 1); }};
    };
  }
  {
    OpInfo& o = register_op("cumprod", "cumulative");
    o.set_kernel(kCPU, &cpu::scan_kernel);
    o.boxed = [](const TensorList& i, const Attrs& a) {
      return TensorList{cumprod(i[0], attr<int64_t>(a, "dim"))};
    };
    o.gradcheck = [] {
      return GradcheckCase{{detail::gc_rand({3, 5, 2}, 0.5, 1.5)},
                           [](const TensorList& x) { return cumprod(x[0], 1); }};
    };
  }
}
OpRegistrar reg(register_cumulative);
}  // namespace

}  // namespace coil
