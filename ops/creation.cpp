#include "creation.h"

#include <cmath>

#include "../core/rng.h"
#include "binary.h"
#include "copy.h"
#include "op_helpers.h"

namespace coil {

void detail::for_each_draw_run(const char* op, const Shape& local, int64_t elements_per_counter,
                               const DrawRunFn& fn) {
  const DrawPiece* piece = current_draw_piece();
  int64_t numel = 1;
  for (int64_t s : local) numel *= s;
  int64_t n = numel;
  if (piece) {
    COIL_CHECK(piece->global.size() == local.size(), op, ": the local piece ", shape_str(local),
               " does not match the global shape ", shape_str(piece->global));
    n = 1;
    for (int64_t s : piece->global) n *= s;
  }
  const PhiloxDraw d =
      philox_reserve(static_cast<uint64_t>((n + elements_per_counter - 1) / elements_per_counter));
  if (!piece) return fn(0, numel, d, 0);
  for_each_piece_run(*piece, local, [&](int64_t start, int64_t global, int64_t len) {
    fn(start, len, d, static_cast<uint64_t>(global));
  });
}

namespace {
Tensor filled(const Shape& shape, double v, Options o) {
  static const OpInfo& op = op_info("fill_");
  Tensor t = empty(shape, Options(o.dtype, o.device));
  kernel_for<FillKernel>(op, o.device)(t, v);
  if (o.requires_grad) t.requires_grad_(true);
  return t;
}

void random_fill(const char* name, RandomKind kind, Tensor& t, double a, double b) {
  const OpInfo& op = op_info(name);
  auto k = kernel_for<RandomKernel>(op, t.device());
  Tensor dst = t.is_contiguous() ? t : empty(t.sizes(), Options(t.dtype(), t.device()));
  Tensor flat = dst.view({dst.numel()});
  detail::for_each_draw_run(name, t.sizes(), 1,
                            [&](int64_t start, int64_t len, PhiloxDraw d, uint64_t first) {
                              k(kind, flat.narrow(0, start, len), a, b, d.seed, d.offset, first);
                            });
  if (!dst.is_same(t)) {
    NoGradGuard g;
    t.copy_(dst);
  }
  t.bump_version();
}

Tensor random_new(const char* name, RandomKind kind, const Shape& shape, Options o, double a,
                  double b) {
  Tensor t = empty(shape, Options(o.dtype, o.device));
  random_fill(name, kind, t, a, b);
  if (o.requires_grad) t.requires_grad_(true);
  return t;
}
}  // namespace

Tensor zeros(const Shape& shape, Options o) { return filled(shape, 0, o); }
Tensor ones(const Shape& shape, Options o) { return filled(shape, 1, o); }
Tensor full(const Shape& shape, Scalar v, Options o) { return filled(shape, v.to_double(), o); }
Tensor zeros_like(const Tensor& t) { return zeros(t.sizes(), Options(t.dtype(), t.device())); }
Tensor ones_like(const Tensor& t) { return ones(t.sizes(), Options(t.dtype(), t.device())); }
Tensor full_like(const Tensor& t, Scalar v) {
  return full(t.sizes(), v, Options(t.dtype(), t.device()));
}
Tensor empty_like(const Tensor& t) { return empty(t.sizes(), Options(t.dtype(), t.device())); }

Tensor arange(Scalar end, Options o) { return arange(0, end, 1, o); }
Tensor arange(Scalar start, Scalar end, Scalar step, Options o) {
  double s = start.to_double(), e = end.to_double(), st = step.to_double();
  COIL_CHECK(st != 0, "arange: step must be nonzero");
  COIL_CHECK((e - s) / st >= 0 || e == s, "arange: range [", start, ", ", end,
             ") cannot be walked with step ", step);
  if (start.is_floating() || end.is_floating() || step.is_floating()) {
    if (!is_floating(o.dtype)) o.dtype = kF32;
  }
  int64_t n = static_cast<int64_t>(std::ceil((e - s) / st));
  std::vector<double> v(static_cast<size_t>(std::max<int64_t>(n, 0)));
  for (int64_t i = 0; i < n; ++i) v[i] = s + st * static_cast<double>(i);
  return tensor(v, {static_cast<int64_t>(v.size())}, o);
}

Tensor linspace(double start, double end, int64_t steps, Options o) {
  COIL_CHECK(steps >= 0, "linspace: steps must be non-negative, got ", steps);
  std::vector<double> v(static_cast<size_t>(steps));
  for (int64_t i = 0; i < steps; ++i)
    v[i] = steps == 1
               ? start
               : start + (end - start) * static_cast<double>(i) / static_cast<double>(steps - 1);
  return tensor(v, {steps}, o);
}

Tensor eye(int64_t n, Options o) {
  COIL_CHECK(n >= 0, "eye: size must be non-negative, got ", n);
  std::vector<double> v(static_cast<size_t>(n * n), 0.0);
  for (int64_t i = 0; i < n; ++i) v[i * n + i] = 1;
  return tensor(v, {n, n}, o);
}

Tensor rand(const Shape& shape, Options o) {
  return random_new("rand", RandomKind::uniform, shape, o, 0, 1);
}
Tensor randn(const Shape& shape, Options o) {
  return random_new("randn", RandomKind::normal, shape, o, 0, 1);
}
Tensor randint(int64_t low, int64_t high, const Shape& shape, Options o) {
  COIL_CHECK(high > low, "randint: expected low < high, got low=", low, " high=", high);
  return random_new("randint", RandomKind::randint, shape, o, static_cast<double>(low),
                    static_cast<double>(high));
}
Tensor rand_like(const Tensor& t) { return rand(t.sizes(), Options(t.dtype(), t.device())); }
Tensor randn_like(const Tensor& t) { return randn(t.sizes(), Options(t.dtype(), t.device())); }

Tensor& uniform_(Tensor& t, double low, double high) {
  COIL_CHECK(low <= high, "uniform_: expected low <= high, got ", low, " > ", high);
  if (t.is_distributed()) {
    dist_dispatch(op_info("uniform_"), {t}, {{"low", low}, {"high", high}});
    return t;
  }
  random_fill("uniform_", RandomKind::uniform, t, low, high);
  return t;
}
Tensor& normal_(Tensor& t, double mean, double std) {
  COIL_CHECK(std >= 0, "normal_: std must be non-negative, got ", std);
  if (t.is_distributed()) {
    dist_dispatch(op_info("normal_"), {t}, {{"mean", mean}, {"std", std}});
    return t;
  }
  random_fill("normal_", RandomKind::normal, t, mean, std);
  return t;
}
Tensor& bernoulli_(Tensor& t, double p) {
  COIL_CHECK(p >= 0 && p <= 1, "bernoulli_: p must be in [0, 1], got ", p);
  if (t.is_distributed()) {
    dist_dispatch(op_info("bernoulli_"), {t}, {{"p", p}});
    return t;
  }
  random_fill("bernoulli_", RandomKind::bernoulli, t, p, 0);
  return t;
}

namespace detail {
Tensor gc_rand(const Shape& s, double lo, double hi, bool requires_grad) {
  Tensor t = rand(s, kF64);
  {
    NoGradGuard g;
    t = (hi - lo) * t + lo;
  }
  if (requires_grad) t.requires_grad_(true);
  return t;
}
}  // namespace detail

namespace {
void register_creation() {
  auto shape_opts = [](const Attrs& a) {
    Options o(attr_or<DType>(a, "dtype", kF32));
    o.device = Device(attr_or<std::string>(a, "device", "cpu"));  // "cpu", "cuda:N"
    return o;
  };
  {
    OpInfo& o = register_op("zeros", "creation");
    o.differentiable = false;
    o.composite = true;
    o.boxed = [shape_opts](const TensorList&, const Attrs& a) {
      return TensorList{zeros(attr<Shape>(a, "shape"), shape_opts(a))};
    };
  }
  {
    OpInfo& o = register_op("ones", "creation");
    o.differentiable = false;
    o.composite = true;
    o.boxed = [shape_opts](const TensorList&, const Attrs& a) {
      return TensorList{ones(attr<Shape>(a, "shape"), shape_opts(a))};
    };
  }
  for (const char* name : {"rand", "randn", "randint", "uniform_", "normal_", "bernoulli_"}) {
    OpInfo& o = register_op(name, "creation");
    o.differentiable = false;
    o.set_kernel(kCPU, &cpu::random_kernel);
  }
  op_row("rand").boxed = [shape_opts](const TensorList&, const Attrs& a) {
    return TensorList{rand(attr<Shape>(a, "shape"), shape_opts(a))};
  };
  op_row("randn").boxed = [shape_opts](const TensorList&, const Attrs& a) {
    return TensorList{randn(attr<Shape>(a, "shape"), shape_opts(a))};
  };
  op_row("randint").boxed = [](const TensorList&, const Attrs& a) {
    return TensorList{randint(attr<int64_t>(a, "low"), attr<int64_t>(a, "high"),
                              attr<Shape>(a, "shape"), Options(attr_or<DType>(a, "dtype", kI64)))};
  };
  op_row("uniform_").boxed = [](const TensorList& in, const Attrs& a) {
    Tensor t = in[0];
    return TensorList{uniform_(t, attr_or<double>(a, "low", 0), attr_or<double>(a, "high", 1))};
  };
  op_row("normal_").boxed = [](const TensorList& in, const Attrs& a) {
    Tensor t = in[0];
    return TensorList{normal_(t, attr_or<double>(a, "mean", 0), attr_or<double>(a, "std", 1))};
  };
  op_row("bernoulli_").boxed = [](const TensorList& in, const Attrs& a) {
    Tensor t = in[0];
    return TensorList{bernoulli_(t, attr<double>(a, "p"))};
  };
}
OpRegistrar reg(register_creation);
}  // namespace

}  // namespace coil
