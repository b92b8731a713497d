// Tensor parallelism for nn modules (Megatron's layout, PyTorch's parallelize_module):
//
//   dist::DeviceMesh tp = dist::DeviceMesh::world("tp");
//   nn::parallelize_module(*model, tp, {{"backbone.layers.0.mixer.in_proj",
//   nn::ParallelStyle::kColwise},
//                                       {"backbone.layers.0.mixer.out_proj",
//                                       nn::ParallelStyle::kRowwise}});
//
// Colwise splits a Linear's output features over the mesh (weight and bias Shard(0)), Rowwise
// its input features (weight Shard(1), bias Replicate); every other parameter and buffer
// becomes a Replicate DTensor on the same mesh. The model's forward runs unchanged: the
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

enum class ParallelStyle { kColwise, kRowwise };

// plan: (module path, style) for Linear modules; an unknown path is an error naming it.
void parallelize_module(Module& root, const dist::DeviceMesh& mesh,
                        const std::vector<std::pair<std::string, ParallelStyle>>& plan);

}  // namespace coil::nn
