// The boundary between ops/cuda's host side (kernels.cpp, which reads coil::Tensor) and its
// device code (*.cu, compiled by nvcc without coil's headers): plain structs and launchers.
// Every launcher queues its kernel on the given stream and returns; errors at launch throw
// through check() on the host side.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "scan_args.h"

namespace coil::cuda {

constexpr int kMaxDims = 8;
constexpr int kMaxOperands = 4;

// Element types as the device code sees them (bool is one byte).
enum class Ty : int { f32, f64, i32, i64, b8, bf16, f16 };

// One elementwise loop over out's shape (operand 0). Strides in elements, 0 where an operand
// broadcasts; size-1 dims dropped and contiguous runs merged, so most loops have one or two dims.
struct ElemGeom {
  int ndim = 0;
  int64_t numel = 0;
  int64_t sizes[kMaxDims] = {};
  int64_t strides[kMaxOperands][kMaxDims] = {};
};

// op values are coil's UnaryOp / BinaryOp / ReduceOp enumerators.
void launch_unary(int op, Ty in_t, Ty out_t, const ElemGeom& g, void* out, const void* in,
                  double p0, double p1, cudaStream_t s);
void launch_binary(int op, Ty t, const ElemGeom& g, void* out, const void* a, const void* b,
                   double alpha, cudaStream_t s);
void launch_where(Ty t, const ElemGeom& g, void* out, const void* cond, const void* a,
                  const void* b, cudaStream_t s);
void launch_copy(Ty dst_t, Ty src_t, const ElemGeom& g, void* dst, const void* src, cudaStream_t s);
void launch_fill(Ty t, const ElemGeom& g, void* out, double value, cudaStream_t s);
// in [outer, r] contiguous -> out [outer] (idx [outer] int64 for arg ops, or max/min when set).
// scratch: reduce_scratch_bytes(op, outer, r) bytes of device memory (sums of a few long rows
// run in two passes through it), or null when that is 0.
int64_t reduce_scratch_bytes(int op, int64_t outer, int64_t r);
void launch_reduce(int op, Ty t, void* out, int64_t* idx, const void* in, int64_t outer, int64_t r,
                   void* scratch, cudaStream_t s);
// in, out [outer, n, inner] contiguous; softmax (log_softmax when log) along n.
void launch_softmax(Ty t, void* out, const void* in, int64_t outer, int64_t n, int64_t inner,
                    bool log, cudaStream_t s);

// ---- indexing: the geometry of ops/cpu/kernels.h's IndexGeom, [outer, n, inner] indexed,
// [outer, m, inner] index-shaped. bad[0] (device int64, zero on entry) becomes 1 and bad[1] the
// value when an index is outside [0, n); the host reads it after the kernel and throws.
struct IndexDims {
  int64_t outer, n, m, inner;
};
// out [outer, m, inner] = x rows at index (1-d, m entries); rows of elem_bytes-wide elements.
void launch_index_select(const IndexDims& d, int elem_bytes, void* out, const void* x,
                         const int64_t* index, int64_t* bad, cudaStream_t s);
// out [outer, n, inner] += alpha * src [outer, m, inner] at rows index (1-d): atomics, so
// duplicate indices sum in an unspecified order.
void launch_index_add(Ty t, const IndexDims& d, void* out, const void* src, const int64_t* index,
                      double alpha, int64_t* bad, cudaStream_t s);
// gather: out [outer, m, inner] = x [outer, n, inner] at index [outer, m, inner] along n
void launch_gather(const IndexDims& d, int elem_bytes, void* out, const void* x,
                   const int64_t* index, int64_t* bad, cudaStream_t s);
// scatter_add: out [outer, n, inner] += src [outer, m, inner] at index [outer, m, inner]
void launch_scatter_add(Ty t, const IndexDims& d, void* out, const void* src, const int64_t* index,
                        int64_t* bad, cudaStream_t s);
// out (count, classes) int64 one-hot of ids (count)
void launch_one_hot(int64_t* out, const int64_t* ids, int64_t count, int64_t classes, int64_t* bad,
                    cudaStream_t s);

// cumsum / cumprod / cumprod_grad (coil's ScanOp) along n of [outer, n, inner], contiguous.
void launch_cumulative(int op, Ty t, void* out, const void* in, const void* aux, int64_t outer,
                       int64_t n, int64_t inner, bool reverse, cudaStream_t s);

// The Philox draws of ops/cpu/random.cpp, element for element (coil's RandomKind).
void launch_random(int kind, Ty t, void* out, int64_t n, double a, double b, uint64_t seed,
                   uint64_t offset, uint64_t first, cudaStream_t s);
void launch_dropout(Ty t, void* out, uint8_t* mask, const void* in, int64_t n, double p,
                    double scale, uint64_t seed, uint64_t offset, uint64_t first, cudaStream_t s);

// Sorts each row of in [outer, n] (stable, NaN largest) and writes the first k of the order:
// values (in's type) and int64 indices [outer, k]. Rank by counting, one thread per element.
void launch_sort(Ty t, void* values, int64_t* indices, const void* in, int64_t outer, int64_t n,
                 int64_t k, bool descending, cudaStream_t s);

// ---- diagonal state-space scans (scan_args.h has their arguments and the math)
// Forward: y, y_pre (may be null), final (may be null), checkpoints (may be null): the state
// before every kScanChunk-th step, (batch, dim, ceil(L / kScanChunk), N).
void launch_scan_forward(bool f64, const ScanArgs& a, void* y, void* y_pre, void* final_state,
                         void* checkpoints, cudaStream_t s);
// Backward from the forward's checkpoints. Outputs summed with atomics (dB, dC, dA, dD, dbias,
// and ddelta when pdiv > 1) must be zero on entry; du, dz, dinit are written whole.
void launch_scan_backward(bool f64, const ScanArgs& a, const void* checkpoints, const ScanGrads& g,
                          cudaStream_t s);

// Fast selective_scan (selective_scan.cuh, scan_args.h's selective_scan_fast_fits).
// Forward: y, final_state (may be null), checkpoints (may be null).
void launch_selective_scan_fast_forward(const ScanArgs& a, void* y, void* final_state,
                                        void* checkpoints, cudaStream_t s);
// Backward from the fast forward's checkpoints; ScanGrads as above (dB, dC, dA, dD, dbias zero on
// entry; du and ddelta written whole; dz, dinit when not null).
void launch_selective_scan_fast_backward(const ScanArgs& a, const void* checkpoints,
                                         const ScanGrads& g, cudaStream_t s);

// ---- ssd_scan in chunked matrix form (ssd_chunked.cuh), f32, any N and headdim: a ScanArgs of
// ssd_scan (pdiv = headdim, a_per_state false). Scratch in floats: step_floats for each of dd and
// lc, state_floats for states (the state entering every 64-step chunk, which the forward leaves
// for the backward) and for the backward's gbuf; gy: batch * L * dim floats when z.
int64_t ssd_chunked_step_floats(const ScanArgs& a);
int64_t ssd_chunked_state_floats(const ScanArgs& a);
// Forward: states always; y (skipped when null), y_pre and final_state may be null.
void launch_ssd_chunked_forward(const ScanArgs& a, float* dd, float* lc, float* states, void* y,
                                void* y_pre, void* final_state, cudaStream_t s);
// Backward from the forward's states; ScanGrads as launch_scan_backward's with y_pre (needed when
// z): dB, dC, dA, dD, dbias zero on entry; du, ddelta, dz, dinit written whole.
void launch_ssd_chunked_backward(const ScanArgs& a, const float* states, const void* y_pre,
                                 const ScanGrads& g, float* dd, float* lc, float* gbuf, float* gy,
                                 cudaStream_t s);

// ---- depthwise causal conv, channel-last: x, y, dy, dx (B, L, C); w (C, K); window (B, K-1, C)
void launch_conv_forward(bool f64, int64_t B, int64_t L, int64_t C, int64_t K, void* y,
                         const void* x, const void* w, const void* bias, const void* window,
                         bool silu, cudaStream_t s);
// ds (B, L, C) scratch; dw, dbias written whole (may be null), dwindow (may be null);
// dw_parts: conv_dw_parts_bytes(B, L, C, K) bytes of device scratch (or null when that is 0)
int64_t conv_dw_parts_bytes(int64_t B, int64_t L, int64_t C, int64_t K);
void launch_conv_backward(bool f64, int64_t B, int64_t L, int64_t C, int64_t K, void* dx, void* dw,
                          void* dbias, void* dwindow, void* ds, const void* dy, const void* x,
                          const void* w, const void* bias, const void* window, bool silu,
                          void* dw_parts, cudaStream_t s);

}  // namespace coil::cuda
