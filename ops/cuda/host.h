// Helpers of ops/cuda's host side (internal): dtype mapping, device checks, launch errors, and
// the index-error flag the indexing kernels set.
#pragma once
#include "../../core/cuda/runtime.h"
#include "../../core/op_table.h"
#include "../cpu/kernels.h"
#include "../creation.h"
#include "launch.h"

namespace coil::cuda {

inline Ty ty(DType t) {
  switch (t) {
    case kF32:
      return Ty::f32;
    case kF64:
      return Ty::f64;
    case kI32:
      return Ty::i32;
    case kI64:
      return Ty::i64;
    case kBool:
      return Ty::b8;
    case kBF16:
      return Ty::bf16;
    case kF16:
      return Ty::f16;
  }
  fail("cuda: unsupported dtype ", t);
}

inline void check_on_gpu(const char* op, std::initializer_list<const Tensor*> ts) {
  for (const Tensor* t : ts)
    if (t->defined())
      COIL_CHECK(t->device().is_cuda(), op, " (cuda kernel): a tensor is on ", t->device());
}

inline void after_launch(const char* what) { check(cudaGetLastError(), what); }

// Two int64 on the device, zeroed: [flag, first bad value], for one indexing kernel.
class BadIndexFlag {
 public:
  explicit BadIndexFlag(Device d) : t_(zeros({2}, Options(kI64, d))) {}
  int64_t* ptr() const { return t_.data_ptr<int64_t>(); }
  // Reads the flag back (waits for the kernel): true, with the value, when an index was bad.
  bool raised(int64_t* value) const {
    auto v = to_vector<int64_t>(t_);
    *value = v[1];
    return v[0] != 0;
  }
  // ... and throws the CPU kernel's message.
  void check(const IndexGeom& g) const {
    int64_t v = 0;
    if (raised(&v)) fail(g.op, ": index ", v, " is out of range for dim ", g.dim, " of size ", g.n);
  }

 private:
  Tensor t_;
};

// fill_'s CUDA kernel, for the host code that zeroes its outputs.
void fill(const Tensor& out, double value);

template <class Fn>
void set_cuda(std::initializer_list<const char*> names, Fn* fn) {
  for (const char* name : names) op_row(name).set_kernel(kCUDA, fn);
}

}  // namespace coil::cuda
