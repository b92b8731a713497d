// Copies and conversions: clone, to(dtype|device), copy_, fill_, contiguous.
#pragma once
#include "../core/tensor.h"

namespace coil {

Tensor to_dtype(const Tensor& x, DType t);  // differentiable between float types
Tensor clone(const Tensor& x);              // contiguous copy, differentiable
Tensor contiguous(const Tensor& x);         // x itself when already contiguous

}  // namespace coil
