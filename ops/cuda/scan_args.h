// The arguments of the CUDA scans, as plain structs without CUDA's headers (so that the kernel
// source also compiles for the CPU emulation of tests/cuda/cuda_emu.h).
#pragma once
#include <cstdint>

namespace coil::cuda {

// ---- diagonal state-space scans: Mamba-1's selective_scan and Mamba-2's ssd_scan are one
// recurrence over channels c of (batch, L, dim) with states (batch, dim, N):
//   h_t[n] = exp(d_t a[n]) h_{t-1}[n] + d_t B_t[n] u_t,   y_t = sum_n C_t[n] h_t[n] + D u_t,
//   y *= silu(z);  d_t = softplus(delta + bias) when softplus.
// Per-channel parameters are shared by `pdiv` consecutive channels (1 for Mamba-1; headdim for
// Mamba-2, whose delta, A, D, bias are per head): entry e = c / pdiv. A is (entries, N) when
// a_per_state, else (entries). B, C (batch, L, groups, N); channel c reads group c / (dim / G).
struct ScanArgs {
  int64_t batch = 0, L = 0, dim = 0, N = 0, G = 1, pdiv = 1;
  bool a_per_state = true, softplus = false;
  const void *u = nullptr, *delta = nullptr, *A = nullptr, *B = nullptr, *C = nullptr;
  const void *D = nullptr, *z = nullptr, *bias = nullptr, *init = nullptr;
};
// The plain kernels' checkpoints: the state before every kScanChunk-th step.
constexpr int64_t kScanChunk = 64;
// Gradients of a scan's backward (launch.h's launchers say which are summed into).
struct ScanGrads {
  const void *dy = nullptr, *dfinal = nullptr;
  void *du = nullptr, *ddelta = nullptr, *dA = nullptr, *dB = nullptr, *dC = nullptr;
  void *dD = nullptr, *dz = nullptr, *dbias = nullptr, *dinit = nullptr;
};

// Fast selective_scan (selective_scan.cuh): f32, blocks of 32 channels inside one group, N <= 32.
// Its checkpoints are (batch, ceil(L / kSelectiveFastCkpt), N, dim), the state before every
// kSelectiveFastCkpt-th step: the size the op allocates for the CPU's. Forward and backward must
// agree on the path, so both ask this one function.
constexpr int64_t kSelectiveFastCkpt = 64;
inline bool selective_scan_fast_fits(bool f64, const ScanArgs& a) {
  return !f64 && a.pdiv == 1 && a.a_per_state && a.L >= 1 && a.batch >= 1 && a.batch <= 65535 &&
         a.dim % 32 == 0 && a.G >= 1 && (a.dim / a.G) % 32 == 0 && a.N >= 1 && a.N <= 32;
}

}  // namespace coil::cuda
