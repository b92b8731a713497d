// coil::Tensor: a cheap shared handle to a TensorImpl (storage, sizes, strides, offset, dtype,
// device, autograd metadata). Views share storage and its version counter.
//
// Methods that only read metadata live in core/tensor.cpp. Methods that compute (view, sum,
// matmul, ...) are declared here and defined by the ops layer (ops/tensor_methods.cpp), so core
// never includes ops.
#pragma once
#include <atomic>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "device.h"
#include "dtype.h"
#include "error.h"
#include "scalar.h"

namespace coil {
class Stream;  // core/stream.h
}  // namespace coil

namespace coil {

using Shape = std::vector<int64_t>;
class Tensor;
using TensorList = std::vector<Tensor>;
struct Node;  // autograd/node.h

// Owned bytes on one device, plus the version counter that views and detached aliases share.
struct StorageImpl {
  void* data = nullptr;
  size_t nbytes = 0;
  Device device;
  bool owned = true;  // false for from_blob memory the user keeps
  // from_blob with an owner: whatever keeps the memory valid (e.g. a file mapping), released
  // with the last tensor that views it.
  std::shared_ptr<void> keep_alive;
  std::atomic<uint32_t> version{0};
  StorageImpl(size_t nbytes, Device device);
  StorageImpl(void* external, size_t nbytes, Device device);
  ~StorageImpl();
  StorageImpl(const StorageImpl&) = delete;
  StorageImpl& operator=(const StorageImpl&) = delete;
};

// The distributed layer subclasses this to hang a DTensor's spec (mesh, placements, global
// shape) on a tensor; ops only test whether it is there.
struct DistSpecBase {
  virtual ~DistSpecBase() = default;
};

using TensorHook = std::function<Tensor(const Tensor& grad)>;

struct TensorImpl {
  std::shared_ptr<StorageImpl> storage;
  Shape sizes, strides;  // strides in elements
  int64_t offset = 0;    // in elements
  DType dtype = kF32;
  bool requires_grad = false;      // leaves only; non-leaves require grad through grad_fn
  bool is_wrapped_number = false;  // a Scalar turned into a 0-d tensor (type promotion)
  bool retains_grad = false;
  bool is_view = false;  // made by a view op from a tensor that required grad
  std::shared_ptr<TensorImpl> grad;
  std::shared_ptr<Node> grad_fn;         // null for leaves
  uint32_t output_nr = 0;                // which output of grad_fn this is
  std::weak_ptr<Node> grad_accumulator;  // leaves: the node that adds into .grad
  std::vector<TensorHook> hooks;         // leaves: run on the gradient before accumulation
  std::shared_ptr<DistSpecBase> dist;    // set on DTensors
};

// dtype, device and requires_grad for factories: zeros({2, 3}, kF64) or {kF32, Device(kCUDA)}.
struct Options {
  DType dtype = kF32;
  Device device;
  bool requires_grad = false;
  Options() = default;
  Options(DType t) : dtype(t) {}        // NOLINT
  Options(Device d) : device(d) {}      // NOLINT
  Options(DeviceType d) : device(d) {}  // NOLINT
  Options(DType t, Device d, bool rg = false) : dtype(t), device(d), requires_grad(rg) {}
  Options with_requires_grad(bool rg = true) const {
    Options o = *this;
    o.requires_grad = rg;
    return o;
  }
};

class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

  // ---- metadata (core) ----
  bool defined() const { return impl_ != nullptr; }
  const Shape& sizes() const { return impl().sizes; }
  const Shape& strides() const { return impl().strides; }
  int64_t size(int64_t dim) const;
  int64_t stride(int64_t dim) const;
  int64_t dim() const { return static_cast<int64_t>(impl().sizes.size()); }
  int64_t numel() const;
  int64_t storage_offset() const { return impl().offset; }
  DType dtype() const { return impl().dtype; }
  Device device() const { return impl().storage->device; }
  size_t element_size() const { return dtype_size(dtype()); }
  size_t nbytes() const { return static_cast<size_t>(numel()) * element_size(); }
  bool is_contiguous() const;
  bool is_floating_point() const { return is_floating(dtype()); }
  bool is_distributed() const { return impl_ && impl_->dist != nullptr; }
  void* raw_data() const;  // first element's address
  template <class T>
  T* data_ptr() const {
    COIL_CHECK(dtype_of<T>::value == dtype(), "data_ptr: tensor is ", dtype(), ", asked for ",
               dtype_of<T>::value);
    return static_cast<T*>(raw_data());
  }
  template <class T>
  T item() const;
  double item_double() const;  // any dtype, one element
  TensorImpl& impl() const {
    COIL_CHECK(impl_, "tensor: use of an undefined tensor");
    return *impl_;
  }
  const std::shared_ptr<TensorImpl>& impl_ptr() const { return impl_; }
  bool is_same(const Tensor& o) const { return impl_ == o.impl_; }
  std::string shape_str() const;

  // ---- autograd metadata (core) ----
  bool requires_grad() const;
  Tensor& requires_grad_(bool on = true);
  bool is_leaf() const { return impl().grad_fn == nullptr; }
  Tensor grad() const;
  void set_grad(const Tensor& g);
  const std::shared_ptr<Node>& grad_fn() const { return impl().grad_fn; }
  uint32_t version() const { return impl().storage->version.load(); }
  void bump_version() const { impl().storage->version.fetch_add(1); }

  // ---- autograd (autograd/) ----
  void backward(const Tensor& grad = Tensor(), bool retain_graph = false) const;
  void register_hook(TensorHook hook) const;
  void retain_grad() const;

  // ---- views (ops/view.cpp): share storage ----
  Tensor view(const Shape& shape) const;
  Tensor reshape(const Shape& shape) const;
  Tensor permute(const Shape& dims) const;
  Tensor transpose(int64_t d0, int64_t d1) const;
  Tensor t() const;  // transpose of a matrix
  Tensor narrow(int64_t dim, int64_t start, int64_t length) const;
  Tensor slice(int64_t dim, std::optional<int64_t> start = std::nullopt,
               std::optional<int64_t> end = std::nullopt, int64_t step = 1) const;
  Tensor select(int64_t dim, int64_t index) const;
  Tensor expand(const Shape& shape) const;
  Tensor expand_as(const Tensor& other) const { return expand(other.sizes()); }
  Tensor squeeze() const;
  Tensor squeeze(int64_t dim) const;
  Tensor unsqueeze(int64_t dim) const;
  Tensor flatten(int64_t start_dim = 0, int64_t end_dim = -1) const;
  Tensor contiguous() const;
  Tensor detach() const;
  Tensor operator[](int64_t i) const { return select(0, i); }

  // ---- copies and conversion (ops/copy.cpp) ----
  Tensor clone() const;
  Tensor to(DType t) const;
  Tensor to(Device d) const;
  // non_blocking: a copy between pinned host memory (pin_memory) and a GPU, or within one GPU, is
  // queued on the GPU's current stream and not waited for (synchronize before reading the
  // result on the host, or before writing the source); otherwise as to(d).
  Tensor to(Device d, bool non_blocking) const;
  // A copy in page-locked host memory, which the GPU reads and writes directly (CPU tensors;
  // needs a GPU), and whether this tensor's memory is such.
  Tensor pin_memory() const;
  bool is_pinned() const;
  // Tells the CUDA caching allocator that stream s uses this tensor's memory too (it was
  // allocated on another), so that once freed it is not handed out again before the work queued
  // on s by then is done (PyTorch's record_stream). A no-op on the CPU.
  void record_stream(const Stream& s) const;
  Tensor& copy_(const Tensor& src);
  Tensor& fill_(Scalar v);
  Tensor& zero_() { return fill_(0); }

  // ---- math (ops/*.cpp) ----
  Tensor add(const Tensor& o, Scalar alpha = 1) const;
  Tensor sub(const Tensor& o, Scalar alpha = 1) const;
  Tensor mul(const Tensor& o) const;
  Tensor div(const Tensor& o) const;
  Tensor& add_(const Tensor& o, Scalar alpha = 1);
  Tensor& sub_(const Tensor& o, Scalar alpha = 1);
  Tensor& mul_(const Tensor& o);
  Tensor& div_(const Tensor& o);
  Tensor& add_(Scalar v);
  Tensor& mul_(Scalar v);
  Tensor neg() const;
  Tensor pow(Scalar e) const;
  Tensor exp() const;
  Tensor log() const;
  Tensor sqrt() const;
  Tensor rsqrt() const;
  Tensor abs() const;
  Tensor tanh() const;
  Tensor sigmoid() const;
  Tensor relu() const;
  Tensor square() const;
  Tensor clamp(std::optional<Scalar> lo, std::optional<Scalar> hi) const;
  Tensor matmul(const Tensor& o) const;
  Tensor sum() const;
  Tensor sum(const Shape& dims, bool keepdim = false) const;
  Tensor mean() const;
  Tensor mean(const Shape& dims, bool keepdim = false) const;
  Tensor max() const;
  Tensor min() const;
  Tensor argmax(std::optional<int64_t> dim = std::nullopt, bool keepdim = false) const;
  Tensor softmax(int64_t dim) const;
  Tensor log_softmax(int64_t dim) const;

 private:
  std::shared_ptr<TensorImpl> impl_;
};

// ---- creation (core) ----
Tensor empty(const Shape& shape, Options o = {});
Tensor empty_strided(const Shape& shape, const Shape& strides, Options o = {});
// Wraps memory the caller owns (no copy); it must outlive every tensor that views it.
Tensor from_blob(void* data, const Shape& shape, Options o = {});
// Same, but the storage holds `owner` until its last tensor goes: the memory needs no caller
// bookkeeping (nn/io's memory-mapped safetensors use it).
Tensor from_blob(void* data, const Shape& shape, Options o, std::shared_ptr<void> owner);
// Copies host values into a new tensor: tensor({1.f, 2.f}, {2}).
template <class T>
Tensor tensor(const std::vector<T>& values, const Shape& shape, Options o);
template <class T>
Tensor tensor(const std::vector<T>& values, const Shape& shape) {
  return tensor(values, shape, Options(dtype_of<T>::value));
}
template <class T>
Tensor tensor(const std::vector<T>& values) {
  return tensor(values, Shape{static_cast<int64_t>(values.size())});
}
template <class T>
std::vector<T> to_vector(const Tensor& t);  // any layout, converts dtype

// A 0-d tensor holding a Scalar, marked as a wrapped number for type promotion.
Tensor scalar_tensor(Scalar s, DType t, Device d = Device());

// Shape helpers shared by every layer.
Shape contiguous_strides(const Shape& sizes);
int64_t shape_numel(const Shape& sizes);
std::string shape_str(const Shape& s);
// Wraps a negative dim; errors name the op: normalize_dim("sum", -1, 3) == 2.
int64_t normalize_dim(const char* op, int64_t dim, int64_t ndim);
// Broadcast two shapes as numpy does; op names the caller in the error.
Shape broadcast_shapes(const char* op, const Shape& a, const Shape& b);
// Result dtype of an op over these operands with PyTorch's rules (wrapped numbers and 0-d
// tensors participate with lower priority).
DType result_type(const TensorList& operands);
DType result_type(const Tensor& a, const Tensor& b);
void check_same_device(const char* op, const TensorList& ts);

std::ostream& operator<<(std::ostream& os, const Tensor& t);  // ops/print.cpp

}  // namespace coil
