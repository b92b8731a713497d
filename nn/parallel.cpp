#include "parallel.h"

#include <map>
#include <set>

#include "../autograd/grad_mode.h"
#include "../dist/dtensor.h"

namespace coil::nn {

void parallelize_module(Module& root, const dist::DeviceMesh& mesh,
                        const std::vector<std::pair<std::string, ParallelStyle>>& plan) {
  COIL_CHECK(mesh.ndim() == 1, "parallelize_module: needs a 1-d mesh, got ", mesh.str());
  std::map<std::string, dist::Placement> where;
  std::set<std::string> names;
  for (const auto& [name, t] : root.named_parameters()) names.insert(name);
  for (const auto& [path, style] : plan) {
    COIL_CHECK(names.count(path + ".weight"), "parallelize_module: '", path,
               "' is not a Linear module of this model (no parameter '", path, ".weight')");
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
