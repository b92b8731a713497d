#include "module.h"

#include <map>
#include <set>

#include "../autograd/autograd.h"
#include "../core/error.h"

namespace coil::nn {

void Module::register_parameter(const std::string& name, Tensor* member, bool requires_grad) {
  COIL_CHECK(member && member->defined(), "register_parameter: '", name, "' is undefined");
  for (auto& s : params_) COIL_CHECK(s.name != name, "register_parameter: '", name, "' twice");
  if (requires_grad && member->is_leaf() && member->is_floating_point())
    member->requires_grad_(true);
  params_.push_back({name, member, true});
}

void Module::register_buffer(const std::string& name, Tensor* member, bool persistent) {
  COIL_CHECK(member && member->defined(), "register_buffer: '", name, "' is undefined");
  buffers_.push_back({name, member, persistent});
}

void Module::add_child(const std::string& name, std::shared_ptr<Module> m) {
  COIL_CHECK(m != nullptr, "register_module: '", name, "' is null");
  for (auto& c : children_) COIL_CHECK(c.first != name, "register_module: '", name, "' twice");
  children_.emplace_back(name, std::move(m));
}

void Module::collect(const std::string& prefix, bool params, bool buffers, bool only_persistent,
                     std::vector<std::pair<std::string, Tensor*>>& out) const {
  if (params)
    for (auto& s : params_) out.emplace_back(prefix + s.name, s.member);
  if (buffers)
    for (auto& s : buffers_)
      if (s.persistent || !only_persistent) out.emplace_back(prefix + s.name, s.member);
  for (auto& [name, child] : children_)
    child->collect(prefix + name + ".", params, buffers, only_persistent, out);
}

static NamedTensors unique_tensors(const std::vector<std::pair<std::string, Tensor*>>& all) {
  std::set<const TensorImpl*> seen;
  NamedTensors out;
  for (auto& [name, t] : all)
    if (seen.insert(t->impl_ptr().get()).second) out.emplace_back(name, *t);
  return out;
}

NamedTensors Module::named_parameters() const {
  std::vector<std::pair<std::string, Tensor*>> all;
  collect("", true, false, false, all);
  return unique_tensors(all);
}

std::vector<Tensor> Module::parameters() const {
  std::vector<Tensor> out;
  for (auto& [name, t] : named_parameters()) out.push_back(t);
  return out;
}

NamedTensors Module::named_buffers() const {
  std::vector<std::pair<std::string, Tensor*>> all;
  collect("", false, true, false, all);
  return unique_tensors(all);
}

NamedTensors Module::state_dict() const {
  std::vector<std::pair<std::string, Tensor*>> all;
  collect("", true, true, true, all);
  NamedTensors out;
  for (auto& [name, t] : all) out.emplace_back(name, t->detach());
  return out;
}

NamedTensors Module::state_dict_untied() const {
  std::vector<std::pair<std::string, Tensor*>> all;
  collect("", true, true, true, all);
  NamedTensors out = unique_tensors(all);
  for (auto& [name, t] : out) t = t.detach();
  return out;
}

int64_t Module::num_parameters() const {
  int64_t n = 0;
  for (auto& [name, t] : named_parameters()) n += t.numel();
  return n;
}

void Module::load_state_dict(const NamedTensors& state, bool strict) {
  std::vector<std::pair<std::string, Tensor*>> slots;
  collect("", true, true, true, slots);
  std::map<std::string, Tensor*> by_name;
  for (auto& [name, t] : slots) by_name[name] = t;

  std::vector<std::string> unexpected, mismatched;
  std::set<const TensorImpl*> filled;
  for (auto& [name, value] : state) {
    auto it = by_name.find(name);
    if (it == by_name.end()) {
      unexpected.push_back(name);
      continue;
    }
    Tensor& dst = *it->second;
    if (dst.sizes() != value.sizes()) {
      mismatched.push_back(name + " (checkpoint " + value.shape_str() + ", model " +
                           dst.shape_str() + ")");
      continue;
    }
    filled.insert(dst.impl_ptr().get());
  }
  // A tied tensor is filled when any of its names is present (HF files keep one of them).
  std::vector<std::string> missing;
  for (auto& [name, t] : slots)
    if (!filled.count(t->impl_ptr().get())) missing.push_back(name);

  auto join = [](const std::vector<std::string>& v) {
    std::string s;
    for (size_t i = 0; i < v.size() && i < 8; ++i) s += (i ? ", " : "") + v[i];
    if (v.size() > 8) s += ", ... (" + std::to_string(v.size()) + " in all)";
    return s;
  };
  COIL_CHECK(mismatched.empty(), "load_state_dict: shape mismatch for ", join(mismatched));
  COIL_CHECK(!strict || unexpected.empty(), "load_state_dict: unexpected keys ", join(unexpected));
  COIL_CHECK(!strict || missing.empty(), "load_state_dict: missing keys ", join(missing));

  NoGradGuard no_grad;
  for (auto& [name, value] : state) {
    auto it = by_name.find(name);
    if (it != by_name.end()) it->second->copy_(value);
  }
}

void Module::train(bool on) {
  training_ = on;
  for (auto& [name, child] : children_) child->train(on);
}

void Module::replace_tensors(const std::function<Tensor(const std::string&, const Tensor&)>& fn) {
  std::vector<std::pair<std::string, Tensor*>> all;
  collect("", true, true, false, all);
  std::map<const TensorImpl*, Tensor> done;  // keeps tied tensors tied
  std::vector<Tensor> old;  // alive until the end, so no impl address is reused meanwhile
  for (auto& [name, t] : all) {
    const TensorImpl* key = t->impl_ptr().get();
    auto it = done.find(key);
    if (it == done.end()) it = done.emplace(key, fn(name, *t)).first;
    old.push_back(*t);
    *t = it->second;
  }
}

void Module::to(DType dtype) {
  NoGradGuard no_grad;
  replace_tensors([dtype](const std::string&, const Tensor& t) {
    if (!t.is_floating_point() || t.dtype() == dtype) return t;
    Tensor c = t.to(dtype);
    if (t.requires_grad()) c.requires_grad_(true);
    return c;
  });
}

void Module::to(Device device) {
  NoGradGuard no_grad;
  replace_tensors([device](const std::string&, const Tensor& t) {
    if (t.device() == device) return t;
    Tensor c = t.to(device);
    if (t.requires_grad()) c.requires_grad_(true);
    return c;
  });
}

void Module::zero_grad() {
  for (auto& p : parameters()) p.set_grad(Tensor());
}

std::shared_ptr<Module> Module::find_module(const std::string& path) const {
  const size_t dot = path.find('.');
  const std::string head = path.substr(0, dot);
  for (const auto& [name, child] : children_)
    if (name == head)
      return dot == std::string::npos ? child : child->find_module(path.substr(dot + 1));
  return nullptr;
}

void ModuleList::push_back(std::shared_ptr<Module> m) {
  register_module(std::to_string(items_.size()), m);
  items_.push_back(std::move(m));
}

}  // namespace coil::nn
