// Joining, splitting, padding and repeating.
#pragma once
#include <string>

#include "../core/tensor.h"

namespace coil {

Tensor cat(const TensorList& xs, int64_t dim = 0);
Tensor stack(const TensorList& xs, int64_t dim = 0);
TensorList split(const Tensor& x, int64_t split_size, int64_t dim = 0);  // last piece shorter
TensorList split(const Tensor& x, const Shape& split_sizes,
                 int64_t dim = 0);                                   // sizes sum to the dim
TensorList chunk(const Tensor& x, int64_t chunks, int64_t dim = 0);  // torch.chunk semantics
// torch.nn.functional.pad, constant mode: pads = (last_lo, last_hi, prev_lo, prev_hi, ...);
// negative pads crop.
Tensor pad(const Tensor& x, const Shape& pads, Scalar value = 0);
Tensor repeat_interleave(const Tensor& x, int64_t repeats, int64_t dim);
Tensor repeat_interleave(const Tensor& x, const Tensor& repeats, int64_t dim);  // int64 (n)

}  // namespace coil
