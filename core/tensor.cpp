#include "tensor.h"

#include <cstring>
#include <limits>
#include <sstream>

#include "allocator.h"

namespace coil {

StorageImpl::StorageImpl(size_t n, Device d) : nbytes(n), device(d) {
  data = get_allocator(d.type)->allocate_on(n, d.index);
}
StorageImpl::StorageImpl(void* external, size_t n, Device d)
    : data(external), nbytes(n), device(d), owned(false) {}
StorageImpl::~StorageImpl() {
  if (owned && data) get_allocator(device.type)->deallocate(data, nbytes);
}

// Products that pass int64 saturate at its largest value instead of wrapping (undefined, and a
// wrapped size could pass for a small one); empty_strided then refuses such a shape.
static int64_t saturating_mul(int64_t a, int64_t b) {
  int64_t r = 0;
  return __builtin_mul_overflow(a, b, &r) ? std::numeric_limits<int64_t>::max() : r;
}

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t v : s)
    if (v == 0) return 0;
  for (int64_t v : s) n = saturating_mul(n, v);
  return n;
}

Shape contiguous_strides(const Shape& sizes) {
  Shape st(sizes.size());
  int64_t acc = 1;
  for (int64_t i = static_cast<int64_t>(sizes.size()) - 1; i >= 0; --i) {
    st[i] = acc;
    acc = saturating_mul(acc, std::max<int64_t>(sizes[i], 1));
  }
  return st;
}

std::string shape_str(const Shape& s) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  os << "]";
  return os.str();
}

int64_t normalize_dim(const char* op, int64_t dim, int64_t ndim) {
  int64_t n = std::max<int64_t>(ndim, 1);  // a 0-d tensor accepts dim 0 and -1, like PyTorch
  COIL_CHECK(dim >= -n && dim < n, op, ": dim ", dim, " is out of range for a tensor of ", ndim,
             " dims (expected in [", -n, ", ", n - 1, "])");
  return dim < 0 ? dim + n : dim;
}

Shape broadcast_shapes(const char* op, const Shape& a, const Shape& b) {
  size_t n = std::max(a.size(), b.size());
  Shape out(n);
  for (size_t i = 0; i < n; ++i) {
    int64_t da = i < n - a.size() ? 1 : a[i - (n - a.size())];
    int64_t db = i < n - b.size() ? 1 : b[i - (n - b.size())];
    COIL_CHECK(da == db || da == 1 || db == 1, op, ": shapes ", shape_str(a), " and ", shape_str(b),
               " cannot be broadcast (dim ", i, ": ", da, " vs ", db, ")");
    out[i] = da == 1 ? db : da;
  }
  return out;
}

namespace {
// torch's combine_categories: a lower-priority operand only matters if its category is higher.
std::optional<DType> combine(std::optional<DType> higher, std::optional<DType> lower) {
  if (!higher) return lower;
  if (!lower) return higher;
  if (is_floating(*higher)) return higher;
  if (*higher == kBool || is_floating(*lower)) return promote_types(*higher, *lower);
  return higher;
}
}  // namespace

DType result_type(const TensorList& ops) {
  std::optional<DType> dim_r, zero_r, wrapped_r;
  for (const Tensor& t : ops) {
    if (!t.defined()) continue;
    const bool wrapped = t.impl().is_wrapped_number;
    auto& slot = wrapped ? wrapped_r : (t.dim() == 0 ? zero_r : dim_r);
    // a wrapped float counts as the default float dtype (f32), whatever it is stored as
    DType dt = wrapped && is_floating(t.dtype()) ? kF32 : t.dtype();
    slot = slot ? promote_types(*slot, dt) : dt;
  }
  auto r = combine(dim_r, combine(zero_r, wrapped_r));
  return r ? *r : kF32;
}
DType result_type(const Tensor& a, const Tensor& b) { return result_type(TensorList{a, b}); }

void check_same_device(const char* op, const TensorList& ts) {
  const Tensor* first = nullptr;
  for (const Tensor& t : ts) {
    if (!t.defined()) continue;
    if (!first) {
      first = &t;
      continue;
    }
    COIL_CHECK(t.device() == first->device(), op, ": expected all tensors on one device, got ",
               first->device(), " and ", t.device());
  }
}

int64_t Tensor::size(int64_t d) const { return sizes()[normalize_dim("size", d, dim())]; }
int64_t Tensor::stride(int64_t d) const { return strides()[normalize_dim("stride", d, dim())]; }
int64_t Tensor::numel() const { return shape_numel(sizes()); }
std::string Tensor::shape_str() const { return coil::shape_str(sizes()); }

bool Tensor::is_contiguous() const {
  int64_t expected = 1;
  for (int64_t i = dim() - 1; i >= 0; --i) {
    if (sizes()[i] == 1) continue;
    if (strides()[i] != expected) return false;
    expected *= sizes()[i];
  }
  return true;
}

void* Tensor::raw_data() const {
  // A DTensor's sizes are the global tensor's; its bytes are its local piece, reached through
  // dist::to_local (ops get there by the dist hook before any kernel runs).
  COIL_CHECK(!impl().dist, "raw_data: a distributed tensor of global shape ", shape_str(),
             " has no single buffer; use dist::to_local(t) for this rank's piece");
  return static_cast<char*>(impl().storage->data) +
         impl().offset * static_cast<int64_t>(element_size());
}

bool Tensor::requires_grad() const { return impl().requires_grad || impl().grad_fn != nullptr; }

Tensor& Tensor::requires_grad_(bool on) {
  COIL_CHECK(is_leaf(),
             "requires_grad_: can only change requires_grad of a leaf tensor; use detach()");
  COIL_CHECK(!on || is_floating(dtype()),
             "requires_grad_: only floating point tensors can require ", "gradients, got ",
             dtype());
  impl().requires_grad = on;
  return *this;
}

Tensor Tensor::grad() const { return impl().grad ? Tensor(impl().grad) : Tensor(); }
void Tensor::set_grad(const Tensor& g) {
  if (g.defined()) {
    COIL_CHECK(g.sizes() == sizes(), "set_grad: gradient shape ", g.shape_str(),
               " does not match tensor shape ", shape_str());
  }
  impl().grad = g.impl_ptr();
}

Tensor empty_strided(const Shape& shape, const Shape& strides, Options o) {
  for (int64_t s : shape)
    COIL_CHECK(s >= 0, "empty: negative size in shape ", coil::shape_str(shape));
  COIL_CHECK(shape.size() == strides.size(), "empty_strided: ", shape.size(), " sizes but ",
             strides.size(), " strides");
  if (o.device.is_cuda()) get_allocator(kCUDA);  // clear error on a build without CUDA
  // The storage's extent in bytes, refusing shapes whose size does not fit in int64 (a product
  // that wrapped around would allocate a small block and be written far past it).
  int64_t span = 1, bytes = 0;
  bool overflow = false;
  for (size_t i = 0; i < shape.size(); ++i) {
    int64_t term = 0;
    overflow |= __builtin_mul_overflow(std::max<int64_t>(shape[i] - 1, 0), strides[i], &term);
    overflow |= __builtin_add_overflow(span, term, &span);
  }
  overflow |= __builtin_mul_overflow(span, static_cast<int64_t>(dtype_size(o.dtype)), &bytes);
  COIL_CHECK(!overflow, "empty: shape ", coil::shape_str(shape), " of ", dtype_name(o.dtype),
             " needs more than 2^63 bytes");
  if (shape_numel(shape) == 0) bytes = 0;
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = std::make_shared<StorageImpl>(static_cast<size_t>(bytes), o.device);
  impl->sizes = shape;
  impl->strides = strides;
  impl->dtype = o.dtype;
  Tensor t(impl);
  if (o.requires_grad) t.requires_grad_(true);
  return t;
}

Tensor empty(const Shape& shape, Options o) {
  return empty_strided(shape, contiguous_strides(shape), o);
}

Tensor from_blob(void* data, const Shape& shape, Options o) {
  return from_blob(data, shape, o, nullptr);
}

Tensor from_blob(void* data, const Shape& shape, Options o, std::shared_ptr<void> owner) {
  for (int64_t s : shape)
    COIL_CHECK(s >= 0, "from_blob: negative size in shape ", coil::shape_str(shape));
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = std::make_shared<StorageImpl>(
      data, static_cast<size_t>(shape_numel(shape)) * dtype_size(o.dtype), o.device);
  impl->storage->keep_alive = std::move(owner);
  impl->sizes = shape;
  impl->strides = contiguous_strides(shape);
  impl->dtype = o.dtype;
  Tensor t(impl);
  if (o.requires_grad) t.requires_grad_(true);
  return t;
}

namespace {
// Reads element i (in logical row-major order) of any-layout CPU tensor as double / int64.
template <class Fn>
void for_each_element(const Tensor& t, Fn fn) {
  COIL_CHECK(t.device().is_cpu(), "to_vector: tensor is on ", t.device(), "; move it to cpu first");
  const int64_t nd = t.dim(), n = t.numel();
  Shape idx(nd, 0);
  const char* base = static_cast<const char*>(t.raw_data());
  const int64_t es = static_cast<int64_t>(t.element_size());
  for (int64_t i = 0; i < n; ++i) {
    int64_t off = 0;
    for (int64_t d = 0; d < nd; ++d) off += idx[d] * t.strides()[d];
    fn(base + off * es);
    for (int64_t d = nd - 1; d >= 0; --d) {
      if (++idx[d] < t.sizes()[d]) break;
      idx[d] = 0;
    }
  }
}
template <class T>
T read_as(const char* p, DType dt) {
  switch (dt) {
    case kF32:
      return static_cast<T>(*reinterpret_cast<const float*>(p));
    case kF64:
      return static_cast<T>(*reinterpret_cast<const double*>(p));
    case kBF16:
      return static_cast<T>(static_cast<float>(*reinterpret_cast<const BFloat16*>(p)));
    case kF16:
      return static_cast<T>(static_cast<float>(*reinterpret_cast<const Half*>(p)));
    case kI32:
      return static_cast<T>(*reinterpret_cast<const int32_t*>(p));
    case kI64:
      return static_cast<T>(*reinterpret_cast<const int64_t*>(p));
    case kBool:
      return static_cast<T>(*reinterpret_cast<const uint8_t*>(p) != 0);
  }
  return T();
}
template <class T>
void write_as(char* p, DType dt, T v) {
  switch (dt) {
    case kF32:
      *reinterpret_cast<float*>(p) = static_cast<float>(v);
      break;
    case kF64:
      *reinterpret_cast<double*>(p) = static_cast<double>(v);
      break;
    case kBF16:
      *reinterpret_cast<BFloat16*>(p) = BFloat16(static_cast<float>(v));
      break;
    case kF16:
      *reinterpret_cast<Half*>(p) = Half(static_cast<float>(v));
      break;
    case kI32:
      *reinterpret_cast<int32_t*>(p) = static_cast<int32_t>(v);
      break;
    case kI64:
      *reinterpret_cast<int64_t*>(p) = static_cast<int64_t>(v);
      break;
    case kBool:
      *reinterpret_cast<uint8_t*>(p) = v != T(0);
      break;
  }
}
}  // namespace

template <class T>
Tensor tensor(const std::vector<T>& values, const Shape& shape, Options o) {
  COIL_CHECK(shape_numel(shape) == static_cast<int64_t>(values.size()), "tensor: ", values.size(),
             " values do not fill shape ", coil::shape_str(shape));
  Options cpu = o;
  cpu.device = Device(kCPU);
  cpu.requires_grad = false;
  Tensor t = empty(shape, cpu);
  char* p = static_cast<char*>(t.raw_data());
  const size_t es = dtype_size(o.dtype);
  for (size_t i = 0; i < values.size(); ++i) {
    if constexpr (std::is_same_v<T, BFloat16> || std::is_same_v<T, Half>) {
      write_as<float>(p + i * es, o.dtype, static_cast<float>(values[i]));
    } else {
      write_as<T>(p + i * es, o.dtype, values[i]);
    }
  }
  if (!o.device.is_cpu()) t = t.to(o.device);
  if (o.requires_grad) t.requires_grad_(true);
  return t;
}

template <class T>
std::vector<T> to_vector(const Tensor& t) {
  Tensor src = t.device().is_cpu() ? t : t.to(Device(kCPU));
  std::vector<T> out;
  out.reserve(static_cast<size_t>(src.numel()));
  for_each_element(src, [&](const char* p) {
    if constexpr (std::is_same_v<T, BFloat16> || std::is_same_v<T, Half>) {
      out.push_back(T(read_as<float>(p, src.dtype())));
    } else {
      out.push_back(read_as<T>(p, src.dtype()));
    }
  });
  return out;
}

template <class T>
T Tensor::item() const {
  COIL_CHECK(numel() == 1, "item: tensor with ", numel(), " elements (shape ", shape_str(),
             ") cannot be converted to a scalar");
  return to_vector<T>(*this)[0];
}

#define COIL_INSTANTIATE(T)                                                \
  template Tensor tensor<T>(const std::vector<T>&, const Shape&, Options); \
  template std::vector<T> to_vector<T>(const Tensor&);                     \
  template T Tensor::item<T>() const;
COIL_INSTANTIATE(float)
COIL_INSTANTIATE(double)
COIL_INSTANTIATE(int32_t)
COIL_INSTANTIATE(int64_t)
COIL_INSTANTIATE(bool)
COIL_INSTANTIATE(BFloat16)
COIL_INSTANTIATE(Half)
#undef COIL_INSTANTIATE

double Tensor::item_double() const { return item<double>(); }

Tensor scalar_tensor(Scalar s, DType t, Device d) {
  Tensor out = s.is_floating() ? tensor(std::vector<double>{s.to_double()}, Shape{}, Options(t, d))
                               : tensor(std::vector<int64_t>{s.to_int()}, Shape{}, Options(t, d));
  out.impl().is_wrapped_number = true;
  return out;
}

}  // namespace coil
