// Dropout with a mask drawn from the seeded Philox stream; identity when !train or p == 0.
#pragma once
#include "../core/tensor.h"

namespace coil {

Tensor dropout(const Tensor& x, double p = 0.5, bool train = true);

}  // namespace coil
