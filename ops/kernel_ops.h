// The operations a kernel family computes, as plain enums with no dependencies: the CPU kernels
// (ops/cpu/kernels.h) and the CUDA device code (ops/cuda/*.cu) share them.
#pragma once

namespace coil {

enum class UnaryOp : int {
  neg,
  exp,
  log,
  log1p,
  sqrt,
  rsqrt,
  abs,
  tanh,
  sigmoid,
  silu,
  softplus,
  gelu,
  relu,
  pow,
  clamp,
  square,
  sign,
  reciprocal,
  isfinite,
  logical_not,
  erf
};
enum class BinaryOp : int { add, sub, mul, div, pow, maximum, minimum, eq, ne, lt, le, gt, ge };
enum class ReduceOp : int { sum, prod, max, min, argmax, argmin, logsumexp, any_nonfinite };
enum class RandomKind : int { uniform, normal, randint, bernoulli };
enum class ScanOp : int { cumsum, cumprod, cumprod_grad };

}  // namespace coil
