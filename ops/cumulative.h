// Cumulative sum and product along a dim.
#pragma once
#include "../core/tensor.h"

namespace coil {

Tensor cumsum(const Tensor& x, int64_t dim, bool reverse = false);
Tensor cumprod(const Tensor& x, int64_t dim);

}  // namespace coil
