#include "functional.h"

#include <numeric>

#include "../autograd/node.h"
#include "../ops/binary.h"
#include "../ops/creation.h"

namespace coil::dist::functional {
namespace {

GroupPtr group_or_world(const GroupPtr& g) { return g ? g : world(); }

int64_t wrap_dim(int64_t dim, const Tensor& x, const char* op) {
  const int64_t n = x.dim();
  COIL_CHECK(n >= 1, op, ": needs a tensor with at least one dimension, got shape ", x.shape_str());
  COIL_CHECK(dim >= -n && dim < n, op, ": dim ", dim, " is out of range for shape ", x.shape_str());
  return dim < 0 ? dim + n : dim;
}

// dim moved to the front, contiguous: the rows the process group moves.
Tensor to_rows(const Tensor& x, int64_t dim) {
  return (dim == 0 ? x : x.transpose(0, dim)).contiguous();
}
Tensor from_rows(const Tensor& r, int64_t dim) {
  return dim == 0 ? r : r.transpose(0, dim).contiguous();
}

Tensor empty_rows(const Tensor& like, int64_t rows) {
  Shape s = like.sizes();
  s[0] = rows;
  return zeros(s, Options(like.dtype()));
}

int64_t total(const std::vector<int64_t>& c) { return std::accumulate(c.begin(), c.end(), 0LL); }

// all_gather along dim with known sizes (no exchange), without recording.
Tensor gather_known(const Tensor& x, int64_t dim, const GroupPtr& pg,
                    const std::vector<int64_t>& sizes) {
  NoGradGuard ng;
  Tensor rows = to_rows(x.detach(), dim);
  Tensor out = empty_rows(rows, total(sizes));
  pg->all_gather(out, rows, sizes, blocking())->wait();
  return from_rows(out, dim);
}

// reduce_scatter along dim with known sizes, without recording.
Tensor scatter_known(const Tensor& x, int64_t dim, ReduceOp op, const GroupPtr& pg,
                     const std::vector<int64_t>& sizes) {
  NoGradGuard ng;
  Tensor rows = to_rows(x.detach(), dim);
  Tensor out = empty_rows(rows, sizes[pg->rank()]);
  pg->reduce_scatter(out, rows, op, sizes, blocking())->wait();
  return from_rows(out, dim);
}

void check_differentiable(const Tensor& x, ReduceOp op, const char* name) {
  COIL_CHECK(!(needs_grad({&x}) && (op == ReduceOp::kMax || op == ReduceOp::kMin)), name, ": ",
             reduce_op_name(op), " has no gradient; detach the input or use sum or avg");
}

}  // namespace

Tensor all_reduce(const Tensor& x, ReduceOp op, const GroupPtr& g) {
  GroupPtr pg = group_or_world(g);
  check_differentiable(x, op, "all_reduce");
  Tensor y;
  {
    NoGradGuard ng;
    y = x.detach().contiguous().clone();
    pg->all_reduce(y, op, blocking())->wait();
  }
  if (needs_grad({&x}))
    record("dist.all_reduce", {x}, {y},
           [pg, op](const TensorList& gr) -> TensorList { return {all_reduce(gr[0], op, pg)}; });
  return y;
}

Tensor all_gather(const Tensor& x, int64_t dim, const GroupPtr& g) {
  GroupPtr pg = group_or_world(g);
  const int64_t d = wrap_dim(dim, x, "all_gather");
  // Every rank's shape: only dim may differ.
  std::vector<int64_t> sizes(pg->size());
  {
    NoGradGuard ng;
    const int64_t nd = x.dim();
    Tensor mine = zeros({1, nd}, Options(kI64)), all = zeros({pg->size(), nd}, Options(kI64));
    for (int64_t i = 0; i < nd; ++i) mine.data_ptr<int64_t>()[i] = x.size(i);
    pg->all_gather(all, mine, {}, blocking())->wait();
    const int64_t* a = all.data_ptr<int64_t>();
    for (int r = 0; r < pg->size(); ++r) {
      sizes[r] = a[r * nd + d];
      for (int64_t i = 0; i < nd; ++i)
        COIL_CHECK(i == d || a[r * nd + i] == x.size(i), "all_gather: rank ", r, " has size ",
                   a[r * nd + i], " in dim ", i, " where rank ", pg->rank(), " has ", x.size(i),
                   "; only dim ", d, " may differ");
    }
  }
  Tensor y = gather_known(x, d, pg, sizes);
  if (needs_grad({&x}))
    record("dist.all_gather", {x}, {y}, [pg, d, sizes](const TensorList& gr) -> TensorList {
      return {reduce_scatter(gr[0], d, ReduceOp::kSum, pg, sizes)};
    });
  return y;
}

Tensor reduce_scatter(const Tensor& x, int64_t dim, ReduceOp op, const GroupPtr& g,
                      const std::vector<int64_t>& sizes_in) {
  GroupPtr pg = group_or_world(g);
  const int64_t d = wrap_dim(dim, x, "reduce_scatter");
  check_differentiable(x, op, "reduce_scatter");
  std::vector<int64_t> sizes = sizes_in.empty() ? shard_sizes(x.size(d), pg->size()) : sizes_in;
  COIL_CHECK(static_cast<int>(sizes.size()) == pg->size(), "reduce_scatter: sizes has ",
             sizes.size(), " entries for a group of ", pg->size());
  COIL_CHECK(total(sizes) == x.size(d), "reduce_scatter: sizes sum to ", total(sizes), ", dim ", d,
             " of shape ", x.shape_str(), " has ", x.size(d));
  Tensor y = scatter_known(x, d, op, pg, sizes);
  if (needs_grad({&x}))
    record("dist.reduce_scatter", {x}, {y}, [pg, d, op, sizes](const TensorList& gr) -> TensorList {
      Tensor full = all_gather(gr[0], d, pg);
      return {op == ReduceOp::kAvg ? full * (1.0 / pg->size()) : full};
    });
  return y;
}

Tensor all_to_all(const Tensor& x, const std::vector<int64_t>& send_counts,
                  const std::vector<int64_t>& recv_counts, const GroupPtr& g) {
  GroupPtr pg = group_or_world(g);
  wrap_dim(0, x, "all_to_all");
  const std::vector<int64_t> sc =
      send_counts.empty() ? std::vector<int64_t>(pg->size(), x.size(0) / pg->size()) : send_counts;
  COIL_CHECK(static_cast<int>(sc.size()) == pg->size(), "all_to_all: send_counts has ", sc.size(),
             " entries for a group of ", pg->size());
  COIL_CHECK(!send_counts.empty() || x.size(0) % pg->size() == 0, "all_to_all: ", x.size(0),
             " rows do not split evenly over ", pg->size(), " ranks; pass counts");
  const std::vector<int64_t> rc = recv_counts.empty() ? sc : recv_counts;
  Tensor y;
  {
    NoGradGuard ng;
    Tensor rows = x.detach().contiguous();
    y = empty_rows(rows, total(rc));
    pg->all_to_all(y, rows, sc, rc, blocking())->wait();
  }
  if (needs_grad({&x}))
    record("dist.all_to_all", {x}, {y}, [pg, sc, rc](const TensorList& gr) -> TensorList {
      return {all_to_all(gr[0], rc, sc, pg)};
    });
  return y;
}

Tensor send(const Tensor& x, int dst, const GroupPtr& g, int tag) {
  GroupPtr pg = group_or_world(g);
  {
    NoGradGuard ng;
    pg->send(x.detach(), dst, tag)->wait();
  }
  Tensor token = zeros({}, Options(is_floating(x.dtype()) ? x.dtype() : kF32));
  if (needs_grad({&x})) {
    const Shape shape = x.sizes();
    const DType dt = x.dtype();
    record("dist.send", {x}, {token}, [pg, dst, tag, shape, dt](const TensorList&) -> TensorList {
      return {recv(shape, dt, dst, pg, tag)};
    });
  }
  return token;
}

Tensor recv(const Shape& shape, DType dtype, int src, const GroupPtr& g, int tag) {
  GroupPtr pg = group_or_world(g);
  Tensor y = zeros(shape, Options(dtype));
  {
    NoGradGuard ng;
    pg->recv(y, src, tag)->wait();
  }
  if (GradMode::is_enabled() && is_floating(dtype))
    record("dist.recv", {}, {y}, [pg, src, tag](const TensorList& gr) -> TensorList {
      Tensor grad = gr[0];
      send(grad, src, pg, tag);
      return {};
    });
  return y;
}

}  // namespace coil::dist::functional
