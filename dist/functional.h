// Differentiable collectives, for use inside models: each returns a new tensor and records a
// backward that is the matching collective (all_gather <-> reduce_scatter, all_reduce ->
// all_reduce, all_to_all -> the reverse all_to_all, send <-> recv). Every member of the group
// calls them in the same order, forward and backward. `g` defaults to the world.
#pragma once
#include <vector>

#include "process_group.h"

namespace coil::dist::functional {

// The reduction of every rank's x (same shape everywhere). The gradient of sum (avg) is the
// sum (average) of the ranks' output gradients; max and min have none.
Tensor all_reduce(const Tensor& x, ReduceOp op = ReduceOp::kSum, const GroupPtr& g = nullptr);
// The ranks' tensors concatenated along dim, in rank order; their sizes along dim may differ
// (empty included), the other sizes must agree.
Tensor all_gather(const Tensor& x, int64_t dim = 0, const GroupPtr& g = nullptr);
// This rank's block along dim of the reduction of every rank's x. sizes[r] is rank r's block
// (empty: shard_sizes(x.size(dim), group size), the Shard placement's split).
Tensor reduce_scatter(const Tensor& x, int64_t dim = 0, ReduceOp op = ReduceOp::kSum,
                      const GroupPtr& g = nullptr, const std::vector<int64_t>& sizes = {});
// Rows of x (dim 0) to the ranks, send_counts[r] rows to rank r in rank order; the result holds
// recv_counts[r] rows from rank r. Empty counts: equal blocks.
Tensor all_to_all(const Tensor& x, const std::vector<int64_t>& send_counts = {},
                  const std::vector<int64_t>& recv_counts = {}, const GroupPtr& g = nullptr);
// Sends x to dst. Returns a zero scalar to add to this rank's loss: its backward receives the
// gradient of x from dst's matching recv.
Tensor send(const Tensor& x, int dst, const GroupPtr& g = nullptr, int tag = 0);
// Receives a tensor of this shape and dtype from src; in backward its gradient goes back to src.
Tensor recv(const Shape& shape, DType dtype, int src, const GroupPtr& g = nullptr, int tag = 0);

}  // namespace coil::dist::functional
