// Host side of the CUDA scan and conv kernels (device code in scan.cu): selective_scan and
// ssd_scan map onto one diagonal recurrence (launch.h's ScanArgs), causal_conv1d onto its own
// kernels. Same signatures and results as ops/cpu/selective_scan.cpp, ssd_scan.cpp and
// causal_conv.cpp.
#include <algorithm>
#include <climits>

#include "host.h"

namespace coil::cuda {
namespace {

const void* ptr(const Tensor& t) { return t.defined() ? t.raw_data() : nullptr; }
void* mut(const Tensor& t) { return t.defined() ? t.raw_data() : nullptr; }

// A gradient the kernel writes: the caller's tensor, or scratch when the caller skips it;
// zeroed when the kernel adds into it.
Tensor grad_out(const Tensor& given, const Tensor& like, bool zeroed) {
  Tensor t = given.defined() ? given : empty(like.sizes(), Options(like.dtype(), like.device()));
  if (zeroed) fill(t, 0);
  return t;
}

int64_t scan_chunks(int64_t L) { return (L + kScanChunk - 1) / kScanChunk; }

ScanArgs selective_args(const SelectiveScanInputs& in) {
  ScanArgs a;
  a.batch = in.u.size(0);
  a.L = in.u.size(1);
  a.dim = in.u.size(2);
  a.N = in.A.size(1);
  a.G = in.B.size(2);
  a.pdiv = 1;
  a.a_per_state = true;
  a.softplus = in.delta_softplus;
  a.u = ptr(in.u);
  a.delta = ptr(in.delta);
  a.A = ptr(in.A);
  a.B = ptr(in.B);
  a.C = ptr(in.C);
  a.D = ptr(in.D);
  a.z = ptr(in.z);
  a.bias = ptr(in.delta_bias);
  a.init = ptr(in.initial_state);
  return a;
}

ScanArgs ssd_args(const SsdScanInputs& in) {
  ScanArgs a;
  a.batch = in.x.size(0);
  a.L = in.x.size(1);
  a.pdiv = in.x.size(3);
  a.dim = in.x.size(2) * a.pdiv;
  a.N = in.B.size(3);
  a.G = in.B.size(2);
  a.a_per_state = false;
  a.softplus = in.dt_softplus;
  a.u = ptr(in.x);
  a.delta = ptr(in.dt);
  a.A = ptr(in.A);
  a.B = ptr(in.B);
  a.C = ptr(in.C);
  a.D = ptr(in.D);
  a.z = ptr(in.z);
  a.bias = ptr(in.dt_bias);
  a.init = ptr(in.initial_state);
  return a;
}

void check_n(int64_t N, const char* op) {
  COIL_CHECK(N <= 256, op, " (cuda): state size N = ", N, " above the kernel's 256");
}

// Both layouts, (batch, dim, chunk, N) for the plain kernels and (batch, chunk, N, dim) for the
// fast ones, have this size (kScanChunk == kSelectiveFastCkpt).
Tensor checkpoint_scratch(const ScanArgs& a, const Tensor& like) {
  return empty({a.batch, a.dim, scan_chunks(a.L), a.N}, Options(like.dtype(), like.device()));
}
static_assert(kScanChunk == kSelectiveFastCkpt && kScanChunk == kSelectiveScanChunk,
              "the op allocates the checkpoints with the CPU's chunk");

void selective_scan_kernel(const SelectiveScanInputs& in, const Tensor& y,
                           const Tensor& final_state, const Tensor& checkpoints) {
  check_on_gpu("selective_scan", {&in.u, &y});
  check_n(in.A.size(1), "selective_scan");
  DeviceGuard dg(y.device());
  const ScanArgs a = selective_args(in);
  const bool f64 = y.dtype() == kF64;
  // checkpoints: the CPU's (batch, chunk, N, dim) has the size of either kernel's own layout
  if (selective_scan_fast_fits(f64, a))
    launch_selective_scan_fast_forward(a, y.raw_data(), mut(final_state), mut(checkpoints),
                                       stream());
  else
    launch_scan_forward(f64, a, y.raw_data(), nullptr, mut(final_state), mut(checkpoints),
                        stream());
  after_launch("selective_scan kernel");
}

void selective_scan_backward_kernel(const SelectiveScanInputs& in, const Tensor& checkpoints,
                                    const Tensor& dy, const Tensor& dfinal_state,
                                    const SelectiveScanGrads& g) {
  check_on_gpu("selective_scan_backward", {&in.u, &dy});
  check_n(in.A.size(1), "selective_scan");
  DeviceGuard dg(dy.device());
  const ScanArgs a = selective_args(in);
  const bool f64 = dy.dtype() == kF64;
  const bool fast = selective_scan_fast_fits(f64, a);
  Tensor ck = checkpoints;
  if (!ck.defined()) {  // no forward kept them: run it again for them
    ck = checkpoint_scratch(a, dy);
    Tensor y = empty(dy.sizes(), Options(dy.dtype(), dy.device()));
    if (fast)
      launch_selective_scan_fast_forward(a, y.raw_data(), nullptr, ck.raw_data(), stream());
    else
      launch_scan_forward(f64, a, y.raw_data(), nullptr, nullptr, ck.raw_data(), stream());
  }
  Tensor du = grad_out(g.du, in.u, false), ddelta = grad_out(g.ddelta, in.delta, false);
  Tensor dB = grad_out(g.dB, in.B, true), dC = grad_out(g.dC, in.C, true);
  Tensor dA = grad_out(g.dA, in.A, true);
  ScanGrads sg;
  sg.dy = dy.raw_data();
  sg.dfinal = ptr(dfinal_state);
  sg.du = du.raw_data();
  sg.ddelta = ddelta.raw_data();
  sg.dA = dA.raw_data();
  sg.dB = dB.raw_data();
  sg.dC = dC.raw_data();
  if (g.dD.defined()) sg.dD = grad_out(g.dD, in.D, true).raw_data();
  if (g.ddelta_bias.defined()) sg.dbias = grad_out(g.ddelta_bias, in.delta_bias, true).raw_data();
  sg.dz = mut(g.dz);
  sg.dinit = mut(g.dinitial_state);
  if (fast)
    launch_selective_scan_fast_backward(a, ck.raw_data(), sg, stream());
  else
    launch_scan_backward(f64, a, ck.raw_data(), sg, stream());
  after_launch("selective_scan backward kernel");
}

// f32 scratch of n floats on like's device
Tensor floats(int64_t n, const Tensor& like) {
  return empty({std::max<int64_t>(n, 1)}, Options(kF32, like.device()));
}

// ssd_scan in f32 takes the chunked kernels (products of small matrices per 64-step chunk); f64,
// and sizes past their grid, the plain recurrence.
bool ssd_chunked_fits(const ScanArgs& a, bool f64) {
  const int64_t sites = a.batch * ((a.L + 63) / 64) * (a.dim / std::max<int64_t>(a.pdiv, 1));
  return !f64 && sites > 0 && sites <= INT32_MAX && a.pdiv > 0 && a.N > 0;
}

void ssd_scan_chunked(const SsdScanInputs& in, const ScanArgs& a, const SsdScanForward* fwd,
                      const SsdScanBackward* bwd) {
  const int64_t steps = ssd_chunked_step_floats(a), state_n = ssd_chunked_state_floats(a);
  Tensor dd = floats(steps, in.x), lc = floats(steps, in.x);
  if (fwd) {
    Tensor states = floats(state_n, in.x);
    launch_ssd_chunked_forward(a, dd.data_ptr<float>(), lc.data_ptr<float>(),
                               states.data_ptr<float>(), fwd->y.raw_data(), mut(fwd->y_pre),
                               mut(fwd->final_state), stream());
    after_launch("ssd_scan kernel");
    if (fwd->keep_states) fwd->states = states;
    return;
  }
  Tensor states = bwd->states;
  if (!states.defined() || states.numel() != state_n || states.dtype() != kF32 ||
      states.device() != in.x.device()) {  // no forward kept them: run it again for them
    states = floats(state_n, in.x);
    launch_ssd_chunked_forward(a, dd.data_ptr<float>(), lc.data_ptr<float>(),
                               states.data_ptr<float>(), nullptr, nullptr, nullptr, stream());
  }
  ScanGrads sg;
  sg.dy = bwd->dy.raw_data();
  sg.dfinal = ptr(bwd->dfinal_state);
  sg.du = bwd->dx.raw_data();
  sg.ddelta = bwd->ddt.raw_data();
  for (const Tensor* t : {&bwd->dA, &bwd->dB, &bwd->dC, &bwd->dD, &bwd->ddt_bias})
    if (t->defined()) fill(*t, 0);
  sg.dA = bwd->dA.raw_data();
  sg.dB = bwd->dB.raw_data();
  sg.dC = bwd->dC.raw_data();
  sg.dD = mut(bwd->dD);
  sg.dbias = mut(bwd->ddt_bias);
  sg.dz = mut(bwd->dz);
  sg.dinit = mut(bwd->dinitial_state);
  Tensor gbuf = floats(state_n, in.x);
  Tensor gy = in.z.defined() ? floats(in.x.numel(), in.x) : Tensor();
  launch_ssd_chunked_backward(a, states.data_ptr<float>(), ptr(bwd->y_pre), sg,
                              dd.data_ptr<float>(), lc.data_ptr<float>(), gbuf.data_ptr<float>(),
                              gy.defined() ? gy.data_ptr<float>() : nullptr, stream());
  after_launch("ssd_scan backward kernel");
}

void ssd_scan_kernel(const SsdScanInputs& in, const SsdScanForward* fwd,
                     const SsdScanBackward* bwd) {
  check_on_gpu("ssd_scan", {&in.x, &in.dt});
  DeviceGuard dg(in.x.device());
  const ScanArgs a = ssd_args(in);
  const bool f64 = in.x.dtype() == kF64;
  if (ssd_chunked_fits(a, f64)) return ssd_scan_chunked(in, a, fwd, bwd);
  check_n(in.B.size(3), "ssd_scan");
  if (fwd) {
    launch_scan_forward(f64, a, fwd->y.raw_data(), mut(fwd->y_pre), mut(fwd->final_state), nullptr,
                        stream());
    after_launch("ssd_scan kernel");
    return;
  }
  Tensor ck = checkpoint_scratch(a, in.x);
  {
    Tensor y = empty(in.x.sizes(), Options(in.x.dtype(), in.x.device()));
    launch_scan_forward(f64, a, y.raw_data(), nullptr, nullptr, ck.raw_data(), stream());
  }
  ScanGrads sg;
  sg.dy = bwd->dy.raw_data();
  sg.dfinal = ptr(bwd->dfinal_state);
  sg.du = bwd->dx.raw_data();
  fill(bwd->ddt, 0);  // heads sum over their channels
  sg.ddelta = bwd->ddt.raw_data();
  fill(bwd->dA, 0);
  sg.dA = bwd->dA.raw_data();
  fill(bwd->dB, 0);
  sg.dB = bwd->dB.raw_data();
  fill(bwd->dC, 0);
  sg.dC = bwd->dC.raw_data();
  if (bwd->dD.defined()) {
    fill(bwd->dD, 0);
    sg.dD = bwd->dD.raw_data();
  }
  if (bwd->ddt_bias.defined()) {
    fill(bwd->ddt_bias, 0);
    sg.dbias = bwd->ddt_bias.raw_data();
  }
  sg.dz = mut(bwd->dz);
  sg.dinit = mut(bwd->dinitial_state);
  launch_scan_backward(f64, a, ck.raw_data(), sg, stream());
  after_launch("ssd_scan backward kernel");
}

void causal_conv_kernel(const Tensor& y, const Tensor& x, const Tensor& w, const Tensor& bias,
                        const Tensor& window, bool silu) {
  check_on_gpu("causal_conv1d", {&y, &x, &w, &bias, &window});
  DeviceGuard dg(y.device());
  launch_conv_forward(x.dtype() == kF64, x.size(0), x.size(1), x.size(2), w.size(1), y.raw_data(),
                      x.raw_data(), w.raw_data(), ptr(bias), ptr(window), silu, stream());
  after_launch("causal_conv1d kernel");
}

void causal_conv_backward_kernel(const Tensor& dx, const Tensor& dw, const Tensor& dbias,
                                 const Tensor& dwindow, const Tensor& dy, const Tensor& x,
                                 const Tensor& w, const Tensor& bias, const Tensor& window,
                                 bool silu) {
  check_on_gpu("causal_conv1d_backward", {&dx, &dy, &x, &w});
  DeviceGuard dg(dx.device());
  Tensor ds = empty(dy.sizes(), Options(dy.dtype(), dy.device()));
  const int64_t pb = conv_dw_parts_bytes(x.size(0), x.size(1), x.size(2), w.size(1));
  Tensor parts = pb > 0 ? empty({pb / 8}, Options(kF64, dx.device())) : Tensor();
  launch_conv_backward(x.dtype() == kF64, x.size(0), x.size(1), x.size(2), w.size(1), dx.raw_data(),
                       mut(dw), mut(dbias), mut(dwindow), ds.raw_data(), dy.raw_data(),
                       x.raw_data(), w.raw_data(), ptr(bias), ptr(window), silu,
                       parts.defined() ? parts.raw_data() : nullptr, stream());
  after_launch("causal_conv1d backward kernel");
}

void register_kernels() {
  set_cuda({"selective_scan"}, &selective_scan_kernel);
  set_cuda({"selective_scan_backward"}, &selective_scan_backward_kernel);
  set_cuda({"ssd_scan"}, &ssd_scan_kernel);
  set_cuda({"causal_conv1d"}, &causal_conv_kernel);
  set_cuda({"causal_conv1d_backward"}, &causal_conv_backward_kernel);
}
const OpRegistrar g_registrar(&register_kernels);

}  // namespace
}  // namespace coil::cuda
