// Tensor parallelism for nn modules (Megatron's layout, PyTorch's parallelize_module):
//
//   dist::DeviceMesh tp = dist::DeviceMesh::world("tp");
//   nn::parallelize_module(*model, tp, {{"backbone.layers.0.mixer.in_proj",
//   nn::ParallelStyle::kColwise},
//                                       {"backbone.layers.0.mixer.out_proj",
//                                       nn::ParallelStyle::kRowwise}});
//
// Colwise splits a Linear's output features over the mesh (weight and bias Shard(0)), Rowwise
// its input features (weight Shard(1), bias Replicate). Sequence (Megatron's sequence
// parallelism, PyTorch's SequenceParallel) runs a norm on the sequence dim's pieces: its input
// becomes Shard(1) (a plain tensor is taken as this rank's piece of the sequence; a DTensor is
// redistributed, a local chunk when it is Replicate) and so does its output, its weight stays
// Replicate with a gradient summed over the ranks. Every other parameter and buffer becomes a
// Replicate DTensor on the same mesh. The model's forward runs unchanged: the
// sharding rules keep a colwise output sharded on its last dim, feed it to a rowwise layer
// without communication and leave that output Partial(sum), reduced where the next op needs
// it. Optimizers update each rank's pieces (nn/optim).
#pragma once
#include <string>
#include <utility>
#include <vector>

#include "../dist/device_mesh.h"
#include "module.h"

namespace coil::nn {

enum class ParallelStyle { kColwise, kRowwise, kSequence };

// plan: (module path, style): Linear modules for kColwise and kRowwise, RMSNorm for kSequence;
// an unknown path is an error naming it.
void parallelize_module(Module& root, const dist::DeviceMesh& mesh,
                        const std::vector<std::pair<std::string, ParallelStyle>>& plan);

}  // namespace coil::nn
