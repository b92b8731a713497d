// DTensor factories, as torch.distributed.tensor.zeros / ones / rand / randn / randint: each rank
// makes only its piece of the global tensor.
//
//   auto w = dist::randn({4096, 1024}, mesh, {dist::Shard(0)});
//
// The random ones hold, piece by piece, the values the single-process call gives after the same
// manual_seed (coil's generator is counter-based, so a piece draws its own elements directly),
// whatever the placements; every rank's generator must be at the same state, which is checked.
// Placements are Shard or Replicate: a new tensor has no pending reduction.
#pragma once
#include "dtensor.h"

namespace coil::dist {

Tensor zeros(const Shape& shape, const DeviceMesh& mesh, const Placements& p, Options o = {});
Tensor ones(const Shape& shape, const DeviceMesh& mesh, const Placements& p, Options o = {});
Tensor rand(const Shape& shape, const DeviceMesh& mesh, const Placements& p, Options o = {});
Tensor randn(const Shape& shape, const DeviceMesh& mesh, const Placements& p, Options o = {});
Tensor randint(int64_t low, int64_t high, const Shape& shape, const DeviceMesh& mesh,
               const Placements& p, Options o = Options(kI64));

}  // namespace coil::dist
