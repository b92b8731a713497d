#include "layers.h"

#include <cmath>

#include "../autograd/autograd.h"
#include "../core/error.h"
#include "../ops/ops.h"

namespace coil::nn {

namespace {
thread_local bool skip_init = false;
}

SkipInitGuard::SkipInitGuard() : prev_(skip_init) { skip_init = true; }
SkipInitGuard::~SkipInitGuard() { skip_init = prev_; }
bool SkipInitGuard::active() { return skip_init; }

void uniform_init_(Tensor& t, double low, double high) {
  if (skip_init) return;
  NoGradGuard no_grad;
  uniform_(t, low, high);
}

void normal_init_(Tensor& t, double mean, double std) {
  if (skip_init) return;
  NoGradGuard no_grad;
  normal_(t, mean, std);
}

Linear::Linear(int64_t in_features, int64_t out_features, bool has_bias, DType dtype) {
  COIL_CHECK(in_features > 0 && out_features > 0, "Linear: features must be positive, got in ",
             in_features, ", out ", out_features);
  const double bound = 1.0 / std::sqrt(static_cast<double>(in_features));
  weight = empty({out_features, in_features}, dtype);
  uniform_init_(weight, -bound, bound);
  register_parameter("weight", &weight);
  if (has_bias) {
    bias = empty({out_features}, dtype);
    uniform_init_(bias, -bound, bound);
    register_parameter("bias", &bias);
  }
}

Tensor Linear::forward(const Tensor& x) const { return linear(pre_hook(x), weight, bias); }

Embedding::Embedding(int64_t num_embeddings, int64_t embedding_dim, DType dtype, double init_std) {
  COIL_CHECK(num_embeddings > 0 && embedding_dim > 0, "Embedding: sizes must be positive, got ",
             num_embeddings, " x ", embedding_dim);
  weight = empty({num_embeddings, embedding_dim}, dtype);
  normal_init_(weight, 0, init_std);
  register_parameter("weight", &weight);
}

Tensor Embedding::forward(const Tensor& ids) const { return embedding(weight, ids, padding_idx); }

RMSNorm::RMSNorm(int64_t dim, double eps_, DType dtype) : eps(eps_) {
  weight = ones({dim}, dtype);
  register_parameter("weight", &weight);
}

Tensor RMSNorm::forward(const Tensor& x) const { return rms_norm(pre_hook(x), weight, eps); }

RMSNormGated::RMSNormGated(int64_t dim, int64_t group_size_, double eps_, DType dtype)
    : group_size(group_size_), eps(eps_) {
  COIL_CHECK(group_size > 0 && dim % group_size == 0, "RMSNormGated: group_size ", group_size,
             " must divide dim ", dim);
  weight = ones({dim}, dtype);
  register_parameter("weight", &weight);
}

Tensor RMSNormGated::forward(const Tensor& x, const Tensor& z) const {
  const int64_t dim = weight.size(0);
  COIL_CHECK(x.dim() >= 1 && x.size(-1) == dim && x.sizes() == z.sizes(), "RMSNormGated: x ",
             x.shape_str(), " and z ", z.shape_str(), " must match, last dim ", dim);
  Tensor g = x * silu(z);
  if (group_size == dim) return rms_norm(g, weight, eps);
  Shape grouped(x.sizes().begin(), x.sizes().end() - 1);
  grouped.push_back(dim / group_size);
  grouped.push_back(group_size);
  return rms_norm(g.reshape(grouped), Tensor(), eps).reshape(x.sizes()) * weight;
}

CausalConv1d::CausalConv1d(int64_t channels, int64_t kernel_size, bool has_bias, DType dtype) {
  COIL_CHECK(channels > 0 && kernel_size > 0, "CausalConv1d: channels ", channels,
             " and kernel_size ", kernel_size, " must be positive");
  const double bound = 1.0 / std::sqrt(static_cast<double>(kernel_size));
  weight = empty({channels, 1, kernel_size}, dtype);
  uniform_init_(weight, -bound, bound);
  register_parameter("weight", &weight);
  if (has_bias) {
    bias = empty({channels}, dtype);
    uniform_init_(bias, -bound, bound);
    register_parameter("bias", &bias);
  }
}

Tensor CausalConv1d::forward(const Tensor& x, bool silu_on, const Tensor& window,
                             Tensor* final_window) const {
  CausalConv1dOptions o;
  o.bias = bias;
  o.initial_window = window;
  o.activation_silu = silu_on;
  o.return_final_window = final_window != nullptr;
  auto [y, fw] = causal_conv1d(x, weight.view({weight.size(0), weight.size(2)}), o);
  if (final_window) *final_window = fw;
  return y;
}

Tensor Dropout::forward(const Tensor& x) const { return dropout(x, p, is_training()); }

}  // namespace coil::nn
