// Copies and conversions. One copy kernel (any strides, any dtype pair) serves clone, to(dtype),
// contiguous and copy_.
#include "copy.h"

#include "../autograd/autograd.h"
#include "../core/allocator.h"
#include "../core/stream.h"
#include "binary.h"
#include "creation.h"
#include "op_helpers.h"

namespace coil {

namespace detail {
Tensor cast(const Tensor& x, DType t) {
  static const OpInfo& op = op_info("to_dtype");
  Tensor out = empty(x.sizes(), Options(t, x.device()));
  kernel_for<CopyKernel>(op, x.device())(out, x);
  return out;
}
}  // namespace detail

Tensor to_dtype(const Tensor& x, DType t) {
  COIL_OP("to_dtype");
  if (any_distributed({&x})) return dist_dispatch(op_, {x}, {{"dtype", t}})[0];
  if (x.dtype() == t) return x;
  Tensor out = detail::cast(x, t);
  if (is_floating(t) && needs_grad({&x})) {
    DType from = x.dtype();
    record("to_dtype", {x}, {out},
           [from](const TensorList& g) { return TensorList{to_dtype(g[0], from)}; });
  }
  return out;
}

Tensor clone(const Tensor& x) {
  COIL_OP("clone");
  if (any_distributed({&x})) return dist_dispatch(op_, {x}, {})[0];
  Tensor out = empty(x.sizes(), Options(x.dtype(), x.device()));
  kernel_for<CopyKernel>(op_, x.device())(out, x);
  if (needs_grad({&x}))
    record("clone", {x}, {out}, [](const TensorList& g) { return TensorList{g[0]}; });
  return out;
}

Tensor contiguous(const Tensor& x) { return x.is_contiguous() ? x : clone(x); }

Tensor Tensor::clone() const { return coil::clone(*this); }
Tensor Tensor::contiguous() const { return coil::contiguous(*this); }
Tensor Tensor::to(DType t) const { return to_dtype(*this, t); }

namespace detail {
Tensor autocast_to(const Tensor& x, DType t) {
  return x.defined() && x.dtype() == kF32 ? to_dtype(x, t) : x;
}
Tensor autocast_f32(const Tensor& x) {
  return x.defined() && is_half(x.dtype()) ? to_dtype(x, kF32) : x;
}
}  // namespace detail
// Between devices: the bytes of a contiguous copy, through the CUDA backend's hook; the gradient
// goes back the same way.
Tensor Tensor::to(Device d) const { return to(d, false); }

namespace {
Tensor pinned_empty(const Shape& sizes, DType t) {
  size_t n = dtype_size(t);
  for (int64_t v : sizes) n *= static_cast<size_t>(v);
  void* p = cuda_hooks().host_alloc(n);
  return from_blob(p, sizes, Options(t), std::shared_ptr<void>(p, cuda_hooks().host_free));
}
}  // namespace

void Tensor::record_stream(const Stream& s) const {
  COIL_CHECK(defined(), "record_stream: the tensor is undefined");
  if (!device().is_cuda() || numel() == 0) return;
  COIL_CHECK(s.defined() && s.device() == device(), "record_stream: the stream is on ",
             s.defined() ? s.device().str() : std::string("no device"), ", the tensor on ",
             device());
  get_allocator(kCUDA)->record_stream(impl().storage->data, s.native());
}

bool Tensor::is_pinned() const {
  return defined() && device().is_cpu() && cuda_hooks().is_pinned && numel() > 0 &&
         cuda_hooks().is_pinned(raw_data());
}

Tensor Tensor::pin_memory() const {
  COIL_CHECK(defined(), "pin_memory: the tensor is undefined");
  COIL_CHECK(device().is_cpu(), "pin_memory: only CPU tensors can be pinned, this one is on ",
             device());
  COIL_CHECK(cuda_available() && cuda_device_count() > 0,
             "pin_memory: page-locked memory needs a usable GPU (",
             cuda_available() ? "none found" : "this build has no CUDA backend", ")");
  if (is_pinned()) return *this;
  Tensor out = pinned_empty(sizes(), dtype());
  NoGradGuard ng;
  out.copy_(*this);
  return out;
}

Tensor Tensor::to(Device d, bool non_blocking) const {
  if (d == device()) return *this;
  COIL_CHECK(cuda_available(), "to: this build of coil has no CUDA backend; cannot move ",
             "a tensor from ", device(), " to ", d);
  COIL_CHECK(!is_distributed(), "to: a DTensor moves with its mesh, not alone (", device(), " to ",
             d, ")");
  Tensor src = coil::contiguous(*this);
  // non-blocking needs page-locked host memory on the host side: a GPU -> CPU copy lands in a
  // pinned tensor; a pageable CPU source, and GPU -> GPU, copy as usual
  const bool queue =
      non_blocking && numel() > 0 &&
      (d.is_cuda() ? src.device().is_cpu() && src.is_pinned() : src.device().is_cuda());
  Tensor out =
      queue && d.is_cpu() ? pinned_empty(sizes(), dtype()) : empty(sizes(), Options(dtype(), d));
  if (queue)
    cuda_hooks().copy_bytes_async(out.raw_data(), d, src.raw_data(), src.device(), src.nbytes());
  else if (numel() > 0)
    cuda_hooks().copy_bytes(out.raw_data(), d, src.raw_data(), src.device(), src.nbytes());
  if (needs_grad({this})) {
    const Device from = device();
    record("to_device", {*this}, {out},
           [from](const TensorList& g) { return TensorList{g[0].to(from)}; });
  }
  return out;
}

Tensor& Tensor::copy_(const Tensor& src) {
  COIL_OP("copy_");
  if (any_distributed({this, &src})) {
    dist_dispatch(op_, {*this, src}, {});
    return *this;
  }
  COIL_CHECK(!(GradMode::is_enabled() && (requires_grad() || src.requires_grad())),
             "copy_: in-place copy is not recorded by autograd, and ",
             requires_grad() ? "the destination" : "the source",
             " requires grad; use out-of-place ops or wrap it in NoGradGuard");
  Shape b = broadcast_shapes("copy_", sizes(), src.sizes());
  COIL_CHECK(b == sizes(), "copy_: source of shape ", src.shape_str(), " cannot be broadcast to ",
             shape_str());
  check_same_device("copy_", {*this, src});
  kernel_for<CopyKernel>(op_, device())(*this, src);
  bump_version();
  return *this;
}

Tensor& Tensor::fill_(Scalar v) {
  COIL_OP("fill_");
  if (any_distributed({this})) {
    dist_dispatch(op_, {*this}, {{"value", v.to_double()}});
    return *this;
  }
  COIL_CHECK(!(GradMode::is_enabled() && is_leaf() && requires_grad()),
             "fill_: a leaf tensor that ",
             "requires grad is used in an in-place operation; wrap it in NoGradGuard");
  kernel_for<FillKernel>(op_, device())(*this, v.to_double());
  bump_version();
  return *this;
}

namespace {
// x * scale truncated to an integer, then / scale: a float->int->float round trip
Tensor round_to_grid(const Tensor& x, double scale) {
  return to_dtype(to_dtype(x * scale, kI64), kF64) / scale;
}

void register_copy() {
  {
    OpInfo& o = register_op("to_dtype", "copy");
    o.set_kernel(kCPU, &cpu::copy_kernel);
    o.boxed = [](const TensorList& in, const Attrs& a) {
      return TensorList{to_dtype(in[0], attr<DType>(a, "dtype"))};
    };
    o.gradcheck = [] {
      // values and steps on a 2^-10 grid survive the f32 round trip exactly
      Tensor x = detail::gc_rand({3, 4}, -1, 1, false);
      {
        NoGradGuard g;
        x = round_to_grid(x, 1024.0);
      }
      x.requires_grad_();
      GradcheckCase c{
          {x}, [](const TensorList& v) { return to_dtype(to_dtype(v[0], kF32), kF64) * 3.0; }};
      c.eps = 1.0 / 1024;
      return c;
    };
  }
  {
    OpInfo& o = register_op("clone", "copy");
    o.set_kernel(kCPU, &cpu::copy_kernel);
    o.boxed = [](const TensorList& in, const Attrs&) { return TensorList{clone(in[0])}; };
    o.gradcheck = [] {
      return GradcheckCase{{detail::gc_rand({3, 4})},
                           [](const TensorList& x) { return clone(x[0].t()); }};
    };
  }
  {
    OpInfo& o = register_op("copy_", "copy");
    o.differentiable = false;
    o.set_kernel(kCPU, &cpu::copy_kernel);
    o.boxed = [](const TensorList& in, const Attrs&) {
      Tensor d = in[0];
      d.copy_(in[1]);
      return TensorList{d};
    };
  }
  {
    OpInfo& o = register_op("fill_", "copy");
    o.differentiable = false;
    o.set_kernel(kCPU, &cpu::fill_kernel);
    o.boxed = [](const TensorList& in, const Attrs& a) {
      Tensor d = in[0];
      d.fill_(attr<double>(a, "value"));
      return TensorList{d};
    };
  }
}
OpRegistrar reg(register_copy);
}  // namespace

}  // namespace coil
