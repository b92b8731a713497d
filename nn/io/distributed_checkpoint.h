// Distributed checkpoints: every rank writes the pieces of DTensors it owns at once, and a later
// run loads them on any world size and mesh shape.
//
//   dir/shard-00000.safetensors ...  one file per saving rank: its pieces, each under the
//                                    tensor's name (a replicated piece is written once)
//   dir/metadata.json                per tensor: dtype, global shape, and every piece's file,
//                                    offsets and sizes in the global tensor
//
// It lives in nn/io, beside the safetensors format it writes (dist/ sits below nn/ and may not
// use it); it is collective over the world.
#pragma once
#include <string>

#include "safetensors.h"

namespace coil::io {

// Collective: every rank passes the same names in the same order (DTensors on any mesh, or
// plain tensors, which rank 0 writes). Partial placements are reduced first. Files are written
// to temporary names and renamed; metadata.json last, after every shard is in place.
void save_distributed(const std::string& dir, const NamedTensors& state);

// Collective: fills the given tensors in place (a DTensor's local piece, or a plain tensor,
// whole) from a checkpoint saved on any world size. Every name must be in the checkpoint with
// the same dtype and global shape. A Partial(sum) target gets the value on the first rank of
// each partial mesh dim and zeros on the others.
void load_distributed(const std::string& dir, const NamedTensors& state);

}  // namespace coil::io
