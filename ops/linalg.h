// Matrix products. f32/f64 go to BLAS (OpenBLAS, OpenMP build); 16-bit floats compute in f32.
#pragma once
#include "../core/tensor.h"

namespace coil {

// torch.matmul semantics: 1-d operands are promoted and squeezed, batch dims broadcast.
Tensor matmul(const Tensor& a, const Tensor& b);
Tensor bmm(const Tensor& a, const Tensor& b);  // (B, n, k) x (B, k, m)
// x (..., in) times weight (out, in) transposed, plus bias (out).
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias = Tensor());

}  // namespace coil
