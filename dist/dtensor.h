// DTensor: a Tensor whose storage is this rank's local piece of a global tensor, and whose spec
// says how the pieces make the whole: one Placement per mesh dim.
//   Shard(d)      the global tensor is split along d (torch.chunk's rule: uneven, maybe empty)
//   Replicate()   every rank of the mesh dim holds the same piece
//   Partial(op)   the piece is the op-reduction (sum, avg, max, min) of the ranks' tensors
// Several mesh dims may shard the same tensor dim: the earlier mesh dim splits first.
//
//   auto x = dist::distribute_tensor(w, mesh, {dist::Shard(0)});
//   auto y = dist::redistribute(x, {dist::Replicate()});        // all_gather
//   Tensor whole = dist::full_tensor(y);
//
// As in PyTorch, a DTensor's sizes() are the global tensor's (composite ops that read shapes
// stay right); its bytes are this rank's piece, which to_local returns. Reading a DTensor's
// data any other way is an error.
// from_local, to_local, redistribute and full_tensor are differentiable; the gradient of a
// DTensor is a DTensor with its placements (Partial ones come back as Replicate).
#pragma once
#include <optional>
#include <string>
#include <vector>

#include "device_mesh.h"

namespace coil::dist {

struct Placement {
  enum class Kind { kShard, kReplicate, kPartial };
  Kind kind = Kind::kReplicate;
  int64_t dim = 0;               // kShard
  ReduceOp op = ReduceOp::kSum;  // kPartial
  bool is_shard() const { return kind == Kind::kShard; }
  bool is_shard(int64_t d) const { return kind == Kind::kShard && dim == d; }
  bool is_replicate() const { return kind == Kind::kReplicate; }
  bool is_partial() const { return kind == Kind::kPartial; }
  bool operator==(const Placement& o) const;
  bool operator!=(const Placement& o) const { return !(*this == o); }
  std::string str() const;  // Shard(0), Replicate(), Partial(sum)
};
using Placements = std::vector<Placement>;
Placement Shard(int64_t dim);
Placement Replicate();
Placement Partial(ReduceOp op = ReduceOp::kSum);
std::string str(const Placements& p);  // [Shard(0), Replicate()]

struct DTensorSpec final : DistSpecBase {
  DeviceMesh mesh;
  Placements placements;
  Shape global_shape;
  Tensor local;  // this rank's piece (a plain tensor); the DTensor shares its storage
  DTensorSpec(DeviceMesh m, Placements p, Shape g, Tensor l = Tensor())
      : mesh(std::move(m)),
        placements(std::move(p)),
        global_shape(std::move(g)),
        local(std::move(l)) {}
};

bool is_dtensor(const Tensor& t);
const DTensorSpec& dtensor_spec(const Tensor& t);  // coil::Error when t is not a DTensor

// This rank's piece of a global shape: its sizes and its offset in each dim.
struct LocalShard {
  Shape sizes, offsets;
};
LocalShard local_shard(const Shape& global, const DeviceMesh& mesh, const Placements& p);

// Every rank passes the same global tensor; each keeps its piece (Partial(sum): the value on
// the mesh dim's first rank, zeros elsewhere; other Partial ops: the value everywhere).
// The result is a leaf; it requires grad when `global` does.
Tensor distribute_tensor(const Tensor& global, const DeviceMesh& mesh, const Placements& p);
// A DTensor over this rank's piece (no copy). Without global_shape, the sizes of the shards
// are exchanged to find it; the pieces must follow the Shard split.
Tensor from_local(const Tensor& local, const DeviceMesh& mesh, const Placements& p,
                  const std::optional<Shape>& global_shape = std::nullopt);
// This rank's piece as a plain tensor (no copy). In backward, the piece's gradient is taken as a
// DTensor with grad_placements (default: the DTensor's own): a Replicate input of a computation
// that each rank runs on different pieces gets a Partial(sum) gradient, as in PyTorch.
Tensor to_local(const Tensor& dtensor,
                const std::optional<Placements>& grad_placements = std::nullopt);
// The same global tensor with other placements: one mesh dim at a time, by the collective the
// transition needs (all_gather, all_reduce, reduce_scatter, all_to_all, or a local chunk).
Tensor redistribute(const Tensor& dtensor, const Placements& p);
Tensor full_tensor(const Tensor& dtensor);  // the whole global tensor on every rank

}  // namespace coil::dist
