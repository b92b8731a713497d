// Kernel signatures per op family (internal). The op layer looks a kernel up in the op table for
// the tensor's device and calls it with allocated outputs; kernels never allocate results.
#pragma once
#include <cstdint>

#include "../../core/tensor.h"
#include "../kernel_ops.h"

namespace coil {

// out = f(in); p0, p1 carry pow's exponent, clamp's bounds, softplus's beta and threshold,
// gelu's approximate flag. in has out's compute dtype (or any, for isfinite/logical_not).
using UnaryKernel = void (*)(UnaryOp op, const Tensor& out, const Tensor& in, double p0, double p1);
// out = a (op) b with broadcasting; alpha scales b for add/sub.
using BinaryKernel = void (*)(BinaryOp op, const Tensor& out, const Tensor& a, const Tensor& b,
                              double alpha);
using WhereKernel = void (*)(const Tensor& out, const Tensor& cond, const Tensor& a,
                             const Tensor& b);
// Copies src into dst (same shape, any strides, any dtypes).
using CopyKernel = void (*)(const Tensor& dst, const Tensor& src);
using FillKernel = void (*)(const Tensor& out, double value);
// Reduces in (contiguous, viewed as [outer, r]) over its last dim into out [outer] (contiguous).
// idx receives argmax/argmin positions for max/min when defined.
using ReduceKernel = void (*)(ReduceOp op, const Tensor& out, const Tensor& idx, const Tensor& in,
                              int64_t outer, int64_t r);

namespace cpu {
void unary_kernel(UnaryOp op, const Tensor& out, const Tensor& in, double p0, double p1);
void binary_kernel(BinaryOp op, const Tensor& out, const Tensor& a, const Tensor& b, double alpha);
void where_kernel(const Tensor& out, const Tensor& cond, const Tensor& a, const Tensor& b);
void copy_kernel(const Tensor& dst, const Tensor& src);
void fill_kernel(const Tensor& out, double value);
void reduce_kernel(ReduceOp op, const Tensor& out, const Tensor& idx, const Tensor& in,
                   int64_t outer, int64_t r);
}  // namespace cpu

// Calls f.template operator()<T>() for the C++ type of t (16-bit floats as BFloat16/Half).
template <class F>
void dispatch_dtype(DType t, const char* op, F&& f) {
  switch (t) {
    case kF32:
      f.template operator()<float>();
      return;
    case kF64:
      f.template operator()<double>();
      return;
    case kI32:
      f.template operator()<int32_t>();
      return;
    case kI64:
      f.template operator()<int64_t>();
      return;
    case kBool:
      f.template operator()<bool>();
      return;
    case kBF16:
      f.template operator()<BFloat16>();
      return;
    case kF16:
      f.template operator()<Half>();
      return;
  }
  fail(op, ": unsupported dtype ", t);
}

}  // namespace coil

namespace coil {
struct PhiloxDraw;
// Fills contiguous `out` with elements first .. first + numel - 1 of the draw at (seed, offset):
// element e uses Philox counter offset + e (normal: offset + e / 2, the pair's cos or sin).
using RandomKernel = void (*)(RandomKind kind, const Tensor& out, double a, double b, uint64_t seed,
                              uint64_t offset, uint64_t first);
namespace cpu {
void random_kernel(RandomKind kind, const Tensor& out, double a, double b, uint64_t seed,
                   uint64_t offset, uint64_t first);
}
}  // namespace coil

namespace coil {
// `in` (and `aux`) contiguous, viewed as [outer, n, inner]; scans along n into contiguous out.
// cumprod_grad: in = x, aux = grad of cumprod(x); out = grad of x (exact with zeros).
using ScanKernel = void (*)(ScanOp op, const Tensor& out, const Tensor& in, const Tensor& aux,
                            int64_t outer, int64_t n, int64_t inner, bool reverse);
// out (B, n, m) contiguous = a (B, n, k) @ b (B, k, m); a and b any strides (batch stride may be
// 0 for broadcast); same dtype, f32/f64/i32/i64.
using GemmKernel = void (*)(const Tensor& out, const Tensor& a, const Tensor& b);
// Grouped GEMM over row groups [offsets[e], offsets[e+1]): rows mode, out (n, m) contiguous, group
// e's rows = a's rows (n, k) @ b[e] (E, k, m); outer mode (a weight's gradient), out (E, k, m)
// contiguous, out[e] = a's rows^T @ b's rows (a (n, k), b (n, m)), zero for an empty group.
using GroupedGemmKernel = void (*)(bool outer, const Tensor& out, const Tensor& a, const Tensor& b,
                                   const std::vector<int64_t>& offsets);
namespace cpu {
void scan_kernel(ScanOp op, const Tensor& out, const Tensor& in, const Tensor& aux, int64_t outer,
                 int64_t n, int64_t inner, bool reverse);
void gemm_kernel(const Tensor& out, const Tensor& a, const Tensor& b);
void grouped_gemm_kernel(bool outer, const Tensor& out, const Tensor& a, const Tensor& b,
                         const std::vector<int64_t>& offsets);
}  // namespace cpu
}  // namespace coil

namespace coil {
// `in` contiguous [outer, n, inner], f32 or f64; writes softmax (log_softmax when `log`) along n,
// shifted by the max, into contiguous out of the same dtype.
using SoftmaxKernel = void (*)(const Tensor& out, const Tensor& in, int64_t outer, int64_t n,
                               int64_t inner, bool log);
// out = keep ? in * scale : 0 and mask = keep, all contiguous (mask bool). Element i is element
// e = first + i of the draw: it keeps with probability 1 - p from Philox counter offset + e / 4,
// lane e % 4 (a whole draw of n elements takes (n + 3) / 4 counters).
using DropoutKernel = void (*)(const Tensor& out, const Tensor& mask, const Tensor& in, double p,
                               double scale, uint64_t seed, uint64_t offset, uint64_t first);
namespace cpu {
void softmax_kernel(const Tensor& out, const Tensor& in, int64_t outer, int64_t n, int64_t inner,
                    bool log);
void dropout_kernel(const Tensor& out, const Tensor& mask, const Tensor& in, double p, double scale,
                    uint64_t seed, uint64_t offset, uint64_t first);
}  // namespace cpu
}  // namespace coil

namespace coil {
// The geometry of an indexing kernel. The indexed tensor is viewed as contiguous [outer, n, inner]
// and the index-shaped operands as contiguous [outer, m, inner] (index_select/index_add take a 1-d
// index of m entries instead). op and dim only name the culprit in an out-of-range error.
struct IndexGeom {
  int64_t outer = 1, n = 1, m = 1, inner = 1;
  int64_t dim = 0;
  const char* op = "";
};
// out [outer, m, inner] = x [outer, n, inner] at rows index[j] (any dtype; embedding too).
using IndexSelectKernel = void (*)(const Tensor& out, const Tensor& x, const Tensor& index,
                                   const IndexGeom& g);
// out [outer, n, inner], holding x, += alpha * src [outer, m, inner] at rows index[j].
using IndexAddKernel = void (*)(const Tensor& out, const Tensor& src, const Tensor& index,
                                const IndexGeom& g, double alpha);
// out [outer, m, inner] = x [outer, n, inner] at index [outer, m, inner] along n.
using GatherKernel = void (*)(const Tensor& out, const Tensor& x, const Tensor& index,
                              const IndexGeom& g);
// out [outer, n, inner], holding x, += src [outer, m, inner] at index [outer, m, inner] along n.
using ScatterAddKernel = void (*)(const Tensor& out, const Tensor& src, const Tensor& index,
                                  const IndexGeom& g);
// out (ids.numel(), num_classes) int64, written whole: out[i][ids[i]] = 1.
using OneHotKernel = void (*)(const Tensor& out, const Tensor& ids, int64_t num_classes);
// Sorts each row of contiguous in [outer, n] and writes the first k of the order into values and
// indices [outer, k] (contiguous). Stable; NaN is the largest value. scratch is int64
// [outer, n] when k < n (unused, undefined, when k == n).
using SortKernel = void (*)(const Tensor& values, const Tensor& indices, const Tensor& scratch,
                            const Tensor& in, int64_t outer, int64_t n, int64_t k, bool descending);
namespace cpu {
void index_select_kernel(const Tensor& out, const Tensor& x, const Tensor& index,
                         const IndexGeom& g);
void index_add_kernel(const Tensor& out, const Tensor& src, const Tensor& index, const IndexGeom& g,
                      double alpha);
void gather_kernel(const Tensor& out, const Tensor& x, const Tensor& index, const IndexGeom& g);
void scatter_add_kernel(const Tensor& out, const Tensor& src, const Tensor& index,
                        const IndexGeom& g);
void one_hot_kernel(const Tensor& out, const Tensor& ids, int64_t num_classes);
void sort_kernel(const Tensor& values, const Tensor& indices, const Tensor& scratch,
                 const Tensor& in, int64_t outer, int64_t n, int64_t k, bool descending);
}  // namespace cpu
}  // namespace coil

namespace coil {
// Depthwise causal conv, channel-last. All tensors contiguous: x, y, dy, dx (B, L, C);
// w, dw (C, K); bias, dbias (C) or undefined; window, dwindow (B, K-1, C) or undefined (zeros).
using CausalConvKernel = void (*)(const Tensor& y, const Tensor& x, const Tensor& w,
                                  const Tensor& bias, const Tensor& window, bool silu);
using CausalConvBackwardKernel = void (*)(const Tensor& dx, const Tensor& dw, const Tensor& dbias,
                                          const Tensor& dwindow, const Tensor& dy, const Tensor& x,
                                          const Tensor& w, const Tensor& bias, const Tensor& window,
                                          bool silu);
namespace cpu {
void causal_conv_kernel(const Tensor& y, const Tensor& x, const Tensor& w, const Tensor& bias,
                        const Tensor& window, bool silu);
void causal_conv_backward_kernel(const Tensor& dx, const Tensor& dw, const Tensor& dbias,
                                 const Tensor& dwindow, const Tensor& dy, const Tensor& x,
                                 const Tensor& w, const Tensor& bias, const Tensor& window,
                                 bool silu);
}  // namespace cpu
}  // namespace coil

namespace coil {
// Mamba-1 selective scan (ops/scan.h has the math). Every tensor is contiguous in one compute
// dtype (f32 or f64); optional ones are undefined. u, delta, z, y (batch, L, dim); A (dim, N);
// B, C (batch, L, groups, N); D, delta_bias (dim); states (batch, dim, N). checkpoints
// (batch, ceil(L / kSelectiveScanChunk), N, dim) holds the state before each chunk: the forward
// fills it when defined, the backward recomputes each chunk's states from it (never all L).
inline constexpr int64_t kSelectiveScanChunk = 64;
struct SelectiveScanInputs {
  Tensor u, delta, A, B, C, D, z, delta_bias, initial_state;
  bool delta_softplus = false;
};
// Gradients the backward writes, shaped like their inputs (B, C as 4-d); undefined ones are
// skipped. dfinal_state in the backward may be undefined (zeros).
struct SelectiveScanGrads {
  Tensor du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dinitial_state;
};
using SelectiveScanKernel = void (*)(const SelectiveScanInputs& in, const Tensor& y,
                                     const Tensor& final_state, const Tensor& checkpoints);
using SelectiveScanBackwardKernel = void (*)(const SelectiveScanInputs& in,
                                             const Tensor& checkpoints, const Tensor& dy,
                                             const Tensor& dfinal_state,
                                             const SelectiveScanGrads& grads);
namespace cpu {
void selective_scan_kernel(const SelectiveScanInputs& in, const Tensor& y,
                           const Tensor& final_state, const Tensor& checkpoints);
void selective_scan_backward_kernel(const SelectiveScanInputs& in, const Tensor& checkpoints,
                                    const Tensor& dy, const Tensor& dfinal_state,
                                    const SelectiveScanGrads& grads);
}  // namespace cpu
}  // namespace coil

namespace coil {
// Mamba-2 ssd_scan (ops/scan.h has the math). Every tensor is contiguous in one compute dtype
// (f32 or f64); optional ones are undefined. x, z (batch, L, heads, headdim); dt (batch, L, heads);
// A, D, dt_bias (heads); B, C (batch, L, groups, N); states (batch, heads, headdim, N).
// chunk_size is the spacing of the state checkpoints the backward keeps per thread, capped at 64
// steps for accuracy (results do not depend on it beyond rounding).
struct SsdScanInputs {
  Tensor x, dt, A, B, C, D, z, dt_bias, initial_state;
  bool dt_softplus = false;
  int64_t chunk_size = 256;
};
// Forward outputs: y (gated when z), y_pre (y before the gate, kept for the backward; may be
// undefined), final_state (may be undefined). With keep_states a kernel may also return states:
// the scan's state at chunk starts, in its own layout, for its backward (which recomputes them
// when they are undefined).
struct SsdScanForward {
  Tensor y, y_pre, final_state;
  bool keep_states = false;
  mutable Tensor states;  // allocated by the kernel (its layout is the kernel's own)
};
// Backward: dy and dfinal_state (undefined: zeros) in, y_pre needed when z is defined, states as
// the forward left them (may be undefined). Every gradient is shaped like its input and is
// written whole; undefined ones are skipped (dx, ddt, dA, dB, dC are always defined).
struct SsdScanBackward {
  Tensor y_pre, dy, dfinal_state, states;
  Tensor dx, ddt, dA, dB, dC, dD, dz, ddt_bias, dinitial_state;
};
// One kernel for both directions (exactly one of fwd, bwd is non-null), so a backend registers
// one function in the op's row.
using SsdScanKernel = void (*)(const SsdScanInputs& in, const SsdScanForward* fwd,
                               const SsdScanBackward* bwd);
namespace cpu {
void ssd_scan_kernel(const SsdScanInputs& in, const SsdScanForward* fwd,
                     const SsdScanBackward* bwd);
}  // namespace cpu
}  // namespace coil
