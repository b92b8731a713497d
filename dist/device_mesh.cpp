#include "device_mesh.h"

#include <algorithm>
#include <set>

namespace coil::dist {

DeviceMesh::DeviceMesh(const std::vector<int64_t>& shape, const std::vector<std::string>& names,
                       const std::vector<int>& ranks_in, const GroupPtr& base) {
  GroupPtr w = base ? base : dist::world();
  COIL_CHECK(!shape.empty(), "DeviceMesh: needs at least one dim");
  COIL_CHECK(names.size() == shape.size(), "DeviceMesh: ", shape.size(), " dims but ", names.size(),
             " names");
  int64_t total = 1;
  for (size_t i = 0; i < shape.size(); ++i) {
    COIL_CHECK(shape[i] >= 1, "DeviceMesh: dim '", names[i], "' has size ", shape[i]);
    total *= shape[i];
  }
  std::set<std::string> seen(names.begin(), names.end());
  COIL_CHECK(seen.size() == names.size(), "DeviceMesh: dim names must be distinct");
  COIL_CHECK(!ranks_in.empty() || total <= w->size(), "DeviceMesh: shape holds ", total,
             " ranks, the world has ", w->size());
  std::vector<int> ranks = ranks_in;
  if (ranks.empty())
    for (int r = 0; r < total; ++r) ranks.push_back(r);
  COIL_CHECK(static_cast<int64_t>(ranks.size()) == total, "DeviceMesh: shape holds ", total,
             " ranks, ", ranks.size(), " given");
  std::set<int> distinct(ranks.begin(), ranks.end());
  COIL_CHECK(distinct.size() == ranks.size(), "DeviceMesh: ranks must be distinct");
  for (int r : ranks)
    COIL_CHECK(r >= 0 && r < w->size(), "DeviceMesh: rank ", r, " is not in the world of ",
               w->size());

  auto impl = std::make_shared<Impl>();
  impl->shape = shape;
  impl->names = names;
  for (int r : ranks) impl->ranks.push_back(w->world_ranks()[r]);
  const int64_t nd = static_cast<int64_t>(shape.size());
  auto pos = std::find(ranks.begin(), ranks.end(), w->rank());
  if (pos != ranks.end()) {
    int64_t lin = pos - ranks.begin();
    impl->coord.assign(nd, 0);
    for (int64_t d = nd - 1; d >= 0; --d) {
      impl->coord[d] = lin % shape[d];
      lin /= shape[d];
    }
  }
  // One split of the world per dim: the color numbers the line through this rank along dim
  // (its coordinate with dim dropped); ranks outside the mesh take a color of their own.
  for (int64_t d = 0; d < nd; ++d) {
    int color = 0, key = 0;
    if (!impl->coord.empty()) {
      int64_t c = 0;
      for (int64_t e = 0; e < nd; ++e)
        if (e != d) c = c * shape[e] + impl->coord[e];
      color = static_cast<int>(c);
      key = static_cast<int>(impl->coord[d]);
    } else {
      color = static_cast<int>(total);
    }
    GroupPtr g = w->split(color, key);
    impl->groups.push_back(impl->coord.empty() ? nullptr : g);
  }
  impl_ = std::move(impl);
}

DeviceMesh DeviceMesh::from_group(const GroupPtr& group, const std::string& name) {
  COIL_CHECK(group != nullptr, "DeviceMesh::from_group: no group");
  auto impl = std::make_shared<Impl>();
  impl->shape = {group->size()};
  impl->names = {name};
  impl->ranks = group->world_ranks();
  impl->coord = {group->rank()};
  impl->groups = {group};
  return DeviceMesh(std::move(impl));
}

DeviceMesh DeviceMesh::world(const std::string& name) {
  return DeviceMesh({dist::world()->size()}, {name});
}

int64_t DeviceMesh::check_dim(int64_t dim) const {
  COIL_CHECK(dim >= 0 && dim < ndim(), "DeviceMesh: dim ", dim, " is out of range for ", str());
  return dim;
}

int64_t DeviceMesh::dim_index(const std::string& name) const {
  for (int64_t i = 0; i < ndim(); ++i)
    if (impl_->names[i] == name) return i;
  fail("DeviceMesh: no dim named '", name, "' in ", str());
}

const std::vector<int64_t>& DeviceMesh::coordinate() const {
  COIL_CHECK(contains_me(), "DeviceMesh: rank ", dist::world()->rank(), " is not in ", str());
  return impl_->coord;
}

const GroupPtr& DeviceMesh::group(int64_t dim) const {
  check_dim(dim);
  COIL_CHECK(contains_me(), "DeviceMesh: rank ", dist::world()->rank(), " is not in ", str(),
             ", so it has no group along '", impl_->names[dim], "'");
  return impl_->groups[dim];
}

DeviceMesh DeviceMesh::slice(const std::vector<std::string>& names) const {
  COIL_CHECK(!names.empty(), "DeviceMesh::slice: no dims named");
  const std::vector<int64_t>& me = coordinate();
  auto impl = std::make_shared<Impl>();
  std::vector<int64_t> dims;
  for (const std::string& n : names) {
    const int64_t d = dim_index(n);
    COIL_CHECK(std::find(dims.begin(), dims.end(), d) == dims.end(), "DeviceMesh::slice: dim '", n,
               "' named twice");
    dims.push_back(d);
    impl->shape.push_back(impl_->shape[d]);
    impl->names.push_back(n);
    impl->groups.push_back(impl_->groups[d]);
    impl->coord.push_back(me[d]);
  }
  // the ranks of the sub-mesh, row-major over the kept dims, the other coordinates fixed
  int64_t count = 1;
  for (int64_t s : impl->shape) count *= s;
  for (int64_t lin = 0; lin < count; ++lin) {
    std::vector<int64_t> c = me;
    int64_t rest = lin;
    for (int64_t k = static_cast<int64_t>(dims.size()) - 1; k >= 0; --k) {
      c[dims[k]] = rest % impl->shape[k];
      rest /= impl->shape[k];
    }
    int64_t flat = 0;
    for (int64_t d = 0; d < ndim(); ++d) flat = flat * impl_->shape[d] + c[d];
    impl->ranks.push_back(impl_->ranks[flat]);
  }
  return DeviceMesh(std::move(impl));
}

bool DeviceMesh::operator==(const DeviceMesh& o) const {
  return impl_ == o.impl_ || (impl_->shape == o.impl_->shape && impl_->ranks == o.impl_->ranks &&
                              impl_->names == o.impl_->names);
}

std::string DeviceMesh::str() const {
  std::string s = "DeviceMesh(";
  for (int64_t i = 0; i < ndim(); ++i)
    s += (i ? ", " : "") + impl_->names[i] + "=" + std::to_string(impl_->shape[i]);
  return s + ")";
}

}  // namespace coil::dist
