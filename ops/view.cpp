// View ops: new sizes/strides/offset over the same storage. Backward maps the gradient back to
// the input's shape (reshape, inverse permute, sum over expanded dims, or scatter into zeros).
#include "view.h"

#include <algorithm>
#include <numeric>

#include "copy.h"
#include "creation.h"
#include "op_helpers.h"
#include "reduce.h"

namespace coil {

namespace {

Tensor make_view(const Tensor& x, Shape sizes, Shape strides, int64_t offset) {
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = x.impl().storage;
  impl->sizes = std::move(sizes);
  impl->strides = std::move(strides);
  impl->offset = offset;
  impl->dtype = x.dtype();
  impl->is_view = x.requires_grad() || x.impl().is_view;
  return Tensor(impl);
}

// Records a view's backward and runs the anomaly/dist bookkeeping common to all views.
Tensor finish_view(const char* name, const Tensor& x, Tensor out, BackwardFn bw) {
  if (needs_grad({&x})) record(name, {x}, {out}, std::move(bw));
  return out;
}

// Shape with one -1 inferred, as torch.view.
Shape infer_shape(const char* op, const Shape& shape, int64_t numel) {
  Shape out = shape;
  int64_t known = 1, neg = -1;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == -1) {
      COIL_CHECK(neg < 0, op, ": only one dimension can be -1, got ", shape_str(shape));
      neg = static_cast<int64_t>(i);
    } else {
      COIL_CHECK(shape[i] >= 0, op, ": invalid size ", shape[i], " in shape ", shape_str(shape));
      known *= shape[i];
    }
  }
  if (neg >= 0) {
    COIL_CHECK(known != 0 && numel % known == 0, op, ": shape ", shape_str(shape),
               " is invalid for input of size ", numel);
    out[neg] = numel / known;
  } else {
    COIL_CHECK(known == numel, op, ": shape ", shape_str(shape), " is invalid for input of size ",
               numel);
  }
  return out;
}

// Strides that let `sizes` view memory laid out as (old_sizes, old_strides), or nothing when a
// copy is needed (torch's computeStride).
std::optional<Shape> view_strides(const Shape& old_sizes, const Shape& old_strides,
                                  const Shape& sizes) {
  Shape ns(sizes.size());
  if (shape_numel(old_sizes) == 0 || old_sizes.empty()) return contiguous_strides(sizes);
  int64_t view_d = static_cast<int64_t>(sizes.size()) - 1;
  int64_t chunk_base = old_strides.empty() ? 1 : old_strides.back();
  int64_t tensor_numel = 1, view_numel = 1;
  for (int64_t d = static_cast<int64_t>(old_sizes.size()) - 1; d >= 0; --d) {
    tensor_numel *= old_sizes[d];
    if (d == 0 || (old_sizes[d - 1] != 1 && old_strides[d - 1] != tensor_numel * chunk_base)) {
      while (view_d >= 0 && (view_numel < tensor_numel || sizes[view_d] == 1)) {
        ns[view_d] = view_numel * chunk_base;
        view_numel *= sizes[view_d];
        --view_d;
      }
      if (view_numel != tensor_numel) return std::nullopt;
      if (d > 0) {
        chunk_base = old_strides[d - 1];
        tensor_numel = 1;
        view_numel = 1;
      }
    }
  }
  if (view_d != -1) return std::nullopt;
  return ns;
}

}  // namespace

Tensor view(const Tensor& x, const Shape& shape) {
  COIL_OP("view");
  if (any_distributed({&x})) return dist_dispatch(op_, {x}, {{"shape", shape}})[0];
  Shape s = infer_shape("view", shape, x.numel());
  auto st = view_strides(x.sizes(), x.strides(), s);
  COIL_CHECK(st, "view: shape ", shape_str(s), " is not compatible with the input's strides ",
             shape_str(x.strides()), " (sizes ", x.shape_str(), "); use reshape()");
  Shape in = x.sizes();
  return finish_view("view", x, make_view(x, s, *st, x.storage_offset()),
                     [in](const TensorList& g) { return TensorList{reshape(g[0], in)}; });
}

Tensor reshape(const Tensor& x, const Shape& shape) {
  COIL_OP("reshape");
  if (any_distributed({&x})) return dist_dispatch(op_, {x}, {{"shape", shape}})[0];
  Shape s = infer_shape("reshape", shape, x.numel());
  if (view_strides(x.sizes(), x.strides(), s)) return view(x, s);
  return view(clone(x), s);
}

Tensor permute(const Tensor& x, const Shape& dims) {
  COIL_OP("permute");
  if (any_distributed({&x})) return dist_dispatch(op_, {x}, {{"dims", dims}})[0];
  const int64_t n = x.dim();
  COIL_CHECK(static_cast<int64_t>(dims.size()) == n, "permute: got ", dims.size(), " dims ",
             shape_str(dims), " for a tensor of ", n, " dims");
  Shape sz(n), st(n), inv(n);
  std::vector<bool> seen(n, false);
  for (int64_t i = 0; i < n; ++i) {
    int64_t d = normalize_dim("permute", dims[i], n);
    COIL_CHECK(!seen[d], "permute: dim ", d, " repeats in ", shape_str(dims));
    seen[d] = true;
    sz[i] = x.sizes()[d];
    st[i] = x.strides()[d];
    inv[d] = i;
  }
  return finish_view("permute", x, make_view(x, sz, st, x.storage_offset()),
                     [inv](const TensorList& g) { return TensorList{permute(g[0], inv)}; });
}

Tensor transpose(const Tensor& x, int64_t d0, int64_t d1) {
  const int64_t n = x.dim();
  if (n == 0) return x;
  d0 = normalize_dim("transpose", d0, n);
  d1 = normalize_dim("transpose", d1, n);
  Shape p(n);
  std::iota(p.begin(), p.end(), 0);
  std::swap(p[d0], p[d1]);
  return permute(x, p);
}

Tensor slice(const Tensor& x, int64_t dim, std::optional<int64_t> start, std::optional<int64_t> end,
             int64_t step) {
  COIL_OP("slice");
  if (any_distributed({&x})) {
    return dist_dispatch(op_, {x},
                         {{"dim", dim},
                          {"start", start.value_or(0)},
                          {"end", end.value_or(INT64_MAX)},
                          {"step", step}})[0];
  }
  COIL_CHECK(x.dim() > 0, "slice: cannot slice a 0-d tensor");
  dim = normalize_dim("slice", dim, x.dim());
  COIL_CHECK(step > 0, "slice: step must be positive, got ", step);
  const int64_t n = x.sizes()[dim];
  int64_t s = start.value_or(0), e = end.value_or(n);
  if (s < 0) s += n;
  if (e < 0) e += n;
  s = std::clamp<int64_t>(s, 0, n);
  e = std::clamp<int64_t>(e, s, n);
  Shape sz = x.sizes(), st = x.strides();
  sz[dim] = (e - s + step - 1) / step;
  st[dim] *= step;
  Shape in = x.sizes();
  return finish_view("slice", x, make_view(x, sz, st, x.storage_offset() + s * x.strides()[dim]),
                     [in, dim, s, e, step](const TensorList& g) {
                       Tensor z = zeros(in, Options(g[0].dtype(), g[0].device()));
                       slice(z, dim, s, e, step).copy_(g[0]);
                       return TensorList{z};
                     });
}

Tensor narrow(const Tensor& x, int64_t dim, int64_t start, int64_t length) {
  COIL_CHECK(x.dim() > 0, "narrow: cannot narrow a 0-d tensor");
  int64_t d = normalize_dim("narrow", dim, x.dim());
  const int64_t n = x.sizes()[d];
  if (start < 0) start += n;
  COIL_CHECK(start >= 0 && length >= 0 && start + length <= n, "narrow: start ", start,
             " + length ", length, " exceeds dim ", d, " of size ", n);
  return slice(x, d, start, start + length, 1);
}

Tensor select(const Tensor& x, int64_t dim, int64_t index) {
  COIL_OP("select");
  if (any_distributed({&x})) return dist_dispatch(op_, {x}, {{"dim", dim}, {"index", index}})[0];
  COIL_CHECK(x.dim() > 0, "select: cannot select from a 0-d tensor");
  int64_t d = normalize_dim("select", dim, x.dim());
  const int64_t n = x.sizes()[d];
  COIL_CHECK(index >= -n && index < n, "select: index ", index, " is out of range for dim ", d,
             " of size ", n);
  if (index < 0) index += n;
  Shape sz = x.sizes(), st = x.strides();
  int64_t off = x.storage_offset() + index * st[d];
  sz.erase(sz.begin() + d);
  st.erase(st.begin() + d);
  Shape in = x.sizes();
  return finish_view("select", x, make_view(x, sz, st, off), [in, d, index](const TensorList& g) {
    Tensor z = zeros(in, Options(g[0].dtype(), g[0].device()));
    select(z, d, index).copy_(g[0]);
    return TensorList{z};
  });
}

Tensor expand(const Tensor& x, const Shape& shape) {
  COIL_OP("expand");
  if (any_distributed({&x})) return dist_dispatch(op_, {x}, {{"shape", shape}})[0];
  const int64_t n = static_cast<int64_t>(shape.size()), xd = x.dim();
  COIL_CHECK(n >= xd, "expand: target shape ", shape_str(shape), " has fewer dims than the input ",
             x.shape_str());
  Shape sz(n), st(n);
  for (int64_t i = n - 1; i >= 0; --i) {
    int64_t j = i - (n - xd);
    int64_t target = shape[i];
    if (j >= 0) {
      int64_t cur = x.sizes()[j];
      if (target == -1) target = cur;
      COIL_CHECK(cur == target || cur == 1, "expand: the size ", cur, " of dim ", j, " of ",
                 x.shape_str(), " must be 1 to expand to ", target, " (target ", shape_str(shape),
                 ")");
      sz[i] = target;
      st[i] = cur == target ? x.strides()[j] : 0;
    } else {
      COIL_CHECK(target >= 0, "expand: -1 is not allowed for a new leading dim in ",
                 shape_str(shape));
      sz[i] = target;
      st[i] = 0;
    }
  }
  Shape in = x.sizes();
  return finish_view("expand", x, make_view(x, sz, st, x.storage_offset()),
                     [in](const TensorList& g) { return TensorList{sum_to(g[0], in)}; });
}

Tensor squeeze(const Tensor& x, std::optional<int64_t> dim) {
  Shape s;
  if (dim) {
    int64_t d = normalize_dim("squeeze", *dim, x.dim());
    s = x.sizes();
    if (x.dim() > 0 && s[d] == 1) s.erase(s.begin() + d);
  } else {
    for (int64_t v : x.sizes())
      if (v != 1) s.push_back(v);
  }
  return view(x, s);
}

Tensor unsqueeze(const Tensor& x, int64_t dim) {
  int64_t d = normalize_dim("unsqueeze", dim, x.dim() + 1);
  Shape s = x.sizes(), st = x.strides();
  int64_t inner = d < x.dim() ? st[d] * s[d] : 1;
  s.insert(s.begin() + d, 1);
  st.insert(st.begin() + d, inner);
  COIL_OP("unsqueeze");
  if (any_distributed({&x})) return dist_dispatch(op_, {x}, {{"dim", dim}})[0];
  Shape in = x.sizes();
  return finish_view("unsqueeze", x, make_view(x, s, st, x.storage_offset()),
                     [in](const TensorList& g) { return TensorList{reshape(g[0], in)}; });
}

Tensor flatten(const Tensor& x, int64_t start_dim, int64_t end_dim) {
  if (x.dim() == 0) return reshape(x, {1});
  int64_t s = normalize_dim("flatten", start_dim, x.dim()),
          e = normalize_dim("flatten", end_dim, x.dim());
  COIL_CHECK(s <= e, "flatten: start_dim ", start_dim, " comes after end_dim ", end_dim);
  Shape out;
  for (int64_t i = 0; i < s; ++i) out.push_back(x.sizes()[i]);
  int64_t m = 1;
  for (int64_t i = s; i <= e; ++i) m *= x.sizes()[i];
  out.push_back(m);
  for (int64_t i = e + 1; i < x.dim(); ++i) out.push_back(x.sizes()[i]);
  return reshape(x, out);
}

Tensor detach(const Tensor& x) {
  auto impl = std::make_shared<TensorImpl>(x.impl());
  impl->grad_fn = nullptr;
  impl->grad = nullptr;
  impl->requires_grad = false;
  impl->is_view = false;
  impl->grad_accumulator.reset();
  impl->retains_grad = false;
  return Tensor(impl);
}

Tensor Tensor::view(const Shape& s) const { return coil::view(*this, s); }
Tensor Tensor::reshape(const Shape& s) const { return coil::reshape(*this, s); }
Tensor Tensor::permute(const Shape& d) const { return coil::permute(*this, d); }
Tensor Tensor::transpose(int64_t a, int64_t b) const { return coil::transpose(*this, a, b); }
Tensor Tensor::t() const {
  COIL_CHECK(dim() <= 2, "t: expects a tensor with <= 2 dims, got ", dim());
  return dim() < 2 ? *this : coil::transpose(*this, 0, 1);
}
Tensor Tensor::narrow(int64_t d, int64_t s, int64_t l) const {
  return coil::narrow(*this, d, s, l);
}
Tensor Tensor::slice(int64_t d, std::optional<int64_t> s, std::optional<int64_t> e,
                     int64_t st) const {
  return coil::slice(*this, d, s, e, st);
}
Tensor Tensor::select(int64_t d, int64_t i) const { return coil::select(*this, d, i); }
Tensor Tensor::expand(const Shape& s) const { return coil::expand(*this, s); }
Tensor Tensor::squeeze() const { return coil::squeeze(*this); }
Tensor Tensor::squeeze(int64_t d) const { return coil::squeeze(*this, d); }
Tensor Tensor::unsqueeze(int64_t d) const { return coil::unsqueeze(*this, d); }
Tensor Tensor::flatten(int64_t s, int64_t e) const { return coil::flatten(*this, s, e); }
Tensor Tensor::detach() const { return coil::detach(*this); }

namespace {
void register_view() {
  using GC = GradcheckCase;
  auto reg = [](const char* name, BoxedFn boxed, std::function<GC()> gc) {
    OpInfo& o = register_op(name, "view");
    o.composite = true;  // metadata only: no kernel on any device
    o.boxed = std::move(boxed);
    o.gradcheck = std::move(gc);
  };
  reg(
      "view",
      [](const TensorList& i, const Attrs& a) {
        return TensorList{view(i[0], attr<Shape>(a, "shape"))};
      },
      [] {
        return GC{{detail::gc_rand({2, 6})}, [](const TensorList& x) {
                    return view(x[0], {3, -1});
                  }};
      });
  reg(
      "reshape",
      [](const TensorList& i, const Attrs& a) {
        return TensorList{reshape(i[0], attr<Shape>(a, "shape"))};
      },
      [] {
        return GC{{detail::gc_rand({3, 4})},
                  [](const TensorList& x) { return reshape(x[0].t(), {12}); }};
      });
  reg(
      "permute",
      [](const TensorList& i, const Attrs& a) {
        return TensorList{permute(i[0], attr<Shape>(a, "dims"))};
      },
      [] {
        return GC{{detail::gc_rand({2, 3, 4})}, [](const TensorList& x) {
                    return permute(x[0], {2, 0, 1});
                  }};
      });
  reg(
      "slice",
      [](const TensorList& i, const Attrs& a) {
        return TensorList{slice(i[0], attr<int64_t>(a, "dim"), attr<int64_t>(a, "start"),
                                attr<int64_t>(a, "end"), attr<int64_t>(a, "step"))};
      },
      [] {
        return GC{{detail::gc_rand({5, 7})},
                  [](const TensorList& x) { return slice(x[0], 1, 1, 6, 2); }};
      });
  reg(
      "select",
      [](const TensorList& i, const Attrs& a) {
        return TensorList{select(i[0], attr<int64_t>(a, "dim"), attr<int64_t>(a, "index"))};
      },
      [] {
        return GC{{detail::gc_rand({3, 4})},
                  [](const TensorList& x) { return select(x[0], 1, -1); }};
      });
  reg(
      "expand",
      [](const TensorList& i, const Attrs& a) {
        return TensorList{expand(i[0], attr<Shape>(a, "shape"))};
      },
      [] {
        return GC{{detail::gc_rand({3, 1})}, [](const TensorList& x) {
                    return expand(x[0], {2, 3, 4});
                  }};
      });
  reg(
      "unsqueeze",
      [](const TensorList& i, const Attrs& a) {
        return TensorList{unsqueeze(i[0], attr<int64_t>(a, "dim"))};
      },
      [] {
        return GC{{detail::gc_rand({3, 4})},
                  [](const TensorList& x) { return unsqueeze(x[0], 1); }};
      });
}
OpRegistrar reg(register_view);
}  // namespace

}  // namespace coil
