// Losses. Reductions follow PyTorch: "mean" (default), "sum", "none".
#pragma once
#include <string>

#include "../core/tensor.h"

namespace coil {

// logits (N, C) or (N, C, d1, ...) and int64 targets (N) or (N, d1, ...). The mean is over
// targets that are not ignore_index; label_smoothing mixes in the uniform distribution.
Tensor cross_entropy(const Tensor& logits, const Tensor& target, int64_t ignore_index = -100,
                     double label_smoothing = 0.0, const std::string& reduction = "mean");
Tensor mse_loss(const Tensor& input, const Tensor& target, const std::string& reduction = "mean");

}  // namespace coil
