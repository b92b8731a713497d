// Unary elementwise ops: one table row each (name, kernel op, float-only, gradient formula).
#include "unary.h"

#include <cmath>
#include <iterator>

#include "binary.h"
#include "copy.h"
#include "creation.h"
#include "op_helpers.h"

namespace coil {

namespace {

// dx from (grad, input, output, p0, p1); written with coil ops so it runs on every device.
using UnaryGrad = Tensor (*)(const Tensor& g, const Tensor& x, const Tensor& y, double p0,
                             double p1);

struct UnarySpec {
  const char* name;
  UnaryOp id;
  bool float_result;  // integer inputs give f32 (exp, log, ...)
  UnaryGrad grad;     // null: not differentiable
  bool saves_input;
  bool saves_output;
};

Tensor unary_forward(const OpInfo& op, const UnarySpec& s, const Tensor& x, double p0, double p1) {
  DType out_t = x.dtype();
  if (s.id == UnaryOp::isfinite || s.id == UnaryOp::logical_not) {
    Tensor out = empty(x.sizes(), Options(kBool, x.device()));
    kernel_for<UnaryKernel>(op, x.device())(s.id, out, x, p0, p1);
    return out;
  }
  if (out_t == kBool) out_t = s.float_result ? kF32 : kI64;
  if (s.float_result && !is_floating(out_t)) out_t = kF32;
  DType ct = compute_dtype(out_t);
  Tensor xin = detail::as_compute(x, ct);
  Tensor out = empty(x.sizes(), Options(ct, x.device()));
  kernel_for<UnaryKernel>(op, x.device())(s.id, out, xin, p0, p1);
  return ct == out_t ? out : detail::cast(out, out_t);
}

const OpInfo& row_of(const UnarySpec& s);  // below, after the spec table

Tensor apply_unary(const UnarySpec& s, const Tensor& x, double p0 = 0, double p1 = 0) {
  const OpInfo& op = row_of(s);
  if (any_distributed({&x})) return dist_dispatch(op, {x}, {{"p0", p0}, {"p1", p1}})[0];
  Tensor out = unary_forward(op, s, x, p0, p1);
  if (s.grad && needs_grad({&x})) {
    SavedTensor sx = s.saves_input ? SavedTensor(x, s.name) : SavedTensor();
    SavedTensor sy = s.saves_output ? SavedTensor(out, s.name) : SavedTensor();
    UnaryGrad gf = s.grad;
    record(s.name, {x}, {out}, [sx, sy, gf, p0, p1](const TensorList& g) {
      return TensorList{gf(g[0], sx.unpack(), sy.unpack(), p0, p1)};
    });
  }
  check_anomaly(s.name, {x}, {out});
  return out;
}

Tensor g_neg(const Tensor& g, const Tensor&, const Tensor&, double, double) { return -g; }
Tensor g_exp(const Tensor& g, const Tensor&, const Tensor& y, double, double) { return g * y; }
Tensor g_log(const Tensor& g, const Tensor& x, const Tensor&, double, double) { return g / x; }
Tensor g_log1p(const Tensor& g, const Tensor& x, const Tensor&, double, double) {
  return g / (x + 1.0);
}
Tensor g_sqrt(const Tensor& g, const Tensor&, const Tensor& y, double, double) {
  return g / (2.0 * y);
}
Tensor g_rsqrt(const Tensor& g, const Tensor&, const Tensor& y, double, double) {
  return g * (-0.5 * y * y * y);
}
Tensor g_abs(const Tensor& g, const Tensor& x, const Tensor&, double, double) {
  return g * sign(x);
}
Tensor g_tanh(const Tensor& g, const Tensor&, const Tensor& y, double, double) {
  return g * (1.0 - y * y);
}
Tensor g_sigmoid(const Tensor& g, const Tensor&, const Tensor& y, double, double) {
  return g * (y * (1.0 - y));
}
Tensor g_silu(const Tensor& g, const Tensor& x, const Tensor&, double, double) {
  Tensor s = sigmoid(x);
  return g * (s * (1.0 + x * (1.0 - s)));
}
Tensor g_softplus(const Tensor& g, const Tensor& x, const Tensor&, double beta, double thr) {
  Tensor z = x * beta;
  return where(z > thr, g, g * sigmoid(z));
}
Tensor g_gelu(const Tensor& g, const Tensor& x, const Tensor&, double approx, double) {
  if (approx != 0) {
    const double k = 0.7978845608028654;
    Tensor inner = k * (x + 0.044715 * x * x * x);
    Tensor t = tanh(inner);
    Tensor dinner = k * (1.0 + 3 * 0.044715 * x * x);
    return g * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * dinner);
  }
  // d/dx [x Phi(x)] = Phi(x) + x phi(x)
  Tensor phi = exp(-0.5 * x * x) * 0.3989422804014327;
  Tensor Phi = 0.5 * (1.0 + erf(x * 0.7071067811865476));
  return g * (Phi + x * phi);
}
Tensor g_relu(const Tensor& g, const Tensor&, const Tensor& y, double, double) {
  return where(y > 0, g, zeros_like(g));
}
Tensor g_pow(const Tensor& g, const Tensor& x, const Tensor&, double e, double) {
  if (e == 0) return zeros_like(g);
  return g * (e * pow(x, e - 1));
}
Tensor g_clamp(const Tensor& g, const Tensor& x, const Tensor&, double lo, double hi) {
  Tensor keep = ones_like(x) > 0;
  if (!std::isnan(lo)) keep = logical_and(keep, x >= full_like(x, lo));
  if (!std::isnan(hi)) keep = logical_and(keep, x <= full_like(x, hi));
  return where(keep, g, zeros_like(g));
}
Tensor g_square(const Tensor& g, const Tensor& x, const Tensor&, double, double) {
  return g * (2.0 * x);
}
Tensor g_reciprocal(const Tensor& g, const Tensor&, const Tensor& y, double, double) {
  return -g * y * y;
}
Tensor g_erf(const Tensor& g, const Tensor& x, const Tensor&, double, double) {
  return g * (exp(-x * x) * 1.1283791670955126);  // 2 / sqrt(pi)
}
Tensor g_sign(const Tensor& g, const Tensor&, const Tensor&, double, double) {
  return zeros_like(g);
}

const UnarySpec kSpecs[] = {
    {"neg", UnaryOp::neg, false, g_neg, false, false},
    {"exp", UnaryOp::exp, true, g_exp, false, true},
    {"log", UnaryOp::log, true, g_log, true, false},
    {"log1p", UnaryOp::log1p, true, g_log1p, true, false},
    {"sqrt", UnaryOp::sqrt, true, g_sqrt, false, true},
    {"rsqrt", UnaryOp::rsqrt, true, g_rsqrt, false, true},
    {"abs", UnaryOp::abs, false, g_abs, true, false},
    {"tanh", UnaryOp::tanh, true, g_tanh, false, true},
    {"sigmoid", UnaryOp::sigmoid, true, g_sigmoid, false, true},
    {"silu", UnaryOp::silu, true, g_silu, true, false},
    {"softplus", UnaryOp::softplus, true, g_softplus, true, false},
    {"erf", UnaryOp::erf, true, g_erf, true, false},
    {"gelu", UnaryOp::gelu, true, g_gelu, true, false},
    {"relu", UnaryOp::relu, false, g_relu, false, true},
    {"pow_scalar", UnaryOp::pow, true, g_pow, true, false},
    {"clamp", UnaryOp::clamp, false, g_clamp, true, false},
    {"square", UnaryOp::square, false, g_square, true, false},
    {"reciprocal", UnaryOp::reciprocal, true, g_reciprocal, false, true},
    {"sign", UnaryOp::sign, false, g_sign, false, false},
    {"isfinite", UnaryOp::isfinite, false, nullptr, false, false},
    {"logical_not", UnaryOp::logical_not, false, nullptr, false, false},
};

// Each spec's op-table row, filled at registration: no lookup by name on the hot path.
const OpInfo* g_rows[std::size(kSpecs)];
const OpInfo& row_of(const UnarySpec& s) { return *g_rows[&s - kSpecs]; }

const UnarySpec& spec(UnaryOp id) {
  for (const UnarySpec& s : kSpecs)
    if (s.id == id) return s;
  fail("unary: unknown op");
}

}  // namespace

Tensor neg(const Tensor& x) { return apply_unary(spec(UnaryOp::neg), x); }
Tensor exp(const Tensor& x) { return apply_unary(spec(UnaryOp::exp), x); }
Tensor log(const Tensor& x) { return apply_unary(spec(UnaryOp::log), x); }
Tensor log1p(const Tensor& x) { return apply_unary(spec(UnaryOp::log1p), x); }
Tensor sqrt(const Tensor& x) { return apply_unary(spec(UnaryOp::sqrt), x); }
Tensor rsqrt(const Tensor& x) { return apply_unary(spec(UnaryOp::rsqrt), x); }
Tensor abs(const Tensor& x) { return apply_unary(spec(UnaryOp::abs), x); }
Tensor tanh(const Tensor& x) { return apply_unary(spec(UnaryOp::tanh), x); }
Tensor sigmoid(const Tensor& x) { return apply_unary(spec(UnaryOp::sigmoid), x); }
Tensor silu(const Tensor& x) { return apply_unary(spec(UnaryOp::silu), x); }
Tensor softplus(const Tensor& x, double beta, double threshold) {
  COIL_CHECK(beta > 0, "softplus: beta must be positive, got ", beta);
  return apply_unary(spec(UnaryOp::softplus), x, beta, threshold);
}
Tensor gelu(const Tensor& x, bool approx) {
  return apply_unary(spec(UnaryOp::gelu), x, approx ? 1 : 0);
}
Tensor erf(const Tensor& x) { return apply_unary(spec(UnaryOp::erf), x); }
Tensor relu(const Tensor& x) { return apply_unary(spec(UnaryOp::relu), x); }
Tensor pow(const Tensor& x, Scalar e) { return apply_unary(spec(UnaryOp::pow), x, e.to_double()); }
Tensor square(const Tensor& x) { return apply_unary(spec(UnaryOp::square), x); }
Tensor reciprocal(const Tensor& x) { return apply_unary(spec(UnaryOp::reciprocal), x); }
Tensor sign(const Tensor& x) { return apply_unary(spec(UnaryOp::sign), x); }
Tensor clamp(const Tensor& x, std::optional<Scalar> lo, std::optional<Scalar> hi) {
  COIL_CHECK(lo || hi, "clamp: at least one of min and max must be given");
  double l = lo ? lo->to_double() : NAN, h = hi ? hi->to_double() : NAN;
  COIL_CHECK(!(lo && hi) || l <= h, "clamp: min ", *lo, " is greater than max ", *hi);
  return apply_unary(spec(UnaryOp::clamp), x, l, h);
}
Tensor isfinite(const Tensor& x) { return apply_unary(spec(UnaryOp::isfinite), x); }
Tensor logical_not(const Tensor& x) { return apply_unary(spec(UnaryOp::logical_not), x); }

Tensor Tensor::neg() const { return coil::neg(*this); }
Tensor Tensor::exp() const { return coil::exp(*this); }
Tensor Tensor::log() const { return coil::log(*this); }
Tensor Tensor::sqrt() const { return coil::sqrt(*this); }
Tensor Tensor::rsqrt() const { return coil::rsqrt(*this); }
Tensor Tensor::abs() const { return coil::abs(*this); }
Tensor Tensor::tanh() const { return coil::tanh(*this); }
Tensor Tensor::sigmoid() const { return coil::sigmoid(*this); }
Tensor Tensor::relu() const { return coil::relu(*this); }
Tensor Tensor::square() const { return coil::square(*this); }
Tensor Tensor::pow(Scalar e) const { return coil::pow(*this, e); }
Tensor Tensor::clamp(std::optional<Scalar> lo, std::optional<Scalar> hi) const {
  return coil::clamp(*this, lo, hi);
}

namespace {
void register_unary() {
  for (const UnarySpec& s : kSpecs) {
    OpInfo& o = register_op(s.name, "unary");
    g_rows[&s - kSpecs] = &o;
    o.set_kernel(kCPU, &cpu::unary_kernel);
    o.differentiable = s.grad != nullptr && s.id != UnaryOp::sign;
    const UnarySpec* sp = &s;
    o.boxed = [sp](const TensorList& in, const Attrs& a) {
      return TensorList{
          apply_unary(*sp, in[0], attr_or<double>(a, "p0", 0), attr_or<double>(a, "p1", 0))};
    };
    if (!o.differentiable) continue;
    // Inputs away from the kinks and poles of each function.
    double lo = -2, hi = 2, p0 = 0, p1 = 0;
    switch (s.id) {
      case UnaryOp::log:
      case UnaryOp::sqrt:
      case UnaryOp::rsqrt:
      case UnaryOp::reciprocal:
        lo = 0.5;
        break;
      case UnaryOp::log1p:
        lo = -0.5;
        break;
      case UnaryOp::pow:
        lo = 0.5;
        p0 = 2.5;
        break;
      case UnaryOp::softplus:
        p0 = 2;
        p1 = 3;
        break;  // both branches: beta x > 3 passes through
      case UnaryOp::clamp:
        p0 = -0.7;
        p1 = 0.9;
        break;
      case UnaryOp::gelu:
        p0 = 0;
        break;
      default:
        break;
    }
    o.gradcheck = [sp, lo, hi, p0, p1] {
      return GradcheckCase{{detail::gc_rand({4, 5}, lo, hi)}, [sp, p0, p1](const TensorList& x) {
                             return apply_unary(*sp, x[0], p0, p1);
                           }};
    };
  }
}
OpRegistrar reg(register_unary);
}  // namespace

}  // namespace coil
