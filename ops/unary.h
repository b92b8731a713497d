// Elementwise functions of one tensor. Integer inputs to float functions give f32, like PyTorch;
// bf16/f16 compute in f32.
#pragma once
#include <optional>

#include "../core/tensor.h"

namespace coil {

Tensor neg(const Tensor& x);
Tensor exp(const Tensor& x);
Tensor log(const Tensor& x);
Tensor log1p(const Tensor& x);
Tensor sqrt(const Tensor& x);
Tensor rsqrt(const Tensor& x);
Tensor abs(const Tensor& x);
Tensor tanh(const Tensor& x);
Tensor sigmoid(const Tensor& x);
Tensor silu(const Tensor& x);
// log(1 + exp(beta x)) / beta, and x itself where beta x > threshold (PyTorch's default 20).
Tensor softplus(const Tensor& x, double beta = 1.0, double threshold = 20.0);
Tensor gelu(const Tensor& x, bool tanh_approximation = false);
Tensor erf(const Tensor& x);
Tensor relu(const Tensor& x);
Tensor pow(const Tensor& x, Scalar exponent);
Tensor square(const Tensor& x);
Tensor reciprocal(const Tensor& x);
Tensor sign(const Tensor& x);  // not differentiable (zero gradient)
Tensor clamp(const Tensor& x, std::optional<Scalar> min, std::optional<Scalar> max);
Tensor isfinite(const Tensor& x);     // bool
Tensor logical_not(const Tensor& x);  // bool

}  // namespace coil
