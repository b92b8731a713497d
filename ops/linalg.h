// Matrix products. f32/f64 go to BLAS (OpenBLAS, OpenMP build); 16-bit floats compute in f32.
#pragma once
#include "../core/tensor.h"

namespace coil {

// torch.matmul semantics: 1-d operands are promoted and squeezed, batch dims broadcast.
Tensor matmul(const Tensor& a, const Tensor& b);
Tensor bmm(const Tensor& a, const Tensor& b);  // (B, n, k) x (B, k, m)
// x (..., in) times weight (out, in) transposed, plus bias (out).
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias = Tensor());
// Grouped product (mixture-of-experts layers, torch._grouped_mm): x (n, k) holds groups of
// consecutive rows, group e being rows offsets[e] .. offsets[e+1] - 1; each group times its own
// w[e] (k, m), w (E, k, m) (any strides: w.transpose(1, 2) of an (E, m, k) stack works). offsets:
// int64 (E + 1), non-decreasing from 0 to n, on the CPU. Returns (n, m); empty groups are fine.
Tensor grouped_mm(const Tensor& x, const Tensor& w, const Tensor& offsets);

}  // namespace coil
