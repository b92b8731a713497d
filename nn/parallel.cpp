#include "parallel.h"

#include <map>

#include "../autograd/grad_mode.h"
#include "../dist/dtensor.h"
#include "layers.h"

namespace coil::nn {

void parallelize_module(Module& root, const dist::DeviceMesh& mesh,
                        const std::vector<std::pair<std::string, ParallelStyle>>& plan) {
  COIL_CHECK(mesh.ndim() == 1, "parallelize_module: needs a 1-d mesh, got ", mesh.str());
  std::map<std::string, dist::Placement> where;
  for (const auto& [path, style] : plan) {
    if (style == ParallelStyle::kSequence) {
      auto norm = std::dynamic_pointer_cast<RMSNorm>(root.find_module(path));
      COIL_CHECK(norm, "parallelize_module: '", path,
                 "' is not an RMSNorm module of this model (Sequence parallelism runs norms)");
      norm->forward_pre_hook = [mesh](const Tensor& x) {
        const dist::Placements seq = {dist::Shard(1)};
        COIL_CHECK(x.dim() >= 2, "SequenceParallel: input must be (batch, L, ...), got ",
                   x.shape_str());
        if (!dist::is_dtensor(x)) return dist::from_local(x, mesh, seq);
        return dist::dtensor_spec(x).placements == seq ? x : dist::redistribute(x, seq);
      };
      continue;
    }
    COIL_CHECK(std::dynamic_pointer_cast<Linear>(root.find_module(path)), "parallelize_module: '",
               path, "' is not a Linear module of this model");
    const bool col = style == ParallelStyle::kColwise;
    where[path + ".weight"] = col ? dist::Shard(0) : dist::Shard(1);
    where[path + ".bias"] = col ? dist::Shard(0) : dist::Replicate();
  }
  NoGradGuard ng;
  root.replace_tensors([&](const std::string& name, const Tensor& t) {
    if (!t.defined() || dist::is_dtensor(t)) return t;
    auto it = where.find(name);
    Tensor d = dist::distribute_tensor(t.detach(), mesh,
                                       {it == where.end() ? dist::Replicate() : it->second});
    if (t.requires_grad()) d.requires_grad_(true);
    return d;
  });
}

}  // namespace coil::nn
