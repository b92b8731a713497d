// Joining, splitting, padding and repeating, all composite: cat and pad copy into views of a new
// tensor (with hand-written backwards that slice or crop the gradient), split/chunk return views,
// stack is cat of unsqueezed inputs and repeat_interleave is index_select with a built index.
#include "shape.h"

#include <algorithm>

#include "binary.h"
#include "copy.h"
#include "creation.h"
#include "index.h"
#include "op_helpers.h"
#include "view.h"

namespace coil {

namespace {

bool any_distributed_list(const TensorList& xs) {
  for (const Tensor& t : xs)
    if (t.defined() && t.is_distributed()) return true;
  return false;
}

void check_list(const char* op, const TensorList& xs) {
  COIL_CHECK(!xs.empty(), op, ": expects a non-empty list of tensors");
  for (size_t i = 0; i < xs.size(); ++i)
    COIL_CHECK(xs[i].defined(), op, ": tensor ", i, " is undefined");
  check_same_device(op, xs);
}

}  // namespace

Tensor cat(const TensorList& xs, int64_t dim) {
  COIL_OP("cat");
  if (any_distributed_list(xs)) return dist_dispatch(op_, xs, {{"dim", dim}})[0];
  check_list("cat", xs);
  const Tensor& x0 = xs[0];
  COIL_CHECK(x0.dim() > 0, "cat: tensor 0 is 0-d and cannot be concatenated");
  const int64_t d = normalize_dim("cat", dim, x0.dim());
  Shape os = x0.sizes();
  os[d] = 0;
  for (size_t i = 0; i < xs.size(); ++i) {
    const Tensor& x = xs[i];
    COIL_CHECK(x.dim() == x0.dim(), "cat: tensor ", i, " of shape ", x.shape_str(), " has ",
               x.dim(), " dims but tensor 0 of shape ", x0.shape_str(), " has ", x0.dim());
    for (int64_t k = 0; k < x0.dim(); ++k) {
      COIL_CHECK(k == d || x.sizes()[k] == x0.sizes()[k], "cat: tensor ", i, " has shape ",
                 x.shape_str(), " but tensor 0 has shape ", x0.shape_str(),
                 "; sizes must match except in dim ", d);
    }
    os[d] += x.sizes()[d];
  }
  const DType t = result_type(xs);
  Tensor out = empty(os, Options(t, x0.device()));
  {
    NoGradGuard g;
    int64_t off = 0;
    for (const Tensor& x : xs) {
      narrow(out, d, off, x.sizes()[d]).copy_(detach(x));
      off += x.sizes()[d];
    }
  }
  if (needs_grad(xs)) {
    struct Piece {
      int64_t len;
      DType dtype;
      bool needs;
    };
    std::vector<Piece> pieces;
    for (const Tensor& x : xs) pieces.push_back({x.sizes()[d], x.dtype(), x.requires_grad()});
    record("cat", xs, {out}, [pieces, d](const TensorList& g) {
      TensorList r;
      int64_t off = 0;
      for (const Piece& p : pieces) {
        Tensor gi;
        if (p.needs) {
          gi = narrow(g[0], d, off, p.len);
          if (gi.dtype() != p.dtype) gi = to_dtype(gi, p.dtype);
        }
        r.push_back(gi);
        off += p.len;
      }
      return r;
    });
  }
  check_anomaly("cat", xs, {out});
  return out;
}

Tensor stack(const TensorList& xs, int64_t dim) {
  COIL_OP("stack");
  if (any_distributed_list(xs)) return dist_dispatch(op_, xs, {{"dim", dim}})[0];
  check_list("stack", xs);
  const int64_t d = normalize_dim("stack", dim, xs[0].dim() + 1);
  TensorList us;
  for (size_t i = 0; i < xs.size(); ++i) {
    COIL_CHECK(xs[i].sizes() == xs[0].sizes(), "stack: tensor ", i, " has shape ",
               xs[i].shape_str(), " but tensor 0 has shape ", xs[0].shape_str(),
               "; stack needs equal shapes");
    us.push_back(unsqueeze(xs[i], d));
  }
  return cat(us, d);
}

TensorList split(const Tensor& x, int64_t split_size, int64_t dim) {
  COIL_OP("split");
  if (any_distributed({&x})) {
    return dist_dispatch(op_, {x}, {{"split_size", split_size}, {"dim", dim}});
  }
  COIL_CHECK(x.dim() > 0, "split: cannot split a 0-d tensor");
  const int64_t d = normalize_dim("split", dim, x.dim()), n = x.sizes()[d];
  COIL_CHECK(split_size > 0 || (split_size == 0 && n == 0),
             "split: split_size must be positive, got ", split_size, " for dim ", d, " of size ",
             n);
  if (n == 0) return {narrow(x, d, 0, 0)};
  TensorList out;
  for (int64_t off = 0; off < n; off += split_size)
    out.push_back(narrow(x, d, off, std::min(split_size, n - off)));
  return out;
}

TensorList split(const Tensor& x, const Shape& split_sizes, int64_t dim) {
  COIL_OP("split");
  if (any_distributed({&x})) {
    return dist_dispatch(op_, {x}, {{"split_sizes", split_sizes}, {"dim", dim}});
  }
  COIL_CHECK(x.dim() > 0, "split: cannot split a 0-d tensor");
  const int64_t d = normalize_dim("split", dim, x.dim()), n = x.sizes()[d];
  int64_t total = 0;
  for (int64_t s : split_sizes) {
    COIL_CHECK(s >= 0, "split: split_sizes ", shape_str(split_sizes), " has the negative size ", s);
    total += s;
  }
  COIL_CHECK(total == n, "split: split_sizes ", shape_str(split_sizes), " sum to ", total,
             " but dim ", d, " of ", x.shape_str(), " has size ", n);
  TensorList out;
  int64_t off = 0;
  for (int64_t s : split_sizes) {
    out.push_back(narrow(x, d, off, s));
    off += s;
  }
  return out;
}

TensorList chunk(const Tensor& x, int64_t chunks, int64_t dim) {
  COIL_OP("chunk");
  if (any_distributed({&x})) return dist_dispatch(op_, {x}, {{"chunks", chunks}, {"dim", dim}});
  COIL_CHECK(chunks > 0, "chunk: chunks must be positive, got ", chunks);
  COIL_CHECK(x.dim() > 0, "chunk: cannot chunk a 0-d tensor");
  const int64_t d = normalize_dim("chunk", dim, x.dim()), n = x.sizes()[d];
  // torch.chunk: pieces of ceil(n / chunks), so there may be fewer than `chunks` of them; an
  // empty dim still gives `chunks` empty pieces.
  if (n == 0) return split(x, Shape(chunks, 0), d);
  return split(x, (n + chunks - 1) / chunks, d);
}

Tensor pad(const Tensor& x, const Shape& pads, Scalar value) {
  COIL_OP("pad");
  if (any_distributed({&x})) {
    return dist_dispatch(op_, {x}, {{"pads", pads}, {"value", value.to_double()}})[0];
  }
  const int64_t np = static_cast<int64_t>(pads.size()), nd = x.dim();
  COIL_CHECK(np % 2 == 0, "pad: pads ", shape_str(pads), " must have an even length, got ", np);
  COIL_CHECK(np / 2 <= nd, "pad: pads ", shape_str(pads), " pad ", np / 2,
             " dims but the input of shape ", x.shape_str(), " has ", nd);
  Shape os = x.sizes();
  for (int64_t j = 0; j < np / 2; ++j) {
    const int64_t k = nd - 1 - j;
    os[k] = x.sizes()[k] + pads[2 * j] + pads[2 * j + 1];
    COIL_CHECK(os[k] >= 0, "pad: pads (", pads[2 * j], ", ", pads[2 * j + 1], ") make dim ", k,
               " of size ", x.sizes()[k], " negative (", os[k], ") for input ", x.shape_str());
  }
  Tensor out = full(os, value, Options(x.dtype(), x.device()));
  {
    // Copy the part of x that survives cropping into its place inside the padding.
    NoGradGuard g;
    Tensor src = detach(x), dst = out;
    bool empty_overlap = false;
    for (int64_t j = 0; j < np / 2; ++j) {
      const int64_t k = nd - 1 - j, lo = pads[2 * j], hi = pads[2 * j + 1];
      const int64_t s0 = std::max<int64_t>(0, -lo);
      const int64_t len = x.sizes()[k] - s0 - std::max<int64_t>(0, -hi);
      if (len <= 0) {
        empty_overlap = true;
        break;
      }
      src = narrow(src, k, s0, len);
      dst = narrow(dst, k, std::max<int64_t>(0, lo), len);
    }
    if (!empty_overlap) dst.copy_(src);
  }
  if (needs_grad({&x})) {
    Shape neg(pads.size());
    for (size_t i = 0; i < pads.size(); ++i) neg[i] = -pads[i];
    // Undoing the padding crops what was added and zero-fills what was cropped.
    record("pad", {x}, {out}, [neg](const TensorList& g) { return TensorList{pad(g[0], neg)}; });
  }
  check_anomaly("pad", {x}, {out});
  return out;
}

Tensor repeat_interleave(const Tensor& x, int64_t repeats, int64_t dim) {
  COIL_OP("repeat_interleave");
  if (any_distributed({&x})) {
    return dist_dispatch(op_, {x}, {{"repeats", repeats}, {"dim", dim}})[0];
  }
  COIL_CHECK(repeats >= 0, "repeat_interleave: repeats must be non-negative, got ", repeats);
  Tensor xs = x.dim() == 0 ? reshape(x, {1}) : x;
  const int64_t d = normalize_dim("repeat_interleave", dim, xs.dim()), n = xs.sizes()[d];
  // index = [0]*r ++ [1]*r ++ ...: an arange broadcast along a new inner dim.
  Tensor idx = reshape(expand(reshape(arange(n, Options(kI64, x.device())), {n, 1}), {n, repeats}),
                       {n * repeats});
  return index_select(xs, d, idx);
}

Tensor repeat_interleave(const Tensor& x, const Tensor& repeats, int64_t dim) {
  COIL_OP("repeat_interleave");
  if (any_distributed({&x, &repeats})) {
    return dist_dispatch(op_, {x, repeats}, {{"dim", dim}})[0];
  }
  COIL_CHECK(repeats.dtype() == kI64 || repeats.dtype() == kI32,
             "repeat_interleave: repeats must be int64 or int32, got ", repeats.dtype());
  COIL_CHECK(repeats.dim() <= 1, "repeat_interleave: repeats must be 1-d, got shape ",
             repeats.shape_str());
  Tensor xs = x.dim() == 0 ? reshape(x, {1}) : x;
  const int64_t d = normalize_dim("repeat_interleave", dim, xs.dim()), n = xs.sizes()[d];
  // The output's size depends on the values, so they come to the host.
  std::vector<int64_t> r = to_vector<int64_t>(repeats);
  if (r.size() == 1 && n != 1) return repeat_interleave(x, r[0], dim);
  COIL_CHECK(static_cast<int64_t>(r.size()) == n, "repeat_interleave: repeats has ", r.size(),
             " entries but dim ", d, " of ", x.shape_str(), " has size ", n);
  std::vector<int64_t> idx;
  for (int64_t i = 0; i < n; ++i) {
    COIL_CHECK(r[i] >= 0, "repeat_interleave: repeats must be non-negative, got ", r[i],
               " at position ", i);
    idx.insert(idx.end(), static_cast<size_t>(r[i]), i);
  }
  return index_select(xs, d, tensor(idx).to(x.device()));
}

namespace {
bool has_attr(const Attrs& a, const char* name) {
  return std::any_of(a.begin(), a.end(), [name](const Attr& x) { return x.name == name; });
}

void register_shape() {
  using GC = GradcheckCase;
  auto reg = [](const char* name, BoxedFn boxed, std::function<GC()> gc) {
    OpInfo& o = register_op(name, "shape");
    o.composite = true;  // copies into views, views and index_select: no kernel of its own
    o.boxed = std::move(boxed);
    o.gradcheck = std::move(gc);
  };
  reg(
      "cat",
      [](const TensorList& i, const Attrs& a) {
        return TensorList{cat(i, attr_or<int64_t>(a, "dim", 0))};
      },
      [] {
        return GC{{detail::gc_rand({2, 3}), detail::gc_rand({2, 1}), detail::gc_rand({2, 4})},
                  [](const TensorList& x) { return cat(x, -1); }};
      });
  reg(
      "stack",
      [](const TensorList& i, const Attrs& a) {
        return TensorList{stack(i, attr_or<int64_t>(a, "dim", 0))};
      },
      [] {
        return GC{{detail::gc_rand({3, 2}), detail::gc_rand({3, 2})},
                  [](const TensorList& x) { return stack(x, 1); }};
      });
  reg(
      "split",
      [](const TensorList& i, const Attrs& a) {
        int64_t d = attr_or<int64_t>(a, "dim", 0);
        if (has_attr(a, "split_sizes")) return split(i[0], attr<Shape>(a, "split_sizes"), d);
        return split(i[0], attr<int64_t>(a, "split_size"), d);
      },
      [] {
        // pieces scaled differently, so a gradient routed to the wrong piece shows
        return GC{{detail::gc_rand({7, 2})}, [](const TensorList& x) {
                    TensorList p = split(x[0], 3, 0);
                    return cat({p[0], p[1] * 2.0, p[2] * 3.0}, 0);
                  }};
      });
  reg(
      "chunk",
      [](const TensorList& i, const Attrs& a) {
        return chunk(i[0], attr<int64_t>(a, "chunks"), attr_or<int64_t>(a, "dim", 0));
      },
      [] {
        return GC{{detail::gc_rand({2, 7})}, [](const TensorList& x) {
                    TensorList p = chunk(x[0], 3, 1);
                    return cat({p[0] * 3.0, p[1], p[2] * -2.0}, 1);
                  }};
      });
  reg(
      "pad",
      [](const TensorList& i, const Attrs& a) {
        return TensorList{pad(i[0], attr<Shape>(a, "pads"), attr_or<double>(a, "value", 0.0))};
      },
      [] {
        return GC{{detail::gc_rand({3, 4})}, [](const TensorList& x) {
                    return pad(x[0], {1, -1, 2, 0}, 0.5);
                  }};
      });
  reg(
      "repeat_interleave",
      [](const TensorList& i, const Attrs& a) {
        int64_t d = attr<int64_t>(a, "dim");
        if (i.size() > 1) return TensorList{repeat_interleave(i[0], i[1], d)};
        return TensorList{repeat_interleave(i[0], attr<int64_t>(a, "repeats"), d)};
      },
      [] {
        return GC{{detail::gc_rand({3, 2})},
                  [](const TensorList& x) { return repeat_interleave(x[0], 2, 0); }};
      });
}
OpRegistrar reg(register_shape);
}  // namespace

}  // namespace coil
