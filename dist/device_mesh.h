// DeviceMesh: an n-d grid of ranks with named dims ("dp", "cp", "ep", "tp") and one process
// group per dim (the ranks that differ from this one along that dim only).
//
//   dist::DeviceMesh mesh({2, 2}, {"dp", "tp"});   // world ranks 0..3, row-major
//   mesh.group("tp")->all_reduce(t);              // this rank's tp pair
//   dist::DeviceMesh tp = mesh["tp"];             // the 1-d sub-mesh through this rank
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "process_group.h"

namespace coil::dist {

class DeviceMesh {
 public:
  // Collective over base (the world when null): every member calls it with the same arguments
  // (also the ranks that are not in the mesh). ranks: base's ranks in row-major mesh order, by
  // default 0 .. prod(shape) - 1. The groups are splits of base, so a base from
  // dist/nccl/nccl_group.h gives NCCL groups for CUDA tensors.
  DeviceMesh(const std::vector<int64_t>& shape, const std::vector<std::string>& names,
             const std::vector<int>& ranks = {}, const GroupPtr& base = nullptr);
  // The 1-d mesh over the whole world.
  static DeviceMesh world(const std::string& name = "world");
  // The 1-d mesh over an existing group, in its rank order (local: no collective; only the
  // group's members call it).
  static DeviceMesh from_group(const GroupPtr& group, const std::string& name);

  int64_t ndim() const { return static_cast<int64_t>(impl_->shape.size()); }
  const std::vector<int64_t>& shape() const { return impl_->shape; }
  const std::vector<std::string>& names() const { return impl_->names; }
  const std::vector<int>& ranks() const { return impl_->ranks; }  // row-major
  int64_t size() const { return static_cast<int64_t>(impl_->ranks.size()); }
  int64_t size(int64_t dim) const { return impl_->shape.at(check_dim(dim)); }
  int64_t size(const std::string& name) const { return size(dim_index(name)); }
  int64_t dim_index(const std::string& name) const;  // coil::Error naming the known dims
  bool contains_me() const { return !impl_->coord.empty(); }
  // This rank's coordinate (an error on a rank outside the mesh).
  const std::vector<int64_t>& coordinate() const;
  int64_t coordinate(int64_t dim) const { return coordinate().at(check_dim(dim)); }
  // The group along dim through this rank.
  const GroupPtr& group(int64_t dim) const;
  const GroupPtr& group(const std::string& name) const { return group(dim_index(name)); }
  // The sub-mesh of these dims through this rank; it shares this mesh's groups.
  DeviceMesh slice(const std::vector<std::string>& names) const;
  DeviceMesh operator[](const std::string& name) const { return slice({name}); }
  bool operator==(const DeviceMesh& o) const;
  bool operator!=(const DeviceMesh& o) const { return !(*this == o); }
  std::string str() const;  // "DeviceMesh(dp=2, tp=2)"

 private:
  struct Impl {
    std::vector<int64_t> shape;
    std::vector<std::string> names;
    std::vector<int> ranks;
    std::vector<int64_t> coord;  // empty when this rank is not in the mesh
    std::vector<GroupPtr> groups;
  };
  explicit DeviceMesh(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}
  int64_t check_dim(int64_t dim) const;
  std::shared_ptr<const Impl> impl_;
};

}  // namespace coil::dist
