// nn::Module, as torch::nn::Module: named parameters, buffers and child modules.
//
// A layer keeps its tensors as ordinary members (`Tensor weight;`) and registers their addresses,
// so `to(dtype)` and `load_state_dict` update the members themselves. Modules therefore live behind
// std::shared_ptr and are neither copied nor moved.
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "../core/tensor.h"

namespace coil::nn {

// Ordered (name, tensor) pairs: what state_dict() returns and safetensors files hold.
using NamedTensors = std::vector<std::pair<std::string, Tensor>>;

class Module : public std::enable_shared_from_this<Module> {
 public:
  Module() = default;
  virtual ~Module() = default;
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;

  // Recursive, in registration order, names joined with '.'. A tensor shared by two places
  // (a tied LM head) appears once, under its first name, as in PyTorch.
  std::vector<Tensor> parameters() const;
  NamedTensors named_parameters() const;
  NamedTensors named_buffers() const;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> named_children() const {
    return children_;
  }
  // Parameters and buffers (persistent ones) under every name, tied tensors under each name.
  NamedTensors state_dict() const;
  // state_dict() with a tied tensor under its first name only: what a file stores (transformers
  // drops the tied lm_head.weight the same way; load_state_dict accepts either name).
  NamedTensors state_dict_untied() const;
  // Copies values into the registered tensors (converting dtype). strict: every key must be
  // expected and present. Shape mismatches always throw. Errors list the offending keys.
  void load_state_dict(const NamedTensors& state, bool strict = true);
  // Number of distinct parameter elements (tied tensors count once).
  int64_t num_parameters() const;

  void train(bool on = true);
  void eval() { train(false); }
  bool is_training() const { return training_; }
  // Converts floating parameters and buffers; tied tensors stay tied.
  void to(DType dtype);
  // Moves every parameter and buffer to `device` (tied tensors stay tied), as torch's
  // module.to(device). Optimizers built before the move hold the old tensors: build them after.
  void to(Device device);
  // Replaces every parameter and buffer by fn(name, tensor); a tensor registered under several
  // names (a tied head) is replaced once, under its first name, and stays shared. How to(dtype)
  // and nn::parallelize_module swap the tensors the layers hold.
  void replace_tensors(const std::function<Tensor(const std::string&, const Tensor&)>& fn);
  void zero_grad();

  // Called on the input of forward by the layers with one main input (Linear, RMSNorm) when set;
  // the parallel styles (nn/parallel.h) install it, as PyTorch's forward pre-hooks.
  std::function<Tensor(const Tensor&)> forward_pre_hook;
  // The direct or nested child at a dotted path ("backbone.layers.0.norm"), or null.
  std::shared_ptr<Module> find_module(const std::string& path) const;

 protected:
  Tensor pre_hook(const Tensor& x) const { return forward_pre_hook ? forward_pre_hook(x) : x; }

  // Registers a member tensor. requires_grad is set on it for parameters.
  void register_parameter(const std::string& name, Tensor* member, bool requires_grad = true);
  void register_buffer(const std::string& name, Tensor* member, bool persistent = true);
  template <class M>
  std::shared_ptr<M> register_module(const std::string& name, std::shared_ptr<M> m) {
    add_child(name, m);
    return m;
  }

 private:
  struct Slot {
    std::string name;
    Tensor* member;
    bool persistent;
  };
  void add_child(const std::string& name, std::shared_ptr<Module> m);
  void collect(const std::string& prefix, bool params, bool buffers, bool only_persistent,
               std::vector<std::pair<std::string, Tensor*>>& out) const;

  std::vector<Slot> params_, buffers_;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
  bool training_ = true;
};

// Holds child modules under "0", "1", ...
class ModuleList : public Module {
 public:
  void push_back(std::shared_ptr<Module> m);
  size_t size() const { return items_.size(); }
  const std::shared_ptr<Module>& operator[](size_t i) const { return items_.at(i); }
  template <class M>
  std::shared_ptr<M> at(size_t i) const {
    return std::static_pointer_cast<M>(items_.at(i));
  }
  auto begin() const { return items_.begin(); }
  auto end() const { return items_.end(); }

 private:
  std::vector<std::shared_ptr<Module>> items_;
};

}  // namespace coil::nn
