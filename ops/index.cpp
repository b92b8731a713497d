// Indexing ops. Every kernel sees contiguous [outer, n, inner] / [outer, m, inner] views (see
// IndexGeom), so the op layer makes inputs contiguous and trims gather/scatter operands to the
// index's extent. Backwards are the adjoint op: select <-> add, gather <-> scatter_add.
#include "index.h"

#include <cmath>

#include "binary.h"
#include "copy.h"
#include "creation.h"
#include "op_helpers.h"
#include "reduce.h"
#include "shape.h"
#include "unary.h"
#include "view.h"

namespace coil {

namespace {

// The index as a contiguous int64 tensor outside autograd (int32 widens).
Tensor as_index(const char* op, const Tensor& index, const char* what = "index") {
  COIL_CHECK(index.dtype() == kI64 || index.dtype() == kI32, op, ": ", what,
             " must be int64 or int32, got ", index.dtype());
  NoGradGuard g;
  return contiguous(detail::as_compute(detach(index), kI64));
}

// x detached, contiguous, in dtype t.
Tensor prepared(const Tensor& x, DType t) {
  NoGradGuard g;
  return contiguous(detail::as_compute(detach(x), t));
}

// The dtype the accumulating kernels compute in.
DType add_dtype(DType t) { return compute_dtype(t); }

// [outer, n, inner] around dim d of `s`, with m index entries along d.
IndexGeom geom(const char* op, const Shape& s, int64_t d, int64_t n, int64_t m) {
  IndexGeom g;
  g.op = op;
  g.dim = d;
  g.n = n;
  g.m = m;
  for (int64_t i = 0; i < static_cast<int64_t>(s.size()); ++i) {
    if (i < d) g.outer *= s[i];
    if (i > d) g.inner *= s[i];
  }
  return g;
}

// t narrowed to `s` in every dim but `keep` (-1: in every dim).
Tensor narrow_to(const Tensor& t, const Shape& s, int64_t keep) {
  Tensor r = t;
  for (int64_t i = 0; i < t.dim(); ++i)
    if (i != keep && s[i] != t.sizes()[i]) r = narrow(r, i, 0, s[i]);
  return r;
}

// Zeros padded after the end of each dim, growing `t` to `s` (the gradient of a trimmed operand).
Tensor grow_to(const Tensor& t, const Shape& s) {
  if (t.sizes() == s) return t;
  Shape pads;
  for (int64_t i = t.dim() - 1; i >= 0; --i) {
    pads.push_back(0);
    pads.push_back(s[i] - t.sizes()[i]);
  }
  return pad(t, pads);
}

int64_t index_dim(const char* op, const Tensor& x, int64_t dim) {
  COIL_CHECK(x.dim() > 0, op, ": cannot index a 0-d tensor");
  return normalize_dim(op, dim, x.dim());
}

// gather/scatter_add: index has x's number of dims and fits inside `x` (and `src`) off dim d.
void check_gather_shapes(const char* op, const Tensor& x, const Tensor& index, int64_t d,
                         const Tensor* src) {
  COIL_CHECK(index.dim() == x.dim(), op, ": index of shape ", index.shape_str(),
             " must have as many dims as the input of shape ", x.shape_str());
  for (int64_t i = 0; i < x.dim(); ++i) {
    COIL_CHECK(i == d || index.sizes()[i] <= x.sizes()[i], op, ": index of shape ",
               index.shape_str(), " is larger than the input of shape ", x.shape_str(), " in dim ",
               i);
  }
  if (!src) return;
  COIL_CHECK(src->dim() == x.dim(), op, ": src of shape ", src->shape_str(),
             " must have as many dims as the input of shape ", x.shape_str());
  for (int64_t i = 0; i < x.dim(); ++i) {
    COIL_CHECK(index.sizes()[i] <= src->sizes()[i], op, ": index of shape ", index.shape_str(),
               " is larger than src of shape ", src->shape_str(), " in dim ", i);
  }
}

}  // namespace

Tensor index_select(const Tensor& x, int64_t dim, const Tensor& index) {
  COIL_OP("index_select");
  if (any_distributed({&x, &index})) return dist_dispatch(op_, {x, index}, {{"dim", dim}})[0];
  const int64_t d = index_dim("index_select", x, dim);
  COIL_CHECK(index.dim() <= 1, "index_select: index must be 1-d, got shape ", index.shape_str());
  check_same_device("index_select", {x, index});
  Tensor idx = as_index("index_select", index);
  Shape os = x.sizes();
  os[d] = idx.numel();
  Tensor out = empty(os, Options(x.dtype(), x.device()));
  IndexGeom g = geom("index_select", x.sizes(), d, x.sizes()[d], idx.numel());
  kernel_for<IndexSelectKernel>(op_, x.device())(out, prepared(x, x.dtype()), idx, g);
  if (needs_grad({&x})) {
    SavedTensor si(idx, "index_select");
    Shape in = x.sizes();
    record("index_select", {x}, {out}, [si, in, d](const TensorList& gr) {
      Tensor z = zeros(in, Options(gr[0].dtype(), gr[0].device()));
      return TensorList{index_add(z, d, si.unpack(), gr[0])};
    });
  }
  check_anomaly("index_select", {x, index}, {out});
  return out;
}

Tensor embedding(const Tensor& weight, const Tensor& ids, int64_t padding_idx) {
  COIL_OP("embedding");
  if (any_distributed({&weight, &ids}))
    return dist_dispatch(op_, {weight, ids}, {{"padding_idx", padding_idx}})[0];
  COIL_CHECK(weight.dim() == 2, "embedding: weight must be 2-d (num_embeddings, dim), got shape ",
             weight.shape_str());
  COIL_CHECK(padding_idx >= -1 && padding_idx < weight.sizes()[0], "embedding: padding_idx ",
             padding_idx, " out of range for ", weight.sizes()[0], " embeddings (-1: none)");
  check_same_device("embedding", {weight, ids});
  Tensor idx = as_index("embedding", ids, "ids");
  const int64_t V = weight.sizes()[0], D = weight.sizes()[1];
  Shape os = ids.sizes();
  os.push_back(D);
  Tensor out = empty(os, Options(weight.dtype(), weight.device()));
  IndexGeom g = geom("embedding", {V, D}, 0, V, idx.numel());
  kernel_for<IndexSelectKernel>(op_, weight.device())(out, prepared(weight, weight.dtype()), idx,
                                                      g);
  if (needs_grad({&weight})) {
    SavedTensor si(idx, "embedding");
    record("embedding", {weight}, {out}, [si, V, D, padding_idx](const TensorList& gr) {
      Tensor z = zeros({V, D}, Options(gr[0].dtype(), gr[0].device()));
      Tensor ids_flat = reshape(si.unpack(), {-1});  // rows given explicitly: D may be 0
      Tensor rows = reshape(gr[0], {ids_flat.numel(), D});
      if (padding_idx >= 0)
        rows = rows * logical_not(ids_flat == padding_idx).to(rows.dtype()).unsqueeze(1);
      return TensorList{index_add(z, 0, ids_flat, rows)};
    });
  }
  check_anomaly("embedding", {weight, ids}, {out});
  return out;
}

Tensor gather(const Tensor& x, int64_t dim, const Tensor& index) {
  COIL_OP("gather");
  if (any_distributed({&x, &index})) return dist_dispatch(op_, {x, index}, {{"dim", dim}})[0];
  const int64_t d = index_dim("gather", x, dim);
  check_gather_shapes("gather", x, index, d, nullptr);
  check_same_device("gather", {x, index});
  Tensor idx = as_index("gather", index);
  Tensor out = empty(index.sizes(), Options(x.dtype(), x.device()));
  Tensor xin = prepared(narrow_to(detach(x), index.sizes(), d), x.dtype());
  IndexGeom g = geom("gather", index.sizes(), d, x.sizes()[d], index.sizes()[d]);
  kernel_for<GatherKernel>(op_, x.device())(out, xin, idx, g);
  if (needs_grad({&x})) {
    SavedTensor si(idx, "gather");
    Shape in = x.sizes();
    record("gather", {x}, {out}, [si, in, d](const TensorList& gr) {
      Tensor z = zeros(in, Options(gr[0].dtype(), gr[0].device()));
      return TensorList{scatter_add(z, d, si.unpack(), gr[0])};
    });
  }
  check_anomaly("gather", {x, index}, {out});
  return out;
}

Tensor scatter_add(const Tensor& x, int64_t dim, const Tensor& index, const Tensor& src) {
  COIL_OP("scatter_add");
  if (any_distributed({&x, &index, &src})) {
    return dist_dispatch(op_, {x, index, src}, {{"dim", dim}})[0];
  }
  const int64_t d = index_dim("scatter_add", x, dim);
  check_gather_shapes("scatter_add", x, index, d, &src);
  COIL_CHECK(src.dtype() == x.dtype(), "scatter_add: src dtype ", src.dtype(),
             " does not match the input dtype ", x.dtype());
  check_same_device("scatter_add", {x, index, src});
  Tensor idx = as_index("scatter_add", index);
  const DType ct = add_dtype(x.dtype());
  Tensor out = detail::cast(detach(x), ct);  // a fresh contiguous copy to add into
  {
    NoGradGuard ng;
    // Only the index's extent of out is written; a trimmed region goes through a contiguous copy.
    Tensor region = narrow_to(out, index.sizes(), d);
    Tensor acc = region.is_contiguous() ? region : contiguous(region);
    IndexGeom g = geom("scatter_add", index.sizes(), d, x.sizes()[d], index.sizes()[d]);
    kernel_for<ScatterAddKernel>(op_, x.device())(
        acc, prepared(narrow_to(src, index.sizes(), -1), ct), idx, g);
    if (!acc.is_same(region)) region.copy_(acc);
  }
  if (ct != x.dtype()) out = detail::cast(out, x.dtype());
  if (needs_grad({&x, &src})) {
    SavedTensor si(idx, "scatter_add");
    Shape ss = src.sizes();
    bool gx = x.requires_grad(), gs = src.requires_grad();
    record("scatter_add", {x, src}, {out}, [si, ss, d, gx, gs](const TensorList& gr) {
      return TensorList{gx ? gr[0] : Tensor(),
                        gs ? grow_to(gather(gr[0], d, si.unpack()), ss) : Tensor()};
    });
  }
  check_anomaly("scatter_add", {x, index, src}, {out});
  return out;
}

Tensor index_add(const Tensor& x, int64_t dim, const Tensor& index, const Tensor& src,
                 Scalar alpha) {
  COIL_OP("index_add");
  if (any_distributed({&x, &index, &src})) {
    return dist_dispatch(op_, {x, index, src}, {{"dim", dim}, {"alpha", alpha.to_double()}})[0];
  }
  const int64_t d = index_dim("index_add", x, dim);
  COIL_CHECK(index.dim() <= 1, "index_add: index must be 1-d, got shape ", index.shape_str());
  const int64_t m = index.numel();
  Shape want = x.sizes();
  want[d] = m;
  COIL_CHECK(src.sizes() == want, "index_add: src of shape ", src.shape_str(), " must be ",
             shape_str(want), " (the input ", x.shape_str(), " with dim ", d, " of size ", m,
             ", one slice per index)");
  COIL_CHECK(src.dtype() == x.dtype(), "index_add: src dtype ", src.dtype(),
             " does not match the input dtype ", x.dtype());
  const double a = alpha.to_double();
  COIL_CHECK(is_floating(x.dtype()) || a == std::trunc(a), "index_add: alpha ", a,
             " is not an integer but the input is ", x.dtype());
  check_same_device("index_add", {x, index, src});
  Tensor idx = as_index("index_add", index);
  const DType ct = add_dtype(x.dtype());
  Tensor out = detail::cast(detach(x), ct);
  IndexGeom g = geom("index_add", x.sizes(), d, x.sizes()[d], m);
  kernel_for<IndexAddKernel>(op_, x.device())(out, prepared(src, ct), idx, g, a);
  if (ct != x.dtype()) out = detail::cast(out, x.dtype());
  if (needs_grad({&x, &src})) {
    SavedTensor si(idx, "index_add");
    bool gx = x.requires_grad(), gs = src.requires_grad();
    record("index_add", {x, src}, {out}, [si, d, a, gx, gs](const TensorList& gr) {
      Tensor ds;
      if (gs) {
        ds = index_select(gr[0], d, si.unpack());
        if (a != 1) ds = ds * a;
      }
      return TensorList{gx ? gr[0] : Tensor(), ds};
    });
  }
  check_anomaly("index_add", {x, index, src}, {out});
  return out;
}

Tensor one_hot(const Tensor& ids, int64_t num_classes) {
  COIL_OP("one_hot");
  if (any_distributed({&ids})) {
    return dist_dispatch(op_, {ids}, {{"num_classes", num_classes}})[0];
  }
  COIL_CHECK(num_classes >= -1, "one_hot: num_classes must be -1 (infer) or non-negative, got ",
             num_classes);
  Tensor idx = as_index("one_hot", ids, "ids");
  if (num_classes == -1) {
    COIL_CHECK(idx.numel() > 0, "one_hot: cannot infer num_classes from empty ids of shape ",
               ids.shape_str());
    num_classes = max(idx).item<int64_t>() + 1;
  }
  Shape os = ids.sizes();
  os.push_back(num_classes);
  Tensor out = empty(os, Options(kI64, ids.device()));
  kernel_for<OneHotKernel>(op_, ids.device())(out, idx, num_classes);
  return out;
}

namespace {
void register_index() {
  using GC = GradcheckCase;
  auto reg = [](const char* name, auto kernel, BoxedFn boxed, std::function<GC()> gc) {
    OpInfo& o = register_op(name, "index");
    o.set_kernel(kCPU, kernel);
    o.differentiable = gc != nullptr;
    o.boxed = std::move(boxed);
    o.gradcheck = std::move(gc);
  };
  auto ids = [](const std::vector<int64_t>& v, const Shape& s) { return tensor(v, s); };
  reg(
      "embedding", &cpu::index_select_kernel,
      [](const TensorList& i, const Attrs& a) {
        return TensorList{embedding(i[0], i[1], attr_or<int64_t>(a, "padding_idx", -1))};
      },
      [ids] {
        // repeated ids: their rows' gradients must add up
        return GC{{detail::gc_rand({5, 3}), ids({0, 4, 2, 2, 2, 1}, {2, 3})},
                  [](const TensorList& x) { return embedding(x[0], x[1]); }};
      });
  reg(
      "index_select", &cpu::index_select_kernel,
      [](const TensorList& i, const Attrs& a) {
        return TensorList{index_select(i[0], attr<int64_t>(a, "dim"), i[1])};
      },
      [ids] {
        return GC{{detail::gc_rand({3, 4, 2}), ids({3, 0, 3, 1, 0}, {5})},
                  [](const TensorList& x) { return index_select(x[0], 1, x[1]); }};
      });
  reg(
      "gather", &cpu::gather_kernel,
      [](const TensorList& i, const Attrs& a) {
        return TensorList{gather(i[0], attr<int64_t>(a, "dim"), i[1])};
      },
      [ids] {
        return GC{{detail::gc_rand({3, 4}), ids({0, 3, 3, 1, 2, 2, 0, 0}, {2, 4})},
                  [](const TensorList& x) { return gather(x[0], 1, x[1]); }};
      });
  reg(
      "scatter_add", &cpu::scatter_add_kernel,
      [](const TensorList& i, const Attrs& a) {
        return TensorList{scatter_add(i[0], attr<int64_t>(a, "dim"), i[1], i[2])};
      },
      [ids] {
        return GC{
            {detail::gc_rand({4, 3}), ids({0, 3, 0, 3, 3, 1}, {2, 3}), detail::gc_rand({3, 3})},
            [](const TensorList& x) { return scatter_add(x[0], 0, x[1], x[2]); }};
      });
  reg(
      "index_add", &cpu::index_add_kernel,
      [](const TensorList& i, const Attrs& a) {
        return TensorList{
            index_add(i[0], attr<int64_t>(a, "dim"), i[1], i[2], attr_or<double>(a, "alpha", 1.0))};
      },
      [ids] {
        return GC{{detail::gc_rand({3, 4}), ids({2, 0, 2}, {3}), detail::gc_rand({3, 3})},
                  [](const TensorList& x) { return index_add(x[0], 1, x[1], x[2], -1.5); }};
      });
  reg(
      "one_hot", &cpu::one_hot_kernel,
      [](const TensorList& i, const Attrs& a) {
        return TensorList{one_hot(i[0], attr_or<int64_t>(a, "num_classes", -1))};
      },
      nullptr);
}
OpRegistrar reg(register_index);
}  // namespace

}  // namespace coil
