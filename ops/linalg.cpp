// matmul and linear are compositions of views around one primitive, the batched product
// (B, n, k) x (B, k, m); its backward is two more batched products. linear records its own node
// when it needs a gradient, so that the weight's gradient is computed in the weight's layout.
#include "linalg.h"

#include "binary.h"
#include "copy.h"
#include "op_helpers.h"
#include "reduce.h"
#include "view.h"

namespace coil {

namespace {

// a (B, n, k), b (B, k, m) -> (B, n, m); B may be broadcast through a zero batch stride.
Tensor bmm_prim(const Tensor& a, const Tensor& b) {
  COIL_OP("bmm");
  // a GPU multiplies 16-bit floats as they are (tensor cores, float32 accumulation); a CPU
  // widens them to float32 first
  const DType rt = promote_types(a.dtype(), b.dtype());
  const DType ct = a.device().is_cuda() ? rt : compute_dtype(rt);
  Tensor ac = detail::as_compute(a, ct), bc = detail::as_compute(b, ct);
  Tensor out = empty({a.sizes()[0], a.sizes()[1], b.sizes()[2]}, Options(ct, a.device()));
  kernel_for<GemmKernel>(op_, a.device())(out, ac, bc);
  if (ct != rt) out = detail::cast(out, rt);
  if (is_floating(rt) && needs_grad({&a, &b})) {
    bool ga = a.requires_grad(), gb = b.requires_grad();
    SavedTensor sa = gb ? SavedTensor(a, "bmm") : SavedTensor();
    SavedTensor sb = ga ? SavedTensor(b, "bmm") : SavedTensor();
    record("bmm", {a, b}, {out}, [ga, gb, sa, sb](const TensorList& g) {
      return TensorList{ga ? bmm_prim(g[0], transpose(sb.unpack(), 1, 2)) : Tensor(),
                        gb ? bmm_prim(transpose(sa.unpack(), 1, 2), g[0]) : Tensor()};
    });
  }
  check_anomaly("bmm", {a, b}, {out});
  return out;
}

// y = x W^T over the rows of x (.., k) with W (n, k), as one GEMM. Its own node rather than
// matmul's, so the weight's gradient comes out as dW = dy^T x, (n, k) contiguous: matmul would
// give the gradient of the W^T view, (k, n), and the leaf's accumulator would then copy it
// transposed into a contiguous .grad on every step.
Tensor linear_prim(const Tensor& x, const Tensor& weight) {
  const int64_t n = weight.sizes()[0], k = weight.sizes()[1];
  const Shape x_shape = x.sizes();
  Shape y_shape = x_shape;
  y_shape.back() = n;
  Tensor x2 = reshape(x.detach(), {-1, k});
  Tensor y =
      reshape(bmm_prim(unsqueeze(x2, 0), unsqueeze(transpose(weight.detach(), 0, 1), 0)), y_shape);
  const bool gx = x.requires_grad(), gw = weight.requires_grad();
  SavedTensor sx = gw ? SavedTensor(x, "linear") : SavedTensor();
  SavedTensor sw = gx ? SavedTensor(weight, "linear") : SavedTensor();
  record("linear", {x, weight}, {y}, [gx, gw, sx, sw, n, k, x_shape](const TensorList& g) {
    Tensor g2 = reshape(g[0], {-1, n});  // (M, n)
    return TensorList{gx ? reshape(matmul(g2, sw.unpack()), x_shape) : Tensor(),
                      gw ? matmul(transpose(g2, 0, 1), reshape(sx.unpack(), {-1, k})) : Tensor()};
  });
  check_anomaly("linear", {x, weight}, {y});
  return y;
}

}  // namespace

Tensor bmm(const Tensor& a, const Tensor& b) {
  if (detail::AutocastScope ac; ac)
    return bmm(detail::autocast_to(a, ac.dtype()), detail::autocast_to(b, ac.dtype()));
  COIL_OP("bmm");
  if (any_distributed({&a, &b})) return dist_dispatch(op_, {a, b}, {})[0];
  COIL_CHECK(a.dim() == 3 && b.dim() == 3, "bmm: expected 3-d tensors, got ", a.shape_str(),
             " and ", b.shape_str());
  COIL_CHECK(a.sizes()[0] == b.sizes()[0] && a.sizes()[2] == b.sizes()[1], "bmm: shapes ",
             a.shape_str(), " and ", b.shape_str(), " cannot be multiplied");
  check_same_device("bmm", {a, b});
  return bmm_prim(a, b);
}

Tensor matmul(const Tensor& a, const Tensor& b) {
  if (detail::AutocastScope ac; ac)
    return matmul(detail::autocast_to(a, ac.dtype()), detail::autocast_to(b, ac.dtype()));
  COIL_OP("matmul");
  if (any_distributed({&a, &b})) return dist_dispatch(op_, {a, b}, {})[0];
  check_same_device("matmul", {a, b});
  COIL_CHECK(a.dim() >= 1 && b.dim() >= 1, "matmul: both arguments need at least 1 dim, got ",
             a.shape_str(), " and ", b.shape_str());
  const bool a1 = a.dim() == 1, b1 = b.dim() == 1;
  Tensor A = a1 ? unsqueeze(a, 0) : a;   // (.., n, k)
  Tensor B = b1 ? unsqueeze(b, -1) : b;  // (.., k, m)
  const int64_t n = A.size(-2), k = A.size(-1), k2 = B.size(-2), m = B.size(-1);
  COIL_CHECK(k == k2, "matmul: shapes ", a.shape_str(), " and ", b.shape_str(),
             " cannot be multiplied (", k, " vs ", k2, ")");
  Shape ba(A.sizes().begin(), A.sizes().end() - 2), bb(B.sizes().begin(), B.sizes().end() - 2);
  Shape batch = broadcast_shapes("matmul", ba, bb);
  int64_t nb = shape_numel(batch);
  Tensor out;
  Shape ea = batch, eb = batch;
  ea.push_back(n);
  ea.push_back(k);
  eb.push_back(k);
  eb.push_back(m);
  if (bb.empty() && !ba.empty()) {
    // (.., n, k) x (k, m): one GEMM over all rows of a.
    Tensor A2 = reshape(A, {nb * n, k});
    out = reshape(bmm_prim(unsqueeze(A2, 0), unsqueeze(B, 0)), [&] {
      Shape s = batch;
      s.push_back(n);
      s.push_back(m);
      return s;
    }());
  } else {
    Tensor A3 = reshape(expand(A, ea), {nb, n, k});
    Tensor B3 = reshape(expand(B, eb), {nb, k, m});
    Shape s = batch;
    s.push_back(n);
    s.push_back(m);
    out = reshape(bmm_prim(A3, B3), s);
  }
  if (a1) out = squeeze(out, -2);
  if (b1) out = squeeze(out, -1);
  return out;
}

Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  if (detail::AutocastScope ac; ac)
    return linear(detail::autocast_to(x, ac.dtype()), detail::autocast_to(weight, ac.dtype()),
                  detail::autocast_to(bias, ac.dtype()));
  COIL_OP("linear");
  if (any_distributed({&x, &weight, &bias})) return dist_dispatch(op_, {x, weight, bias}, {})[0];
  COIL_CHECK(weight.dim() == 2, "linear: weight must be 2-d (out, in), got ", weight.shape_str());
  COIL_CHECK(x.dim() >= 1 && x.size(-1) == weight.sizes()[1], "linear: input ", x.shape_str(),
             " does not match weight ", weight.shape_str(), " (in_features ", weight.sizes()[1],
             ")");
  if (bias.defined()) {
    COIL_CHECK(bias.dim() == 1 && bias.sizes()[0] == weight.sizes()[0], "linear: bias ",
               bias.shape_str(), " does not match out_features ", weight.sizes()[0]);
  }
  Tensor y = x.dim() >= 2 && x.numel() > 0 && weight.numel() > 0 && is_floating(x.dtype()) &&
                     x.dtype() == weight.dtype() && needs_grad({&x, &weight})
                 ? linear_prim(x, weight)
                 : matmul(x, weight.t());
  return bias.defined() ? y + bias : y;
}

namespace {
std::vector<int64_t> group_offsets(const Tensor& offsets, int64_t groups, int64_t rows) {
  COIL_CHECK(offsets.dim() == 1 && offsets.size(0) == groups + 1 && offsets.dtype() == kI64 &&
                 offsets.device().type == kCPU,
             "grouped_mm: offsets must be a CPU int64 tensor of ", groups + 1,
             " values (groups + 1), got ", offsets.shape_str(), " ", offsets.dtype());
  std::vector<int64_t> o = to_vector<int64_t>(offsets);
  COIL_CHECK(o.front() == 0 && o.back() == rows, "grouped_mm: offsets must run from 0 to ", rows,
             " (the rows of x), got ", o.front(), " .. ", o.back());
  for (int64_t e = 0; e < groups; ++e)
    COIL_CHECK(o[e] <= o[e + 1], "grouped_mm: offsets must not decrease, got ", o[e], " then ",
               o[e + 1], " at group ", e);
  return o;
}

Tensor grouped_prim(const Tensor& x, const Tensor& w, const Tensor& offsets,
                    const std::vector<int64_t>& off) {
  COIL_OP("grouped_mm");
  const DType rt = promote_types(x.dtype(), w.dtype()), ct = compute_dtype(rt);
  Tensor xc = detail::as_compute(x.detach(), ct), wc = detail::as_compute(w.detach(), ct);
  auto k = kernel_for<GroupedGemmKernel>(op_, x.device());
  Tensor out = empty({x.size(0), w.size(2)}, Options(ct, x.device()));
  k(false, out, xc, wc, off);
  if (ct != rt) out = detail::cast(out, rt);
  if (needs_grad({&x, &w})) {
    const bool gx = x.requires_grad(), gw = w.requires_grad();
    const bool w_transposed = w.size(1) > 1 && w.stride(1) == 1 && w.stride(2) == w.size(1);
    SavedTensor sx = gw ? SavedTensor(x, "grouped_mm") : SavedTensor();
    SavedTensor sw = gx ? SavedTensor(w, "grouped_mm") : SavedTensor();
    record("grouped_mm", {x, w, offsets}, {out},
           [gx, gw, sx, sw, offsets, off, k, ct, w_transposed](const TensorList& g) {
             Tensor dx, dw;
             if (gx) dx = grouped_prim(g[0], transpose(sw.unpack(), 1, 2), offsets, off);
             if (gw) {
               // dw[e] = x_e^T dy_e, made in w's own layout: when w is the transposed view of an
               // (E, m, k) stack (an expert weight), as the transposed view of dy_e^T x_e, so
               // the parameter's gradient needs no transposing copy
               Tensor xv = sx.unpack();
               const int64_t E = static_cast<int64_t>(off.size()) - 1, kk = xv.size(1),
                             m = g[0].size(1);
               NoGradGuard ng;
               Tensor xc = detail::as_compute(xv, ct), gc = detail::as_compute(g[0], ct);
               if (w_transposed) {
                 dw = empty({E, m, kk}, Options(ct, g[0].device()));
                 k(true, dw, gc, xc, off);
                 dw = transpose(dw, 1, 2);
               } else {
                 dw = empty({E, kk, m}, Options(ct, g[0].device()));
                 k(true, dw, xc, gc, off);
               }
               if (xv.dtype() != ct) dw = detail::cast(dw, xv.dtype());
             }
             return TensorList{dx, dw, Tensor()};
           });
  }
  check_anomaly("grouped_mm", {x, w}, {out});
  return out;
}
}  // namespace

Tensor grouped_mm(const Tensor& x, const Tensor& w, const Tensor& offsets) {
  if (detail::AutocastScope ac; ac)
    return grouped_mm(detail::autocast_to(x, ac.dtype()), detail::autocast_to(w, ac.dtype()),
                      offsets);
  COIL_OP("grouped_mm");
  if (any_distributed({&x, &w, &offsets})) return dist_dispatch(op_, {x, w, offsets}, {})[0];
  COIL_CHECK(x.dim() == 2 && w.dim() == 3 && x.size(1) == w.size(1), "grouped_mm: x must be ",
             "(n, k) and w (groups, k, m), got ", x.shape_str(), " and ", w.shape_str());
  COIL_CHECK(is_floating(x.dtype()) && is_floating(w.dtype()),
             "grouped_mm: x and w must be floating point, got ", x.dtype(), " and ", w.dtype());
  check_same_device("grouped_mm", {x, w});
  return grouped_prim(x, w, offsets, group_offsets(offsets, w.size(0), x.size(0)));
}

Tensor Tensor::matmul(const Tensor& o) const { return coil::matmul(*this, o); }

namespace {
void register_linalg() {
  {
    OpInfo& o = register_op("bmm", "linalg");
    o.set_kernel(kCPU, &cpu::gemm_kernel);
    o.boxed = [](const TensorList& i, const Attrs&) { return TensorList{bmm(i[0], i[1])}; };
    o.gradcheck = [] {
      return GradcheckCase{{detail::gc_rand({2, 3, 4}), detail::gc_rand({2, 5, 4})},
                           [](const TensorList& x) { return bmm(x[0], transpose(x[1], 1, 2)); }};
    };
  }
  {
    OpInfo& o = register_op("matmul", "linalg");
    o.composite = true;
    o.boxed = [](const TensorList& i, const Attrs&) { return TensorList{matmul(i[0], i[1])}; };
    o.gradcheck = [] {
      return GradcheckCase{{detail::gc_rand({2, 1, 3, 4}), detail::gc_rand({3, 4, 2})},
                           [](const TensorList& x) { return matmul(x[0], x[1]); }};
    };
  }
  {
    OpInfo& o = register_op("grouped_mm", "linalg");
    o.set_kernel(kCPU, &cpu::grouped_gemm_kernel);
    o.boxed = [](const TensorList& i, const Attrs&) {
      return TensorList{grouped_mm(i[0], i[1], i[2])};
    };
    o.gradcheck = [] {  // three groups, the middle one empty
      return GradcheckCase{{detail::gc_rand({6, 3}), detail::gc_rand({3, 3, 2}),
                            tensor(std::vector<int64_t>{0, 2, 2, 6}, {4})},
                           [](const TensorList& x) { return grouped_mm(x[0], x[1], x[2]); }};
    };
  }
  {
    OpInfo& o = register_op("linear", "linalg");
    o.composite = true;
    o.boxed = [](const TensorList& i, const Attrs&) {
      return TensorList{linear(i[0], i[1], i.size() > 2 ? i[2] : Tensor())};
    };
    o.gradcheck = [] {
      return GradcheckCase{
          {detail::gc_rand({2, 3, 4}), detail::gc_rand({5, 4}), detail::gc_rand({5})},
          [](const TensorList& x) { return linear(x[0], x[1], x[2]); }};
    };
  }
}
OpRegistrar reg(register_linalg);
}  // namespace

}  // namespace coil
