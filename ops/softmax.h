// Softmax and log-softmax along a dim (computed in f32 for 16-bit inputs, max-shifted).
#pragma once
#include "../core/tensor.h"

namespace coil {

Tensor softmax(const Tensor& x, int64_t dim);
Tensor log_softmax(const Tensor& x, int64_t dim);

}  // namespace coil
