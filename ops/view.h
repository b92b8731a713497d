// Views: results share storage with their input (see the Tensor methods). Free-function forms.
#pragma once
#include "../core/tensor.h"

namespace coil {

Tensor view(const Tensor& x, const Shape& shape);  // one dim may be -1
Tensor reshape(const Tensor& x, const Shape& shape);
Tensor permute(const Tensor& x, const Shape& dims);
Tensor transpose(const Tensor& x, int64_t d0, int64_t d1);
Tensor narrow(const Tensor& x, int64_t dim, int64_t start, int64_t length);
Tensor slice(const Tensor& x, int64_t dim, std::optional<int64_t> start, std::optional<int64_t> end,
             int64_t step = 1);
Tensor select(const Tensor& x, int64_t dim, int64_t index);
Tensor expand(const Tensor& x, const Shape& shape);  // -1 keeps a size
Tensor squeeze(const Tensor& x, std::optional<int64_t> dim = std::nullopt);
Tensor unsqueeze(const Tensor& x, int64_t dim);
Tensor flatten(const Tensor& x, int64_t start_dim = 0, int64_t end_dim = -1);
Tensor detach(const Tensor& x);
// The gradient of a strided view: zeros of base's shape with grad written into the view's place.
Tensor as_strided_scatter_zero(const Tensor& grad, const Shape& base_sizes, const Shape& view_sizes,
                               const Shape& view_strides, int64_t view_offset);

}  // namespace coil
