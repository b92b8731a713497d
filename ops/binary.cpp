// Binary elementwise ops with broadcasting and PyTorch's type promotion; where; in-place forms.
#include "binary.h"

#include "copy.h"
#include "creation.h"
#include "op_helpers.h"
#include "reduce.h"
#include "unary.h"

namespace coil {

namespace {

bool is_compare(BinaryOp id) { return id >= BinaryOp::eq; }

// Dtype of the result: promoted, true division for integers, bool for comparisons.
DType result_dtype(BinaryOp id, const Tensor& a, const Tensor& b) {
  if (is_compare(id)) return kBool;
  DType rt = result_type(a, b);
  if ((id == BinaryOp::div) && !is_floating(rt)) rt = kF32;
  return rt;
}

Tensor binary_forward(const OpInfo& op, BinaryOp id, const Tensor& a, const Tensor& b,
                      double alpha) {
  check_same_device(op.name.c_str(), {a, b});
  Shape s = broadcast_shapes(op.name.c_str(), a.sizes(), b.sizes());
  DType out_t = result_dtype(id, a, b);
  DType ct = compute_dtype(is_compare(id) ? result_type(a, b) : out_t);
  if (id == BinaryOp::div && !is_floating(ct)) ct = kF32;
  Tensor ac = detail::as_compute(a, ct), bc = detail::as_compute(b, ct);
  Tensor out = empty(s, Options(is_compare(id) ? kBool : ct, a.device()));
  kernel_for<BinaryKernel>(op, a.device())(id, out, ac, bc, alpha);
  return (is_compare(id) || ct == out_t) ? out : detail::cast(out, out_t);
}

Tensor grad_add(const Tensor& g, const Shape& shape, double scale) {
  return sum_to(scale == 1 ? g : g * scale, shape);
}

// The op-table row of each BinaryOp, filled at registration: no lookup by name per call.
const OpInfo* g_rows[static_cast<int>(BinaryOp::ge) + 1];

Tensor apply_binary(const char* name, BinaryOp id, const Tensor& a, const Tensor& b,
                    double alpha = 1) {
  const OpInfo& op = *g_rows[static_cast<int>(id)];
  if (any_distributed({&a, &b})) return dist_dispatch(op, {a, b}, {{"alpha", alpha}})[0];
  Tensor out = binary_forward(op, id, a, b, alpha);
  if (!is_compare(id) && is_floating(out.dtype()) && needs_grad({&a, &b})) {
    Shape sa = a.sizes(), sb = b.sizes();
    bool ga = a.requires_grad(), gb = b.requires_grad();
    BackwardFn fn;
    switch (id) {
      case BinaryOp::add:
      case BinaryOp::sub: {
        double sgn = id == BinaryOp::sub ? -alpha : alpha;
        fn = [sa, sb, ga, gb, sgn](const TensorList& g) {
          return TensorList{ga ? grad_add(g[0], sa, 1) : Tensor(),
                            gb ? grad_add(g[0], sb, sgn) : Tensor()};
        };
        break;
      }
      case BinaryOp::mul: {
        SavedTensor xa = gb ? SavedTensor(a, name) : SavedTensor();
        SavedTensor xb = ga ? SavedTensor(b, name) : SavedTensor();
        fn = [sa, sb, ga, gb, xa, xb](const TensorList& g) {
          return TensorList{ga ? sum_to(g[0] * xb.unpack(), sa) : Tensor(),
                            gb ? sum_to(g[0] * xa.unpack(), sb) : Tensor()};
        };
        break;
      }
      case BinaryOp::div: {
        SavedTensor xa = gb ? SavedTensor(a, name) : SavedTensor();
        SavedTensor xb(b, name);
        fn = [sa, sb, ga, gb, xa, xb](const TensorList& g) {
          Tensor bb = xb.unpack();
          return TensorList{ga ? sum_to(g[0] / bb, sa) : Tensor(),
                            gb ? sum_to(-g[0] * xa.unpack() / (bb * bb), sb) : Tensor()};
        };
        break;
      }
      case BinaryOp::pow: {
        SavedTensor xa(a, name), xb(b, name), y(out, name);
        fn = [sa, sb, ga, gb, xa, xb, y](const TensorList& g) {
          Tensor av = xa.unpack(), bv = xb.unpack();
          Tensor da, db;
          if (ga) da = sum_to(g[0] * bv * pow(av, bv - 1.0), sa);
          if (gb) {
            // d/db a^b = a^b log a; defined as 0 where a == 0 (as PyTorch does)
            Tensor la = where(av == 0.0, zeros_like(av), log(av));
            db = sum_to(g[0] * y.unpack() * la, sb);
          }
          return TensorList{da, db};
        };
        break;
      }
      case BinaryOp::maximum:
      case BinaryOp::minimum: {
        SavedTensor xa(a, name), xb(b, name);
        bool is_max = id == BinaryOp::maximum;
        fn = [sa, sb, ga, gb, xa, xb, is_max](const TensorList& g) {
          Tensor av = xa.unpack(), bv = xb.unpack();
          Tensor a_wins = is_max ? gt(av, bv) : lt(av, bv);
          Tensor tie = eq(av, bv);
          Tensor z = zeros_like(g[0]);
          Tensor half = g[0] * 0.5;  // ties split the gradient, as PyTorch does
          Tensor da = where(a_wins, g[0], where(tie, half, z));
          Tensor db = where(logical_or(a_wins, tie), where(tie, half, z), g[0]);
          return TensorList{ga ? sum_to(da, sa) : Tensor(), gb ? sum_to(db, sb) : Tensor()};
        };
        break;
      }
      default:
        break;
    }
    record(name, {a, b}, {out}, std::move(fn));
  }
  check_anomaly(name, {a, b}, {out});
  return out;
}

// In-place: compute out of place (recording the graph when needed), then write into a.
Tensor& apply_inplace(const char* name, BinaryOp id, Tensor& a, const Tensor& b, double alpha) {
  if (any_distributed({&a, &b})) {  // the out-of-place result, copied into a's placements
    Tensor r = apply_binary(name, id, a, b, alpha);
    NoGradGuard g;
    a.copy_(r);
    return a;
  }
  Shape s = broadcast_shapes(name, a.sizes(), b.sizes());
  COIL_CHECK(s == a.sizes(), name, ": result of shape ", shape_str(s),
             " does not fit the in-place ", "target of shape ", a.shape_str());
  DType rt = result_dtype(id, a, b);
  COIL_CHECK(is_floating(a.dtype()) || !is_floating(rt), name, ": result type ", rt,
             " cannot be cast to the in-place target's ", a.dtype());
  if (needs_grad({&a, &b})) {
    COIL_CHECK(!(a.is_leaf() && a.requires_grad()), name,
               ": a leaf tensor that requires grad (shape ", a.shape_str(),
               ") is used in an in-place operation; wrap it in NoGradGuard");
    COIL_CHECK(!a.impl().is_view, name,
               ": in-place on a view of a tensor that requires grad is not ",
               "supported; use the out-of-place op");
    Tensor r =
        apply_binary(name, id, clone(a), b, alpha);  // the clone keeps a's old value for backward
    {
      NoGradGuard g;
      kernel_for<CopyKernel>(op_info("copy_"), a.device())(a, r);
    }
    a.bump_version();
    a.impl().grad_fn = r.impl().grad_fn;
    a.impl().output_nr = r.impl().output_nr;
    return a;
  }
  const OpInfo& op = *g_rows[static_cast<int>(id)];
  DType ct = compute_dtype(rt);
  if (a.dtype() == ct && a.is_contiguous()) {
    kernel_for<BinaryKernel>(op, a.device())(id, a, a, detail::as_compute(b, ct), alpha);
  } else {
    Tensor r = binary_forward(op, id, a, b, alpha);
    kernel_for<CopyKernel>(op_info("copy_"), a.device())(a, r);
  }
  a.bump_version();
  return a;
}

Tensor logical(const char* name, BinaryOp id, const Tensor& a, const Tensor& b) {
  const OpInfo& op = op_info(name);
  if (any_distributed({&a, &b})) return dist_dispatch(op, {a, b}, {})[0];
  check_same_device(name, {a, b});
  Shape s = broadcast_shapes(name, a.sizes(), b.sizes());
  Tensor out = empty(s, Options(kBool, a.device()));
  kernel_for<BinaryKernel>(op, a.device())(id, out, detail::as_compute(a, kBool),
                                           detail::as_compute(b, kBool), 1);
  return out;
}

}  // namespace

Tensor add(const Tensor& a, const Tensor& b, Scalar alpha) {
  return apply_binary("add", BinaryOp::add, a, b, alpha.to_double());
}
Tensor sub(const Tensor& a, const Tensor& b, Scalar alpha) {
  return apply_binary("sub", BinaryOp::sub, a, b, alpha.to_double());
}
Tensor mul(const Tensor& a, const Tensor& b) { return apply_binary("mul", BinaryOp::mul, a, b); }
Tensor div(const Tensor& a, const Tensor& b) { return apply_binary("div", BinaryOp::div, a, b); }
Tensor pow(const Tensor& a, const Tensor& b) { return apply_binary("pow", BinaryOp::pow, a, b); }
Tensor maximum(const Tensor& a, const Tensor& b) {
  return apply_binary("maximum", BinaryOp::maximum, a, b);
}
Tensor minimum(const Tensor& a, const Tensor& b) {
  return apply_binary("minimum", BinaryOp::minimum, a, b);
}
Tensor eq(const Tensor& a, const Tensor& b) { return apply_binary("eq", BinaryOp::eq, a, b); }
Tensor ne(const Tensor& a, const Tensor& b) { return apply_binary("ne", BinaryOp::ne, a, b); }
Tensor lt(const Tensor& a, const Tensor& b) { return apply_binary("lt", BinaryOp::lt, a, b); }
Tensor le(const Tensor& a, const Tensor& b) { return apply_binary("le", BinaryOp::le, a, b); }
Tensor gt(const Tensor& a, const Tensor& b) { return apply_binary("gt", BinaryOp::gt, a, b); }
Tensor ge(const Tensor& a, const Tensor& b) { return apply_binary("ge", BinaryOp::ge, a, b); }
Tensor logical_and(const Tensor& a, const Tensor& b) {
  return logical("logical_and", BinaryOp::mul, a, b);
}
Tensor logical_or(const Tensor& a, const Tensor& b) {
  return logical("logical_or", BinaryOp::add, a, b);
}

Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b) {
  COIL_OP("where");
  if (any_distributed({&cond, &a, &b})) return dist_dispatch(op_, {cond, a, b}, {})[0];
  COIL_CHECK(cond.dtype() == kBool, "where: condition must be bool, got ", cond.dtype());
  check_same_device("where", {cond, a, b});
  Shape s =
      broadcast_shapes("where", broadcast_shapes("where", cond.sizes(), a.sizes()), b.sizes());
  DType rt = result_type(a, b);
  Tensor out = empty(s, Options(rt, a.device()));
  kernel_for<WhereKernel>(op_, a.device())(out, cond, detail::as_compute(a, rt),
                                           detail::as_compute(b, rt));
  if (is_floating(rt) && needs_grad({&a, &b})) {
    SavedTensor c(cond, "where");
    Shape sa = a.sizes(), sb = b.sizes();
    bool ga = a.requires_grad(), gb = b.requires_grad();
    record("where", {cond, a, b}, {out}, [c, sa, sb, ga, gb](const TensorList& g) {
      Tensor cv = c.unpack(), z = zeros_like(g[0]);
      return TensorList{Tensor(), ga ? sum_to(where(cv, g[0], z), sa) : Tensor(),
                        gb ? sum_to(where(cv, z, g[0]), sb) : Tensor()};
    });
  }
  check_anomaly("where", {cond, a, b}, {out});
  return out;
}

Tensor& add_(Tensor& a, const Tensor& b, Scalar alpha) {
  return apply_inplace("add", BinaryOp::add, a, b, alpha.to_double());
}
Tensor& sub_(Tensor& a, const Tensor& b, Scalar alpha) {
  return apply_inplace("sub", BinaryOp::sub, a, b, alpha.to_double());
}
Tensor& mul_(Tensor& a, const Tensor& b) { return apply_inplace("mul", BinaryOp::mul, a, b, 1); }
Tensor& div_(Tensor& a, const Tensor& b) { return apply_inplace("div", BinaryOp::div, a, b, 1); }

using detail::wrap;
Tensor operator+(const Tensor& a, const Tensor& b) { return add(a, b); }
Tensor operator-(const Tensor& a, const Tensor& b) { return sub(a, b); }
Tensor operator*(const Tensor& a, const Tensor& b) { return mul(a, b); }
Tensor operator/(const Tensor& a, const Tensor& b) { return div(a, b); }
Tensor operator-(const Tensor& a) { return neg(a); }
Tensor operator+(const Tensor& a, Scalar b) { return add(a, wrap(b, a.device())); }
Tensor operator-(const Tensor& a, Scalar b) { return sub(a, wrap(b, a.device())); }
Tensor operator*(const Tensor& a, Scalar b) { return mul(a, wrap(b, a.device())); }
Tensor operator/(const Tensor& a, Scalar b) { return div(a, wrap(b, a.device())); }
Tensor operator+(Scalar a, const Tensor& b) { return add(wrap(a, b.device()), b); }
Tensor operator-(Scalar a, const Tensor& b) { return sub(wrap(a, b.device()), b); }
Tensor operator*(Scalar a, const Tensor& b) { return mul(wrap(a, b.device()), b); }
Tensor operator/(Scalar a, const Tensor& b) { return div(wrap(a, b.device()), b); }
Tensor operator==(const Tensor& a, const Tensor& b) { return eq(a, b); }
Tensor operator!=(const Tensor& a, const Tensor& b) { return ne(a, b); }
Tensor operator<(const Tensor& a, const Tensor& b) { return lt(a, b); }
Tensor operator<=(const Tensor& a, const Tensor& b) { return le(a, b); }
Tensor operator>(const Tensor& a, const Tensor& b) { return gt(a, b); }
Tensor operator>=(const Tensor& a, const Tensor& b) { return ge(a, b); }
Tensor operator<(const Tensor& a, Scalar b) { return lt(a, wrap(b, a.device())); }
Tensor operator>(const Tensor& a, Scalar b) { return gt(a, wrap(b, a.device())); }
Tensor operator==(const Tensor& a, Scalar b) { return eq(a, wrap(b, a.device())); }
Tensor& operator+=(Tensor& a, const Tensor& b) { return add_(a, b); }
Tensor& operator-=(Tensor& a, const Tensor& b) { return sub_(a, b); }
Tensor& operator*=(Tensor& a, const Tensor& b) { return mul_(a, b); }
Tensor& operator/=(Tensor& a, const Tensor& b) { return div_(a, b); }
Tensor& operator+=(Tensor& a, Scalar b) { return add_(a, wrap(b, a.device())); }
Tensor& operator*=(Tensor& a, Scalar b) { return mul_(a, wrap(b, a.device())); }

Tensor Tensor::add(const Tensor& o, Scalar alpha) const { return coil::add(*this, o, alpha); }
Tensor Tensor::sub(const Tensor& o, Scalar alpha) const { return coil::sub(*this, o, alpha); }
Tensor Tensor::mul(const Tensor& o) const { return coil::mul(*this, o); }
Tensor Tensor::div(const Tensor& o) const { return coil::div(*this, o); }
Tensor& Tensor::add_(const Tensor& o, Scalar alpha) { return coil::add_(*this, o, alpha); }
Tensor& Tensor::sub_(const Tensor& o, Scalar alpha) { return coil::sub_(*this, o, alpha); }
Tensor& Tensor::mul_(const Tensor& o) { return coil::mul_(*this, o); }
Tensor& Tensor::div_(const Tensor& o) { return coil::div_(*this, o); }
Tensor& Tensor::add_(Scalar v) { return coil::add_(*this, wrap(v, device())); }
Tensor& Tensor::mul_(Scalar v) { return coil::mul_(*this, wrap(v, device())); }

namespace {
void register_binary() {
  struct Row {
    const char* name;
    BinaryOp id;
    bool diff;
    double lo;  // gradcheck input range [lo, 2)
  };
  const Row rows[] = {
      {"add", BinaryOp::add, true, -2},         {"sub", BinaryOp::sub, true, -2},
      {"mul", BinaryOp::mul, true, -2},         {"div", BinaryOp::div, true, 0.5},
      {"pow", BinaryOp::pow, true, 0.5},        {"maximum", BinaryOp::maximum, true, -2},
      {"minimum", BinaryOp::minimum, true, -2}, {"eq", BinaryOp::eq, false, 0},
      {"ne", BinaryOp::ne, false, 0},           {"lt", BinaryOp::lt, false, 0},
      {"le", BinaryOp::le, false, 0},           {"gt", BinaryOp::gt, false, 0},
      {"ge", BinaryOp::ge, false, 0},
  };
  for (const Row& r : rows) {
    OpInfo& o = register_op(r.name, "binary");
    g_rows[static_cast<int>(r.id)] = &o;
    o.set_kernel(kCPU, &cpu::binary_kernel);
    o.differentiable = r.diff;
    const char* name = r.name;
    BinaryOp id = r.id;
    o.boxed = [name, id](const TensorList& in, const Attrs& a) {
      return TensorList{apply_binary(name, id, in[0], in[1], attr_or<double>(a, "alpha", 1))};
    };
    if (!r.diff) continue;
    double lo = r.lo;
    // broadcasting in both directions: (3, 1, 4) with (2, 4)
    o.gradcheck = [name, id, lo] {
      return GradcheckCase{
          {detail::gc_rand({3, 1, 4}, lo, 2), detail::gc_rand({2, 4}, lo, 2)},
          [name, id](const TensorList& x) { return apply_binary(name, id, x[0], x[1], 1.5); }};
    };
  }
  for (const char* name : {"logical_and", "logical_or"}) {
    OpInfo& o = register_op(name, "binary");
    o.set_kernel(kCPU, &cpu::binary_kernel);
    o.differentiable = false;
  }
  op_row("logical_and").boxed = [](const TensorList& in, const Attrs&) {
    return TensorList{logical_and(in[0], in[1])};
  };
  op_row("logical_or").boxed = [](const TensorList& in, const Attrs&) {
    return TensorList{logical_or(in[0], in[1])};
  };
  {
    OpInfo& o = register_op("add_", "binary");
    o.set_kernel(kCPU, &cpu::binary_kernel);
    o.differentiable = false;  // in-place accumulation (the autograd engine's), no graph
    o.boxed = [](const TensorList& in, const Attrs& a) {
      Tensor t = in[0];
      add_(t, in[1], attr_or<double>(a, "alpha", 1));
      return TensorList{t};
    };
  }
  {
    OpInfo& o = register_op("where", "binary");
    o.set_kernel(kCPU, &cpu::where_kernel);
    o.boxed = [](const TensorList& in, const Attrs&) {
      return TensorList{where(in[0], in[1], in[2])};
    };
    o.gradcheck = [] {
      Tensor c = detail::gc_rand({3, 4}, -1, 1, false) > 0.0;
      return GradcheckCase{{c, detail::gc_rand({3, 4}), detail::gc_rand({4})},
                           [](const TensorList& x) { return where(x[0], x[1], x[2]); }};
    };
  }
}
OpRegistrar reg(register_binary);
}  // namespace

}  // namespace coil
