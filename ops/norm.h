// Normalisations over the trailing dims.
#pragma once
#include "../core/tensor.h"

namespace coil {

// x / sqrt(mean(x^2, last dim) + eps) * weight (weight optional, shape (last dim)).
Tensor rms_norm(const Tensor& x, const Tensor& weight = Tensor(), double eps = 1e-5);
// (x - mean) / sqrt(var + eps) * weight + bias over the trailing normalized_shape dims.
Tensor layer_norm(const Tensor& x, const Shape& normalized_shape, const Tensor& weight = Tensor(),
                  const Tensor& bias = Tensor(), double eps = 1e-5);

}  // namespace coil
