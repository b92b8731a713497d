// selective_scan, Mamba-1's fused scan: validation, dtypes and autograd. The kernels (forward and
// a fused backward that recomputes states from per-chunk checkpoints) are in
// ops/cpu/selective_scan.cpp.
#include <array>

#include "copy.h"
#include "op_helpers.h"
#include "scan.h"
#include "shape.h"
#include "view.h"

namespace coil {

namespace {

void check_inputs(const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& B,
                  const Tensor& C, const SelectiveScanOptions& o) {
  COIL_CHECK(u.defined() && delta.defined() && A.defined() && B.defined() && C.defined(),
             "selective_scan: u, delta, A, B and C are required");
  COIL_CHECK(u.dim() == 3, "selective_scan: u must be [batch, L, dim], got ", u.shape_str());
  const int64_t batch = u.sizes()[0], L = u.sizes()[1], dim = u.sizes()[2];
  COIL_CHECK(delta.sizes() == u.sizes(), "selective_scan: delta must have u's shape ",
             u.shape_str(), ", got ", delta.shape_str());
  COIL_CHECK(A.dim() == 2 && A.sizes()[0] == dim, "selective_scan: A must be [dim, N] with dim ",
             dim, " as in u ", u.shape_str(), ", got ", A.shape_str());
  const int64_t N = A.sizes()[1];
  COIL_CHECK(B.dim() == 3 || B.dim() == 4,
             "selective_scan: B must be [batch, L, N] or [batch, L, groups, N], got ",
             B.shape_str());
  const int64_t G = B.dim() == 4 ? B.sizes()[2] : 1;
  const Shape want = B.dim() == 4 ? Shape{batch, L, G, N} : Shape{batch, L, N};
  COIL_CHECK(B.sizes() == want, "selective_scan: B must be ", shape_str(want),
             B.dim() == 4 ? " = [batch, L, groups, N]" : " = [batch, L, N]", " to match u ",
             u.shape_str(), " and A ", A.shape_str(), ", got ", B.shape_str());
  COIL_CHECK(C.sizes() == B.sizes(), "selective_scan: C must have B's shape ", B.shape_str(),
             ", got ", C.shape_str());
  COIL_CHECK(G >= 1 && dim % G == 0, "selective_scan: B's groups ", G, " must divide dim ", dim);
  if (o.D.defined())
    COIL_CHECK(o.D.sizes() == Shape{dim}, "selective_scan: D must be [", dim, "], got ",
               o.D.shape_str());
  if (o.delta_bias.defined())
    COIL_CHECK(o.delta_bias.sizes() == Shape{dim}, "selective_scan: delta_bias must be [", dim,
               "], got ", o.delta_bias.shape_str());
  if (o.z.defined())
    COIL_CHECK(o.z.sizes() == u.sizes(), "selective_scan: z must have u's shape ", u.shape_str(),
               ", got ", o.z.shape_str());
  if (o.initial_state.defined())
    COIL_CHECK(o.initial_state.sizes() == (Shape{batch, dim, N}),
               "selective_scan: initial_state must be [batch, dim, N] = ",
               shape_str({batch, dim, N}), ", got ", o.initial_state.shape_str());

  COIL_CHECK(is_floating(u.dtype()), "selective_scan: u must be floating point, got ", u.dtype());
  const std::array<std::pair<const char*, const Tensor*>, 4> like_u{
      {{"delta", &delta}, {"B", &B}, {"C", &C}, {"z", &o.z}}};
  for (const auto& [name, t] : like_u)
    if (t->defined())
      COIL_CHECK(t->dtype() == u.dtype(), "selective_scan: ", name, " has dtype ", t->dtype(),
                 " but u has ", u.dtype());
  COIL_CHECK(A.dtype() == kF32 || A.dtype() == kF64,
             "selective_scan: A must be float32 or float64, got ", A.dtype());
  const std::array<std::pair<const char*, const Tensor*>, 3> floating{
      {{"D", &o.D}, {"delta_bias", &o.delta_bias}, {"initial_state", &o.initial_state}}};
  for (const auto& [name, t] : floating)
    if (t->defined())
      COIL_CHECK(is_floating(t->dtype()), "selective_scan: ", name, " must be floating point, got ",
                 t->dtype());
  check_same_device("selective_scan", {u, delta, A, B, C, o.D, o.z, o.delta_bias, o.initial_state});
}

}  // namespace

std::pair<Tensor, Tensor> selective_scan(const Tensor& u, const Tensor& delta, const Tensor& A,
                                         const Tensor& B, const Tensor& C,
                                         const SelectiveScanOptions& o) {
  if (detail::AutocastScope ac; ac) {  // scans keep float32 under autocast
    SelectiveScanOptions f = o;
    for (Tensor* t : {&f.D, &f.z, &f.delta_bias, &f.initial_state}) *t = detail::autocast_f32(*t);
    return selective_scan(detail::autocast_f32(u), detail::autocast_f32(delta),
                          detail::autocast_f32(A), detail::autocast_f32(B), detail::autocast_f32(C),
                          f);
  }
  COIL_OP("selective_scan");
  const Tensor &D = o.D, &z = o.z, &bias = o.delta_bias, &h0 = o.initial_state;
  const TensorList inputs{u, delta, A, B, C, D, z, bias, h0};
  if (any_distributed({&u, &delta, &A, &B, &C, &D, &z, &bias, &h0})) {
    TensorList r = dist_dispatch(
        op_, inputs,
        {{"delta_softplus", o.delta_softplus}, {"return_final_state", o.return_final_state}});
    return {r[0], r.size() > 1 ? r[1] : Tensor()};
  }
  check_inputs(u, delta, A, B, C, o);
  const int64_t batch = u.sizes()[0], L = u.sizes()[1], dim = u.sizes()[2], N = A.sizes()[1];
  const int64_t G = B.dim() == 4 ? B.sizes()[2] : 1;
  const Device dev = u.device();
  // 16-bit inputs compute in f32; f64 anywhere in u or A computes in f64.
  const DType ct = u.dtype() == kF64 || A.dtype() == kF64 ? kF64 : kF32;

  SelectiveScanInputs in;
  {
    NoGradGuard g;
    auto prep = [&](const Tensor& t) {
      return t.defined() ? contiguous(detail::as_compute(detach(t), ct)) : t;
    };
    in.u = prep(u);
    in.delta = prep(delta);
    in.A = prep(A);
    in.B = prep(B).view({batch, L, G, N});
    in.C = prep(C).view({batch, L, G, N});
    in.D = prep(D);
    in.z = prep(z);
    in.delta_bias = prep(bias);
    in.initial_state = prep(h0);
  }
  in.delta_softplus = o.delta_softplus;

  const bool grad = needs_grad(inputs);
  const int64_t nchunk = (L + kSelectiveScanChunk - 1) / kSelectiveScanChunk;
  Tensor y = empty({batch, L, dim}, Options(ct, dev));
  Tensor final_state = o.return_final_state ? empty({batch, dim, N}, Options(ct, dev)) : Tensor();
  Tensor ckpt = grad ? empty({batch, nchunk, N, dim}, Options(ct, dev)) : Tensor();
  kernel_for<SelectiveScanKernel>(op_, dev)(in, y, final_state, ckpt);
  if (ct != u.dtype()) {
    y = detail::cast(y, u.dtype());
    if (final_state.defined()) final_state = detail::cast(final_state, u.dtype());
  }

  if (grad) {
    std::array<bool, 9> need{};
    for (size_t i = 0; i < need.size(); ++i)
      need[i] = inputs[i].defined() && inputs[i].requires_grad();
    std::array<Shape, 9> shapes;
    std::array<DType, 9> types{};
    for (size_t i = 0; i < inputs.size(); ++i)
      if (inputs[i].defined()) {
        shapes[i] = inputs[i].sizes();
        types[i] = inputs[i].dtype();
      }
    // The kernel inputs are saved (aliases of the inputs when no conversion was needed), so an
    // in-place change of an input before backward is caught.
    std::array<SavedTensor, 8> saved{
        SavedTensor(in.u, "selective_scan"), SavedTensor(in.delta, "selective_scan"),
        SavedTensor(in.A, "selective_scan"), SavedTensor(in.B, "selective_scan"),
        SavedTensor(in.C, "selective_scan"), SavedTensor(in.D, "selective_scan"),
        SavedTensor(in.z, "selective_scan"), SavedTensor(in.delta_bias, "selective_scan")};
    const bool softplus = o.delta_softplus, has_final = o.return_final_state;
    TensorList outputs{y};
    if (has_final) outputs.push_back(final_state);
    record("selective_scan", inputs, outputs,
           [saved, ckpt, need, shapes, types, softplus, has_final, ct, dev](const TensorList& g) {
             SelectiveScanInputs si;
             si.u = saved[0].unpack();
             si.delta = saved[1].unpack();
             si.A = saved[2].unpack();
             si.B = saved[3].unpack();
             si.C = saved[4].unpack();
             si.D = saved[5].unpack();
             si.z = saved[6].unpack();
             si.delta_bias = saved[7].unpack();
             si.delta_softplus = softplus;
             Tensor dy = contiguous(detail::as_compute(g[0], ct));
             Tensor dfinal = has_final ? contiguous(detail::as_compute(g[1], ct)) : Tensor();
             auto alloc = [&](int i, const Tensor& like) {
               return need[i] ? empty(like.sizes(), Options(ct, dev)) : Tensor();
             };
             SelectiveScanGrads gr;
             gr.du = alloc(0, si.u);
             gr.ddelta = alloc(1, si.delta);
             gr.dA = alloc(2, si.A);
             gr.dB = alloc(3, si.B);
             gr.dC = alloc(4, si.C);
             gr.dD = alloc(5, si.D);
             gr.dz = alloc(6, si.z);
             gr.ddelta_bias = alloc(7, si.delta_bias);
             if (need[8]) gr.dinitial_state = empty(shapes[8], Options(ct, dev));
             kernel_for<SelectiveScanBackwardKernel>(op_info("selective_scan_backward"), dev)(
                 si, ckpt, dy, dfinal, gr);
             TensorList out{gr.du,          gr.ddelta,        gr.dA, gr.dB, gr.dC, gr.dD, gr.dz,
                            gr.ddelta_bias, gr.dinitial_state};
             for (size_t i = 0; i < out.size(); ++i) {
               if (!out[i].defined()) continue;
               if (out[i].sizes() != shapes[i]) out[i] = out[i].view(shapes[i]);
               if (out[i].dtype() != types[i]) out[i] = detail::cast(out[i], types[i]);
             }
             return out;
           });
  }
  check_anomaly("selective_scan", inputs, {y, final_state});
  return {y, final_state};
}

namespace {
void register_selective_scan() {
  {
    OpInfo& o = register_op("selective_scan", "scan");
    o.set_kernel(kCPU, &cpu::selective_scan_kernel);
    o.boxed = [](const TensorList& in, const Attrs& a) {
      auto at = [&](size_t i) { return i < in.size() ? in[i] : Tensor(); };
      SelectiveScanOptions opt;
      opt.D = at(5);
      opt.z = at(6);
      opt.delta_bias = at(7);
      opt.initial_state = at(8);
      opt.delta_softplus = attr_or(a, "delta_softplus", false);
      opt.return_final_state = attr_or(a, "return_final_state", false);
      auto [y, h] = selective_scan(at(0), at(1), at(2), at(3), at(4), opt);
      return TensorList{y, h};
    };
    o.gradcheck = [] {
      // batch 2, L 6, dim 4, two groups, N 3, every optional input and the final state.
      GradcheckCase c;
      c.inputs = {detail::gc_rand({2, 6, 4}),        detail::gc_rand({2, 6, 4}),
                  detail::gc_rand({4, 3}, -1, -0.1), detail::gc_rand({2, 6, 2, 3}),
                  detail::gc_rand({2, 6, 2, 3}),     detail::gc_rand({4}),
                  detail::gc_rand({2, 6, 4}),        detail::gc_rand({4}),
                  detail::gc_rand({2, 4, 3})};
      c.fn = [](const TensorList& v) {
        SelectiveScanOptions opt;
        opt.D = v[5];
        opt.z = v[6];
        opt.delta_bias = v[7];
        opt.initial_state = v[8];
        opt.delta_softplus = true;
        opt.return_final_state = true;
        auto [y, h] = selective_scan(v[0], v[1], v[2], v[3], v[4], opt);
        return cat({flatten(y), flatten(h)}, 0);
      };
      return c;
    };
  }
  {
    // The fused backward has a row of its own so backends register it like any kernel.
    OpInfo& o = register_op("selective_scan_backward", "scan");
    o.differentiable = false;
    o.set_kernel(kCPU, &cpu::selective_scan_backward_kernel);
    o.boxed = [](const TensorList&, const Attrs&) -> TensorList {
      fail("selective_scan_backward: called by selective_scan's backward only");
    };
  }
}
OpRegistrar reg(register_selective_scan);
}  // namespace

}  // namespace coil
