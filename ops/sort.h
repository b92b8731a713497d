// Sorting and top-k along a dim; indices are int64. Ties keep the lower index first (stable).
#pragma once
#include <utility>

#include "../core/tensor.h"

namespace coil {

std::pair<Tensor, Tensor> sort(const Tensor& x, int64_t dim = -1, bool descending = false);
Tensor argsort(const Tensor& x, int64_t dim = -1, bool descending = false);
// The k largest (or smallest) along dim, sorted.
std::pair<Tensor, Tensor> topk(const Tensor& x, int64_t k, int64_t dim = -1, bool largest = true);

}  // namespace coil
