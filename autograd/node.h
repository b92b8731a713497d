// The autograd graph: nodes (backward functions), edges to the nodes of their inputs, and saved
// tensors that remember the version they were saved at.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "../core/tensor.h"
#include "grad_mode.h"

namespace coil {

struct Edge {
  std::shared_ptr<Node> fn;
  uint32_t input_nr = 0;  // which output of fn (fn's forward) this gradient belongs to
  bool valid() const { return fn != nullptr; }
};

struct OutputMeta {
  Shape shape;
  DType dtype = kF32;
  Device device;
};

struct Node {
  std::string name;
  std::vector<Edge> next_edges;     // one per forward input; invalid when it needs no grad
  std::vector<OutputMeta> outputs;  // one per forward output: the shape its gradient has
  std::vector<std::vector<TensorHook>> pre_hooks;  // per output, run on its incoming grad
  uint64_t sequence_nr = 0;                        // creation order: later nodes run first
  Node();
  virtual ~Node() = default;
  // grads: one per output (missing ones are zeros). Returns one per next_edge (undefined for
  // inputs that need none).
  virtual TensorList apply(TensorList&& grads) = 0;
  // Frees what the node saved; a second backward through it is then an error.
  virtual void release() {}
  virtual bool released() const { return false; }
};

// A tensor saved for backward, with the version it had then. Outputs are saved as detached
// aliases so the graph has no reference cycle.
class SavedTensor {
 public:
  SavedTensor() = default;
  SavedTensor(const Tensor& t, const std::string& op);
  Tensor unpack() const;  // error naming the op if the tensor was modified in place since
  bool defined() const { return data_.defined(); }

 private:
  Tensor data_;
  uint32_t version_ = 0;
  std::string op_;
};

using BackwardFn = std::function<TensorList(const TensorList& grads)>;

// A node whose backward is a closure written with coil ops; the closure (and everything it
// captured) is dropped after backward unless retain_graph.
struct FunctionNode final : Node {
  BackwardFn fn;
  TensorList apply(TensorList&& grads) override;
  void release() override { fn = nullptr; }
  bool released() const override { return !fn; }
};

// The node that adds into a leaf's .grad.
struct AccumulateGrad final : Node {
  std::shared_ptr<TensorImpl> variable;
  TensorList apply(TensorList&& grads) override;
};

// True when grad mode is on and any of these needs a gradient.
bool needs_grad(std::initializer_list<const Tensor*> inputs);
bool needs_grad(const TensorList& inputs);

// Records `fn` as the backward of an op that produced `outputs` (floating outputs only) from
// `inputs`. fn gets one gradient per output and returns one per input.
std::shared_ptr<Node> record(const std::string& name, const TensorList& inputs,
                             const TensorList& outputs, BackwardFn fn);

// The edge a gradient for `t` flows into: its grad_fn, or its leaf accumulator.
Edge gradient_edge(const Tensor& t);

}  // namespace coil
