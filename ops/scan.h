// Scans: the generic associative scan, and the fused SSM kernels of Mamba-1 (selective_scan),
// Mamba-2 (ssd_scan) and their causal depthwise conv. Layouts are token-major, like a Linear's
// output: (batch, L, channels). bf16/f16 inputs compute in f32.
#pragma once
#include <functional>
#include <utility>

#include "../core/tensor.h"

namespace coil {

// ---- associative_scan ----
// combine(a, b) -> a∘b over tuples of same-shaped tensors, associative, written with coil ops.
using ScanCombine = std::function<TensorList(const TensorList& a, const TensorList& b)>;
// Inclusive scan of the tuple xs along dim (reverse: from the end). Built by the log-depth
// odd/even recursion out of ordinary ops, so it is differentiable and runs on any device.
TensorList associative_scan(const ScanCombine& combine, const TensorList& xs, int64_t dim,
                            bool reverse = false);

// ---- selective_scan (Mamba-1, mamba_ssm's selective_scan_fn) ----
// u, delta, z: (batch, L, dim); A: (dim, N); B, C: (batch, L, N) or (batch, L, groups, N)
// (channel c uses group c / (dim / groups)); D, delta_bias: (dim);
// initial_state / final_state: (batch, dim, N).
//   d_t = softplus(delta_t + delta_bias) (if delta_softplus, threshold 20)
//   h_t = exp(d_t A) h_{t-1} + d_t B_t u_t;  y_t = C_t h_t + D u_t;  y_t *= silu(z_t) if z
struct SelectiveScanOptions {
  Tensor D, z, delta_bias, initial_state;
  bool delta_softplus = false;
  bool return_final_state = false;
};
// Returns (y, final_state); final_state is undefined unless return_final_state.
std::pair<Tensor, Tensor> selective_scan(const Tensor& u, const Tensor& delta, const Tensor& A,
                                         const Tensor& B, const Tensor& C,
                                         const SelectiveScanOptions& o = {});

// ---- ssd_scan (Mamba-2, mamba_ssm's mamba_chunk_scan_combined) ----
// x: (batch, L, heads, headdim); dt: (batch, L, heads); A: (heads); B, C: (batch, L, groups, N)
// (head h uses group h / (heads / groups)); D, dt_bias: (heads); z: like x;
// initial_state / final_state: (batch, heads, headdim, N).
//   d_t = softplus(dt_t + dt_bias) (if dt_softplus);  h_t = exp(d_t A_h) h_{t-1} + d_t x_t B_t^T
//   y_t = h_t C_t + D_h x_t;  y_t *= silu(z_t) if z
// chunk_size picks the chunking of the computation only; results do not depend on it (the CPU
// kernels use their own: 64 steps). When it records gradients, the CPU forward keeps the state
// every 64 steps for the backward: (L / 64) x heads x headdim x N values per sequence.
struct SsdScanOptions {
  Tensor D, z, dt_bias, initial_state;
  bool dt_softplus = false;
  bool return_final_state = false;
};
std::pair<Tensor, Tensor> ssd_scan(const Tensor& x, const Tensor& dt, const Tensor& A,
                                   const Tensor& B, const Tensor& C, int64_t chunk_size,
                                   const SsdScanOptions& o = {});

// ---- causal_conv1d (Mamba's depthwise causal conv) ----
// x: (batch, L, channels); weight: (channels, K); bias: (channels).
// y_t[c] = bias[c] + sum_k weight[c, k] * x_{t+k-K+1}[c], inputs before t = 0 taken from
// initial_window (batch, K-1, channels) or zeros; then silu if activation_silu.
// The final window is the last K-1 inputs (the decoding cache and the context-parallel halo).
struct CausalConv1dOptions {
  Tensor bias, initial_window;
  bool activation_silu = true;
  bool return_final_window = false;
};
std::pair<Tensor, Tensor> causal_conv1d(const Tensor& x, const Tensor& weight,
                                        const CausalConv1dOptions& o = {});

}  // namespace coil
