// ssd_scan (Mamba-2's scan, mamba_ssm's mamba_chunk_scan_combined): validation, dtype
// handling and the autograd node around one fused kernel (ops/cpu/ssd_scan.cpp) that does both
// directions. 16-bit inputs compute in f32; outputs come back in x's dtype.
#include "copy.h"
#include "op_helpers.h"
#include "scan.h"
#include "binary.h"
#include "shape.h"

namespace coil {

namespace {

constexpr const char* kOp = "ssd_scan";

void check_shape(const Tensor& t, const char* arg, const Shape& want, const char* dims) {
  COIL_CHECK(t.sizes() == want, kOp, ": ", arg, " must be ", dims, " = ", shape_str(want), ", got ",
             t.shape_str());
}

// Throws naming the argument for any inconsistent shape, dtype, device or chunk size.
void validate(const Tensor& x, const Tensor& dt, const Tensor& A, const Tensor& B, const Tensor& C,
              int64_t chunk_size, const SsdScanOptions& o) {
  const char* names[] = {"x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_state"};
  const Tensor* ts[] = {&x, &dt, &A, &B, &C, &o.D, &o.z, &o.dt_bias, &o.initial_state};
  for (int i = 0; i < 5; ++i) COIL_CHECK(ts[i]->defined(), kOp, ": ", names[i], " is undefined");
  TensorList present;
  for (int i = 0; i < 9; ++i) {
    if (!ts[i]->defined()) continue;
    COIL_CHECK(is_floating(ts[i]->dtype()), kOp, ": ", names[i], " must be a floating tensor, got ",
               ts[i]->dtype());
    present.push_back(*ts[i]);
  }
  check_same_device(kOp, present);
  COIL_CHECK(chunk_size > 0, kOp, ": chunk_size must be positive, got ", chunk_size);
  COIL_CHECK(x.dim() == 4, kOp, ": x must be (batch, L, heads, headdim), got ", x.shape_str());
  const int64_t batch = x.size(0), L = x.size(1), H = x.size(2), P = x.size(3);
  COIL_CHECK(B.dim() == 4, kOp, ": B must be (batch, L, groups, N), got ", B.shape_str());
  const int64_t G = B.size(2), N = B.size(3);
  check_shape(dt, "dt", {batch, L, H}, "(batch, L, heads)");
  check_shape(A, "A", {H}, "(heads)");
  check_shape(B, "B", {batch, L, G, N}, "(batch, L, groups, N)");
  check_shape(C, "C", {batch, L, G, N}, "(batch, L, groups, N) like B");
  COIL_CHECK(G >= 1 && H % G == 0, kOp, ": heads (", H, ") must be divisible by groups (", G,
             ") of B and C");
  if (o.D.defined()) check_shape(o.D, "D", {H}, "(heads)");
  if (o.dt_bias.defined()) check_shape(o.dt_bias, "dt_bias", {H}, "(heads)");
  if (o.z.defined()) check_shape(o.z, "z", x.sizes(), "(batch, L, heads, headdim) like x");
  if (o.initial_state.defined())
    check_shape(o.initial_state, "initial_state", {batch, H, P, N}, "(batch, heads, headdim, N)");
}

Tensor prepare(const Tensor& t, DType ct) {
  if (!t.defined()) return t;
  return contiguous(detail::as_compute(t.detach(), ct));
}

SsdScanInputs kernel_inputs(const TensorList& v, DType ct, bool softplus, int64_t chunk_size) {
  NoGradGuard g;
  SsdScanInputs in;
  in.x = prepare(v[0], ct);
  in.dt = prepare(v[1], ct);
  in.A = prepare(v[2], ct);
  in.B = prepare(v[3], ct);
  in.C = prepare(v[4], ct);
  in.D = prepare(v[5], ct);
  in.z = prepare(v[6], ct);
  in.dt_bias = prepare(v[7], ct);
  in.initial_state = prepare(v[8], ct);
  in.dt_softplus = softplus;
  in.chunk_size = chunk_size;
  return in;
}

Tensor alloc_like(const Tensor& t, DType ct) {
  return t.defined() ? empty(t.sizes(), Options(ct, t.device())) : Tensor();
}

}  // namespace

std::pair<Tensor, Tensor> ssd_scan(const Tensor& x, const Tensor& dt, const Tensor& A,
                                   const Tensor& B, const Tensor& C, int64_t chunk_size,
                                   const SsdScanOptions& o) {
  if (detail::AutocastScope ac; ac) {  // scans keep float32 under autocast
    SsdScanOptions f = o;
    for (Tensor* t : {&f.D, &f.z, &f.dt_bias, &f.initial_state}) *t = detail::autocast_f32(*t);
    return ssd_scan(detail::autocast_f32(x), detail::autocast_f32(dt), detail::autocast_f32(A),
                    detail::autocast_f32(B), detail::autocast_f32(C), chunk_size, f);
  }
  COIL_OP("ssd_scan");
  const TensorList inputs{x, dt, A, B, C, o.D, o.z, o.dt_bias, o.initial_state};
  if (any_distributed({&x, &dt, &A, &B, &C, &o.D, &o.z, &o.dt_bias, &o.initial_state})) {
    TensorList r = dist_dispatch(op_, inputs,
                                 {{"chunk_size", chunk_size},
                                  {"dt_softplus", o.dt_softplus},
                                  {"return_final_state", o.return_final_state}});
    return {r.at(0), r.size() > 1 ? r[1] : Tensor()};
  }
  validate(x, dt, A, B, C, chunk_size, o);
  const DType out_t = x.dtype(), ct = compute_dtype(out_t);
  const bool grad = needs_grad(inputs);
  SsdScanInputs in = kernel_inputs(inputs, ct, o.dt_softplus, chunk_size);

  SsdScanForward f;
  f.y = empty(x.sizes(), Options(ct, x.device()));
  if (grad && o.z.defined()) f.y_pre = empty(x.sizes(), Options(ct, x.device()));
  f.keep_states = grad;
  if (o.return_final_state)
    f.final_state = empty({x.size(0), x.size(2), x.size(3), B.size(3)}, Options(ct, x.device()));
  kernel_for<SsdScanKernel>(op_, x.device())(in, &f, nullptr);

  Tensor y = ct == out_t ? f.y : detail::cast(f.y, out_t);
  Tensor fin = f.final_state;
  if (fin.defined() && ct != out_t) fin = detail::cast(fin, out_t);
  TensorList outs{y};
  if (fin.defined()) outs.push_back(fin);

  if (grad) {
    std::vector<SavedTensor> saved;
    for (const Tensor& t : inputs) saved.emplace_back(t, kOp);
    Tensor y_pre = f.y_pre, states = f.states;
    const bool softplus = o.dt_softplus;
    record(kOp, inputs, outs,
           [saved, y_pre, states, softplus, chunk_size, ct](const TensorList& g) {
             TensorList v;
             for (const SavedTensor& s : saved) v.push_back(s.unpack());
             SsdScanInputs in = kernel_inputs(v, ct, softplus, chunk_size);
             SsdScanBackward b;
             {
               NoGradGuard ng;
               b.y_pre = y_pre;
               b.states = states;
               b.dy = prepare(g[0], ct);
               if (g.size() > 1) b.dfinal_state = prepare(g[1], ct);
             }
             b.dx = alloc_like(in.x, ct);
             b.ddt = alloc_like(in.dt, ct);
             b.dA = alloc_like(in.A, ct);
             b.dB = alloc_like(in.B, ct);
             b.dC = alloc_like(in.C, ct);
             b.dD = alloc_like(in.D, ct);
             b.dz = alloc_like(in.z, ct);
             b.ddt_bias = alloc_like(in.dt_bias, ct);
             b.dinitial_state = alloc_like(in.initial_state, ct);
             kernel_for<SsdScanKernel>(op_info(kOp), in.x.device())(in, nullptr, &b);
             return TensorList{b.dx,       b.ddt,           b.dA, b.dB, b.dC, b.dD, b.dz,
                               b.ddt_bias, b.dinitial_state};
           });
  }
  check_anomaly(kOp, inputs, outs);
  return {y, fin};
}

namespace {
void register_ssd_scan() {
  OpInfo& o = register_op("ssd_scan", "scan");
  o.set_kernel(kCPU, &cpu::ssd_scan_kernel);
  o.boxed = [](const TensorList& i, const Attrs& a) {
    auto at = [&](size_t k) { return i.size() > k ? i[k] : Tensor(); };
    SsdScanOptions opt;
    opt.D = at(5);
    opt.z = at(6);
    opt.dt_bias = at(7);
    opt.initial_state = at(8);
    opt.dt_softplus = attr_or(a, "dt_softplus", false);
    opt.return_final_state = attr_or(a, "return_final_state", false);
    auto [y, fin] =
        ssd_scan(i.at(0), i.at(1), i.at(2), i.at(3), i.at(4), attr<int64_t>(a, "chunk_size"), opt);
    return fin.defined() ? TensorList{y, fin} : TensorList{y};
  };
  o.gradcheck = [] {
    // batch 2, L 5, heads 2, headdim 3, groups 1, N 2, chunks of 2 (one partial)
    GradcheckCase c;
    c.inputs = {detail::gc_rand({2, 5, 2, 3}),    detail::gc_rand({2, 5, 2}),
                detail::gc_rand({2}, -1.0, -0.2), detail::gc_rand({2, 5, 1, 2}),
                detail::gc_rand({2, 5, 1, 2}),    detail::gc_rand({2}),
                detail::gc_rand({2, 5, 2, 3}),    detail::gc_rand({2}),
                detail::gc_rand({2, 2, 3, 2})};
    c.fn = [](const TensorList& v) {
      SsdScanOptions opt;
      opt.D = v[5];
      opt.z = v[6];
      opt.dt_bias = v[7];
      opt.initial_state = v[8];
      opt.dt_softplus = true;
      opt.return_final_state = true;
      auto [y, fin] = ssd_scan(v[0], v[1], v[2], v[3], v[4], 2, opt);
      return cat({y.flatten(), fin.flatten() * 2.0}, 0);
    };
    return c;
  };
}
OpRegistrar reg(register_ssd_scan);
}  // namespace

}  // namespace coil
