// Reductions over any dims (empty dims = all), with keepdim.
#pragma once
#include <optional>
#include <utility>

#include "../core/tensor.h"

namespace coil {

Tensor sum(const Tensor& x, const Shape& dims = {}, bool keepdim = false);
Tensor mean(const Tensor& x, const Shape& dims = {}, bool keepdim = false);
// Variance with Bessel's correction by default (correction = 1), as torch.var.
Tensor var(const Tensor& x, const Shape& dims = {}, int64_t correction = 1, bool keepdim = false);
Tensor logsumexp(const Tensor& x, const Shape& dims, bool keepdim = false);
// Whole-tensor max/min (NaN propagates); the gradient is shared evenly among ties.
Tensor max(const Tensor& x);
Tensor min(const Tensor& x);
// Values and int64 indices along one dim.
std::pair<Tensor, Tensor> max(const Tensor& x, int64_t dim, bool keepdim = false);
std::pair<Tensor, Tensor> min(const Tensor& x, int64_t dim, bool keepdim = false);
Tensor amax(const Tensor& x, const Shape& dims, bool keepdim = false);
Tensor argmax(const Tensor& x, std::optional<int64_t> dim = std::nullopt, bool keepdim = false);
Tensor argmin(const Tensor& x, std::optional<int64_t> dim = std::nullopt, bool keepdim = false);
// Sums a broadcast gradient back down to `shape` (the inverse of broadcasting).
Tensor sum_to(const Tensor& g, const Shape& shape);
// True when any element is NaN or +-Inf (one pass, no autograd).
bool has_nonfinite(const Tensor& x);

}  // namespace coil
