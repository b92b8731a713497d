// Sorting and top-k. The sorted dim is moved last and made contiguous, so the kernel sorts rows of
// an [outer, n] matrix; results are permuted back. The backward scatters the gradient of the
// values to the positions the indices name.
#include "sort.h"

#include "copy.h"
#include "creation.h"
#include "index.h"
#include "op_helpers.h"
#include "view.h"

namespace coil {

namespace {

struct Sorted {
  Tensor values, indices;
  int64_t dim = 0;
};

// Runs the sort kernel of op `name` along dim, keeping the first k of each row (k < 0: all).
Sorted run_sort(const char* name, const Tensor& x, int64_t dim, int64_t k, bool descending) {
  const int64_t d = normalize_dim(name, dim, x.dim());
  Tensor xs = x.dim() == 0 ? reshape(detach(x), {1}) : detach(x);
  const int64_t nd = xs.dim(), n = xs.sizes()[d];
  if (k < 0) k = n;
  COIL_CHECK(k <= n, name, ": k ", k, " is out of range for dim ", d, " of size ", n, " (shape ",
             x.shape_str(), ")");
  Shape perm, inv(nd), ps;
  for (int64_t i = 0; i < nd; ++i)
    if (i != d) perm.push_back(i);
  perm.push_back(d);
  int64_t outer = 1;
  for (int64_t i = 0; i < nd; ++i) {
    inv[perm[i]] = i;
    ps.push_back(xs.sizes()[perm[i]]);
    if (i < nd - 1) outer *= ps.back();
  }
  ps.back() = k;
  const DType ct = compute_dtype(x.dtype());
  Sorted s;
  s.dim = d;
  {
    NoGradGuard g;
    Tensor rows = contiguous(detail::as_compute(permute(xs, perm), ct));
    Tensor vals = empty(ps, Options(ct, x.device()));
    Tensor idx = empty(ps, Options(kI64, x.device()));
    Tensor scratch = k < n ? empty({outer, n}, Options(kI64, x.device())) : Tensor();
    kernel_for<SortKernel>(op_info(name), x.device())(vals, idx, scratch, rows, outer, n, k,
                                                      descending);
    s.values = contiguous(permute(vals, inv));
    s.indices = contiguous(permute(idx, inv));
    if (x.dim() == 0) {
      s.values = reshape(s.values, {});
      s.indices = reshape(s.indices, {});
    }
  }
  if (ct != x.dtype()) s.values = detail::cast(s.values, x.dtype());
  return s;
}

// Values sorted (or selected) from x along d: their gradient goes back to where they came from.
void record_sorted(const char* name, const Tensor& x, const Sorted& s) {
  if (!needs_grad({&x})) return;
  SavedTensor si(s.indices, name);
  Shape in = x.sizes();
  int64_t d = s.dim;
  record(name, {x}, {s.values, s.indices}, [si, in, d](const TensorList& g) {
    if (in.empty()) return TensorList{g[0]};
    Tensor z = zeros(in, Options(g[0].dtype(), g[0].device()));
    return TensorList{scatter_add(z, d, si.unpack(), g[0])};
  });
}

}  // namespace

std::pair<Tensor, Tensor> sort(const Tensor& x, int64_t dim, bool descending) {
  COIL_OP("sort");
  if (any_distributed({&x})) {
    TensorList r = dist_dispatch(op_, {x}, {{"dim", dim}, {"descending", descending}});
    return {r[0], r[1]};
  }
  Sorted s = run_sort("sort", x, dim, -1, descending);
  record_sorted("sort", x, s);
  check_anomaly("sort", {x}, {s.values});
  return {s.values, s.indices};
}

Tensor argsort(const Tensor& x, int64_t dim, bool descending) {
  COIL_OP("argsort");
  if (any_distributed({&x})) {
    return dist_dispatch(op_, {x}, {{"dim", dim}, {"descending", descending}})[0];
  }
  return run_sort("argsort", x, dim, -1, descending).indices;
}

std::pair<Tensor, Tensor> topk(const Tensor& x, int64_t k, int64_t dim, bool largest) {
  COIL_OP("topk");
  if (any_distributed({&x})) {
    TensorList r = dist_dispatch(op_, {x}, {{"k", k}, {"dim", dim}, {"largest", largest}});
    return {r[0], r[1]};
  }
  COIL_CHECK(k >= 0, "topk: k must be non-negative, got ", k);
  Sorted s = run_sort("topk", x, dim, k, largest);
  record_sorted("topk", x, s);
  check_anomaly("topk", {x}, {s.values});
  return {s.values, s.indices};
}

namespace {
void register_sort() {
  using GC = GradcheckCase;
  auto reg = [](const char* name, BoxedFn boxed, std::function<GC()> gc) {
    OpInfo& o = register_op(name, "sort");
    o.set_kernel(kCPU, &cpu::sort_kernel);
    o.differentiable = static_cast<bool>(gc);
    o.boxed = std::move(boxed);
    o.gradcheck = std::move(gc);
  };
  reg(
      "sort",
      [](const TensorList& i, const Attrs& a) {
        auto r = sort(i[0], attr_or<int64_t>(a, "dim", -1), attr_or(a, "descending", false));
        return TensorList{r.first, r.second};
      },
      [] {
        return GC{{detail::gc_rand({3, 5})},
                  [](const TensorList& x) { return sort(x[0], 1, true).first; }};
      });
  reg(
      "argsort",
      [](const TensorList& i, const Attrs& a) {
        return TensorList{
            argsort(i[0], attr_or<int64_t>(a, "dim", -1), attr_or(a, "descending", false))};
      },
      nullptr);
  reg(
      "topk",
      [](const TensorList& i, const Attrs& a) {
        auto r = topk(i[0], attr<int64_t>(a, "k"), attr_or<int64_t>(a, "dim", -1),
                      attr_or(a, "largest", true));
        return TensorList{r.first, r.second};
      },
      [] {
        return GC{{detail::gc_rand({4, 6})},
                  [](const TensorList& x) { return topk(x[0], 3, 0, false).first; }};
      });
}
OpRegistrar reg(register_sort);
}  // namespace

}  // namespace coil
