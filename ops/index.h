// Indexing ops. Indices are int64 (int32 accepted); out-of-range indices are errors.
#pragma once
#include "../core/tensor.h"

namespace coil {

// weight (V, D), ids of any shape -> (*ids.shape, D). Backward adds rows into dweight, except
// row padding_idx (>= 0; -1: none) which gets no gradient, as torch.nn.functional.embedding.
Tensor embedding(const Tensor& weight, const Tensor& ids, int64_t padding_idx = -1);
Tensor index_select(const Tensor& x, int64_t dim, const Tensor& index);  // index 1-d
// out[i][j] = x[i][index[i][j]] along dim (index has x's number of dims).
Tensor gather(const Tensor& x, int64_t dim, const Tensor& index);
// x with src added at index along dim (out-of-place; torch.scatter_add).
Tensor scatter_add(const Tensor& x, int64_t dim, const Tensor& index, const Tensor& src);
// x with src's slices added at index (1-d) along dim (out-of-place; torch.index_add).
Tensor index_add(const Tensor& x, int64_t dim, const Tensor& index, const Tensor& src,
                 Scalar alpha = 1);
// int64 ids -> (*ids.shape, num_classes) int64 one-hot; num_classes -1 infers max + 1.
Tensor one_hot(const Tensor& ids, int64_t num_classes = -1);

}  // namespace coil
