// Reductions. The input is permuted so the reduced dims come last and made contiguous: every
// reduction is then one kernel over rows of a [outer, r] matrix.
#include "reduce.h"

#include <algorithm>

#include "binary.h"
#include "copy.h"
#include "creation.h"
#include "op_helpers.h"
#include "unary.h"
#include "view.h"

namespace coil {

namespace detail {
Shape reduce_dims(const char* op, const Shape& dims, int64_t ndim) {
  Shape out;
  if (dims.empty()) {
    for (int64_t i = 0; i < ndim; ++i) out.push_back(i);
    return out;
  }
  for (int64_t d : dims) out.push_back(normalize_dim(op, d, ndim));
  std::sort(out.begin(), out.end());
  COIL_CHECK(std::adjacent_find(out.begin(), out.end()) == out.end(), op, ": dim repeats in ",
             shape_str(dims));
  if (ndim == 0) out.clear();
  return out;
}
}  // namespace detail

namespace {

struct Plan {
  Tensor rows;  // contiguous [outer, r], detached
  int64_t outer = 1, r = 1;
  Shape out_shape;   // without reduced dims
  Shape keep_shape;  // reduced dims kept as 1
};

Plan make_plan(const char* op, const Tensor& x, const Shape& dims_in, DType ct) {
  Shape dims = detail::reduce_dims(op, dims_in, x.dim());
  Plan p;
  Shape perm;
  std::vector<bool> red(x.dim(), false);
  for (int64_t d : dims) red[d] = true;
  p.keep_shape = x.sizes();
  for (int64_t i = 0; i < x.dim(); ++i) {
    if (red[i]) {
      p.keep_shape[i] = 1;
      p.r *= x.sizes()[i];
    } else {
      perm.push_back(i);
      p.out_shape.push_back(x.sizes()[i]);
      p.outer *= x.sizes()[i];
    }
  }
  for (int64_t d : dims) perm.push_back(d);
  NoGradGuard g;
  Tensor t = detail::as_compute(detach(x), ct);
  p.rows = contiguous(permute(t, perm));
  return p;
}

Tensor run_reduce(const char* name, ReduceOp rop, const Plan& p, DType ct, Device dev,
                  Tensor* idx = nullptr) {
  const OpInfo& op = op_info(name);
  Tensor out = empty(p.out_shape, Options(ct, dev));
  Tensor ix;
  if (idx) ix = empty(p.out_shape, Options(kI64, dev));
  kernel_for<ReduceKernel>(op, dev)(rop, out, ix, p.rows, p.outer, p.r);
  if (idx) *idx = ix;
  return out;
}

// The gradient of a reduction, broadcast back over the reduced dims.
Tensor expand_back(const Tensor& g, const Shape& keep_shape, const Shape& in_shape) {
  return expand(reshape(g, keep_shape), in_shape);
}

Tensor finish(const Tensor& out, const Plan& p, bool keepdim) {
  return keepdim ? reshape(out, p.keep_shape) : out;
}

DType sum_dtype(DType t) { return is_floating(t) ? t : kI64; }

}  // namespace

Tensor sum(const Tensor& x, const Shape& dims, bool keepdim) {
  COIL_OP("sum");
  if (any_distributed({&x}))
    return dist_dispatch(op_, {x}, {{"dims", dims}, {"keepdim", keepdim}})[0];
  DType out_t = sum_dtype(x.dtype()), ct = compute_dtype(out_t);
  Plan p = make_plan("sum", x, dims, ct);
  Tensor out = run_reduce("sum", ReduceOp::sum, p, ct, x.device());
  if (ct != out_t) out = detail::cast(out, out_t);
  if (needs_grad({&x})) {
    Shape keep = p.keep_shape, in = x.sizes();
    record("sum", {x}, {out},
           [keep, in](const TensorList& g) { return TensorList{expand_back(g[0], keep, in)}; });
  }
  check_anomaly("sum", {x}, {out});
  return finish(out, p, keepdim);
}

Tensor mean(const Tensor& x, const Shape& dims, bool keepdim) {
  COIL_CHECK(is_floating(x.dtype()), "mean: input dtype must be floating point, got ", x.dtype());
  Shape d = detail::reduce_dims("mean", dims, x.dim());
  int64_t r = 1;
  for (int64_t i : d) r *= x.sizes()[i];
  COIL_CHECK(r > 0 || x.numel() == 0, "mean: reducing over an empty dim");
  return sum(x, dims, keepdim) / static_cast<double>(r);
}

Tensor var(const Tensor& x, const Shape& dims, int64_t correction, bool keepdim) {
  COIL_CHECK(is_floating(x.dtype()), "var: input dtype must be floating point, got ", x.dtype());
  Shape d = detail::reduce_dims("var", dims, x.dim());
  int64_t r = 1;
  for (int64_t i : d) r *= x.sizes()[i];
  COIL_CHECK(correction >= 0, "var: correction must be non-negative, got ", correction);
  Tensor centered = x - mean(x, dims, true);
  return sum(centered * centered, dims, keepdim) /
         static_cast<double>(std::max<int64_t>(r - correction, 0));
}

Tensor logsumexp(const Tensor& x, const Shape& dims, bool keepdim) {
  if (detail::AutocastScope ac; ac) return logsumexp(detail::autocast_f32(x), dims, keepdim);
  COIL_OP("logsumexp");
  if (any_distributed({&x}))
    return dist_dispatch(op_, {x}, {{"dims", dims}, {"keepdim", keepdim}})[0];
  DType out_t = is_floating(x.dtype()) ? x.dtype() : kF32, ct = compute_dtype(out_t);
  Plan p = make_plan("logsumexp", x, dims, ct);
  COIL_CHECK(p.r > 0, "logsumexp: reducing over an empty dim of ", x.shape_str());
  Tensor out = run_reduce("logsumexp", ReduceOp::logsumexp, p, ct, x.device());
  if (ct != out_t) out = detail::cast(out, out_t);
  if (needs_grad({&x})) {
    SavedTensor sx(x, "logsumexp"), so(out, "logsumexp");
    Shape keep = p.keep_shape;
    record("logsumexp", {x}, {out}, [sx, so, keep](const TensorList& g) {
      Tensor xv = sx.unpack();
      return TensorList{reshape(g[0], keep) * exp(xv - reshape(so.unpack(), keep))};
    });
  }
  check_anomaly("logsumexp", {x}, {out});
  return finish(out, p, keepdim);
}

Tensor amax(const Tensor& x, const Shape& dims, bool keepdim) {
  COIL_OP("amax");
  if (any_distributed({&x}))
    return dist_dispatch(op_, {x}, {{"dims", dims}, {"keepdim", keepdim}})[0];
  DType ct = compute_dtype(x.dtype());
  if (ct == kBool) ct = kI64;
  Plan p = make_plan("amax", x, dims, ct);
  COIL_CHECK(p.r > 0, "amax: reducing over an empty dim of ", x.shape_str());
  Tensor out = run_reduce("amax", ReduceOp::max, p, ct, x.device());
  if (ct != x.dtype()) out = detail::cast(out, x.dtype());
  if (needs_grad({&x})) {
    SavedTensor sx(x, "amax"), so(out, "amax");
    Shape keep = p.keep_shape;
    record("amax", {x}, {out}, [sx, so, keep](const TensorList& g) {
      // ties share the gradient evenly
      Tensor xv = sx.unpack();
      Tensor mask = to_dtype(eq(xv, reshape(so.unpack(), keep)), xv.dtype());
      Shape all;
      for (int64_t i = 0; i < xv.dim(); ++i)
        if (keep[i] == 1 && xv.sizes()[i] != 1) all.push_back(i);
      Tensor n = all.empty() ? ones_like(mask) : sum(mask, all, true);
      return TensorList{reshape(g[0], keep) * mask / n};
    });
  }
  check_anomaly("amax", {x}, {out});
  return finish(out, p, keepdim);
}

Tensor max(const Tensor& x) {
  COIL_CHECK(x.numel() > 0, "max: cannot take the max of an empty tensor");
  return amax(x, {}, false);
}
Tensor min(const Tensor& x) {
  COIL_CHECK(x.numel() > 0, "min: cannot take the min of an empty tensor");
  return -amax(-x, {}, false);
}

namespace {
std::pair<Tensor, Tensor> max_min_dim(const char* name, bool is_max, const Tensor& x, int64_t dim,
                                      bool keepdim) {
  const OpInfo& op = op_info(name);
  if (any_distributed({&x})) {
    TensorList r = dist_dispatch(op, {x}, {{"dim", dim}, {"keepdim", keepdim}});
    return {r[0], r[1]};
  }
  int64_t d = normalize_dim(name, dim, x.dim());
  DType ct = compute_dtype(x.dtype());
  if (ct == kBool) ct = kI64;
  Plan p = make_plan(name, x, {d}, ct);
  COIL_CHECK(p.r > 0, name, ": reducing over an empty dim of ", x.shape_str());
  Tensor idx;
  Tensor out = run_reduce(name, is_max ? ReduceOp::max : ReduceOp::min, p, ct, x.device(), &idx);
  if (ct != x.dtype()) out = detail::cast(out, x.dtype());
  if (needs_grad({&x})) {
    SavedTensor si(idx, name);
    Shape keep = p.keep_shape, in = x.sizes();
    int64_t n = x.dim() ? x.sizes()[d] : 1;
    record(name, {x}, {out, idx}, [si, keep, in, d, n](const TensorList& g) {
      // scatter g into the winning positions: compare an arange along dim with the indices
      Shape ar_shape(in.size(), 1);
      if (!in.empty()) ar_shape[d] = n;
      Tensor pos = reshape(arange(n, Options(kI64, g[0].device())), ar_shape);
      Tensor hit = eq(pos, reshape(si.unpack(), keep));
      return TensorList{
          where(hit, reshape(g[0], keep), zeros({}, Options(g[0].dtype(), g[0].device())))};
    });
  }
  check_anomaly(name, {x}, {out});
  if (keepdim) return {reshape(out, p.keep_shape), reshape(idx, p.keep_shape)};
  return {out, idx};
}

Tensor arg_reduce(const char* name, ReduceOp rop, const Tensor& x, std::optional<int64_t> dim,
                  bool keepdim) {
  const OpInfo& op = op_info(name);
  if (any_distributed({&x})) {
    Attrs at{{"keepdim", keepdim}};
    if (dim) at.push_back({"dim", *dim});  // no "dim": over all elements
    return dist_dispatch(op, {x}, at)[0];
  }
  // empty is fine along the other dims (an empty shard of a DTensor), not along the reduced one
  int64_t d = dim ? normalize_dim(name, *dim, x.dim()) : 0;
  COIL_CHECK(dim ? x.dim() == 0 || x.sizes()[d] > 0 : x.numel() > 0, name,
             ": cannot reduce an empty ", dim ? "dim" : "tensor", " (shape ", x.shape_str(), ")");
  DType ct = compute_dtype(x.dtype());
  if (ct == kBool) ct = kI64;
  Tensor src = dim ? x : reshape(detach(x), {-1});
  Plan p = make_plan(name, src, {d}, ct);
  Tensor idx;
  Tensor dummy = empty({0}, Options(ct, x.device()));
  idx = empty(p.out_shape, Options(kI64, x.device()));
  kernel_for<ReduceKernel>(op, x.device())(rop, dummy, idx, p.rows, p.outer, p.r);
  if (keepdim) {
    if (!dim) return reshape(idx, Shape(x.dim(), 1));
    return reshape(idx, p.keep_shape);
  }
  return idx;
}
}  // namespace

std::pair<Tensor, Tensor> max(const Tensor& x, int64_t dim, bool keepdim) {
  return max_min_dim("max", true, x, dim, keepdim);
}
std::pair<Tensor, Tensor> min(const Tensor& x, int64_t dim, bool keepdim) {
  return max_min_dim("min", false, x, dim, keepdim);
}
Tensor argmax(const Tensor& x, std::optional<int64_t> dim, bool keepdim) {
  return arg_reduce("argmax", ReduceOp::argmax, x, dim, keepdim);
}
Tensor argmin(const Tensor& x, std::optional<int64_t> dim, bool keepdim) {
  return arg_reduce("argmin", ReduceOp::argmin, x, dim, keepdim);
}

Tensor sum_to(const Tensor& g, const Shape& shape) {
  if (g.sizes() == shape) return g;
  const int64_t lead = g.dim() - static_cast<int64_t>(shape.size());
  COIL_CHECK(lead >= 0, "sum_to: cannot sum ", g.shape_str(), " down to ", shape_str(shape));
  Shape dims;
  for (int64_t i = 0; i < g.dim(); ++i) {
    if (i < lead) {
      dims.push_back(i);
    } else if (shape[i - lead] == 1 && g.sizes()[i] != 1) {
      dims.push_back(i);
    } else {
      COIL_CHECK(shape[i - lead] == g.sizes()[i], "sum_to: cannot sum ", g.shape_str(), " down to ",
                 shape_str(shape));
    }
  }
  if (dims.empty()) return reshape(g, shape);
  return reshape(sum(g, dims, true), shape);
}

bool has_nonfinite(const Tensor& x) {
  if (!is_floating(x.dtype()) || x.numel() == 0) return false;
  NoGradGuard g;
  DType ct = compute_dtype(x.dtype());
  Plan p = make_plan("sum", x, {}, ct);
  Tensor out = run_reduce("sum", ReduceOp::any_nonfinite, p, ct, x.device());
  return out.item<double>() != 0;
}

Tensor Tensor::sum() const { return coil::sum(*this); }
Tensor Tensor::sum(const Shape& d, bool k) const { return coil::sum(*this, d, k); }
Tensor Tensor::mean() const { return coil::mean(*this); }
Tensor Tensor::mean(const Shape& d, bool k) const { return coil::mean(*this, d, k); }
Tensor Tensor::max() const { return coil::max(*this); }
Tensor Tensor::min() const { return coil::min(*this); }
Tensor Tensor::argmax(std::optional<int64_t> d, bool k) const { return coil::argmax(*this, d, k); }

namespace {
// The anomaly hook: the first op whose output holds NaN/Inf is named with its input shapes.
void anomaly_check(const std::string& where, const TensorList& inputs, const TensorList& outputs) {
  for (size_t i = 0; i < outputs.size(); ++i) {
    if (!outputs[i].defined() || !has_nonfinite(outputs[i])) continue;
    std::string shapes;
    for (const Tensor& t : inputs)
      shapes += (shapes.empty() ? "" : ", ") + (t.defined() ? t.shape_str() : "-");
    fail("anomaly: ", where, " produced NaN or Inf in output ", i, " (shape ",
         outputs[i].shape_str(), "); input shapes: ", shapes);
  }
}

void register_reduce() {
  using GC = GradcheckCase;
  auto reg = [](const char* name, bool diff, BoxedFn boxed, std::function<GC()> gc) {
    OpInfo& o = register_op(name, "reduce");
    o.set_kernel(kCPU, &cpu::reduce_kernel);
    o.differentiable = diff;
    o.boxed = std::move(boxed);
    o.gradcheck = std::move(gc);
  };
  reg(
      "sum", true,
      [](const TensorList& i, const Attrs& a) {
        return TensorList{sum(i[0], attr_or<Shape>(a, "dims", {}), attr_or(a, "keepdim", false))};
      },
      [] {
        return GC{{detail::gc_rand({3, 4, 5})}, [](const TensorList& x) {
                    return sum(x[0].transpose(0, 2), {0, 2}, true);
                  }};
      });
  reg(
      "logsumexp", true,
      [](const TensorList& i, const Attrs& a) {
        return TensorList{logsumexp(i[0], attr<Shape>(a, "dims"), attr_or(a, "keepdim", false))};
      },
      [] {
        return GC{{detail::gc_rand({3, 4, 5}, -3, 3)}, [](const TensorList& x) {
                    return logsumexp(x[0], {0, 2});
                  }};
      });
  reg(
      "amax", true,
      [](const TensorList& i, const Attrs& a) {
        return TensorList{amax(i[0], attr<Shape>(a, "dims"), attr_or(a, "keepdim", false))};
      },
      [] {
        return GC{{detail::gc_rand({3, 4, 5})},
                  [](const TensorList& x) { return amax(x[0], {1}); }};
      });
  reg(
      "max", true,
      [](const TensorList& i, const Attrs& a) {
        auto r = max(i[0], attr<int64_t>(a, "dim"), attr_or(a, "keepdim", false));
        return TensorList{r.first, r.second};
      },
      [] {
        return GC{{detail::gc_rand({3, 4, 5})},
                  [](const TensorList& x) { return max(x[0], -1, true).first; }};
      });
  reg(
      "min", true,
      [](const TensorList& i, const Attrs& a) {
        auto r = min(i[0], attr<int64_t>(a, "dim"), attr_or(a, "keepdim", false));
        return TensorList{r.first, r.second};
      },
      [] {
        return GC{{detail::gc_rand({3, 4, 5})},
                  [](const TensorList& x) { return min(x[0], 0).first; }};
      });
  reg(
      "argmax", false,
      [](const TensorList& i, const Attrs& a) {
        std::optional<int64_t> d;  // absent: over all elements
        for (const Attr& x : a)
          if (x.name == "dim") d = std::get<int64_t>(x.value);
        return TensorList{argmax(i[0], d, attr_or(a, "keepdim", false))};
      },
      nullptr);
  reg(
      "argmin", false,
      [](const TensorList& i, const Attrs& a) {
        std::optional<int64_t> d;  // absent: over all elements
        for (const Attr& x : a)
          if (x.name == "dim") d = std::get<int64_t>(x.value);
        return TensorList{argmin(i[0], d, attr_or(a, "keepdim", false))};
      },
      nullptr);
  auto comp = [](const char* name, BoxedFn boxed, std::function<GC()> gc) {
    OpInfo& o = register_op(name, "reduce");
    o.composite = true;
    o.boxed = std::move(boxed);
    o.gradcheck = std::move(gc);
  };
  comp(
      "mean",
      [](const TensorList& i, const Attrs& a) {
        return TensorList{mean(i[0], attr_or<Shape>(a, "dims", {}), attr_or(a, "keepdim", false))};
      },
      [] {
        return GC{{detail::gc_rand({3, 4, 5})},
                  [](const TensorList& x) { return mean(x[0], {-1}); }};
      });
  comp(
      "var",
      [](const TensorList& i, const Attrs& a) {
        return TensorList{var(i[0], attr_or<Shape>(a, "dims", {}),
                              attr_or<int64_t>(a, "correction", 1), attr_or(a, "keepdim", false))};
      },
      [] {
        return GC{{detail::gc_rand({3, 4, 5})}, [](const TensorList& x) {
                    return var(x[0], {0, 2});
                  }};
      });
  set_anomaly_check(&anomaly_check);
}
OpRegistrar reg(register_reduce);
}  // namespace

}  // namespace coil
