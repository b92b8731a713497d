// Internal helpers shared by the op families (not installed as public API).
#pragma once
#include "../autograd/node.h"
#include "../core/autocast.h"
#include "../core/op_table.h"
#include "../core/rng.h"
#include "cpu/kernels.h"

namespace coil::detail {

// A new contiguous tensor; no autograd.
inline Tensor new_like_shape(const Shape& s, DType t, Device d) { return empty(s, Options(t, d)); }
// A dtype conversion outside autograd (kernels' input preparation).
Tensor cast(const Tensor& x, DType t);
// x in the dtype kernels compute in for `t` (16-bit floats widen to f32).
inline Tensor as_compute(const Tensor& x, DType t) { return x.dtype() == t ? x : cast(x, t); }
// The gradcheck inputs of the registry: float64 in [lo, hi), requiring grad.
Tensor gc_rand(const Shape& s, double lo = -1, double hi = 1, bool requires_grad = true);
// A scalar the way the op layer passes it around: a wrapped-number 0-d tensor.
inline Tensor wrap(Scalar s, Device d = Device()) { return scalar_tensor(s, s.wrapped_dtype(), d); }
// Dims normalised, deduplicated and sorted; empty means all.
Shape reduce_dims(const char* op, const Shape& dims, int64_t ndim);

// One draw from the default generator for the elements of a tensor of shape `local`: reserves
// ceil(n / elements_per_counter) counters, n being its numel or, inside a DrawPieceScope (a
// DTensor's local piece, core/rng.h), the global tensor's; then fn(start, len, draw, first) for
// each run of row-major elements start .. start + len - 1, the first being element `first` of
// the draw.
using DrawRunFn = std::function<void(int64_t start, int64_t len, PhiloxDraw d, uint64_t first)>;
void for_each_draw_run(const char* op, const Shape& local, int64_t elements_per_counter,
                       const DrawRunFn& fn);

// ---- autocast (core/autocast.h) ----
// At an op's entry: `if (auto ac = autocast_scope()) return op(autocast_lower(x) ...)`. It turns
// autocast off for the op's own body (its inner ops are not autocast again) and back on after.
class AutocastScope {
 public:
  AutocastScope() : prev_(autocast_state()) {
    if (prev_.enabled) set_autocast_state({false, prev_.dtype});
  }
  ~AutocastScope() { set_autocast_state(prev_); }
  explicit operator bool() const { return prev_.enabled; }
  DType dtype() const { return prev_.dtype; }

 private:
  AutocastState prev_;
};
// x cast differentiably to `t` when it is float32 (other dtypes pass through); undefined stays.
Tensor autocast_to(const Tensor& x, DType t);
// x in float32 when it is a 16-bit float.
Tensor autocast_f32(const Tensor& x);

// The op's row, looked up once per call site.
#define COIL_OP(name) static const ::coil::OpInfo& op_ = ::coil::op_info(name)

}  // namespace coil::detail
