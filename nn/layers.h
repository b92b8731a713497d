// The building blocks of the Mamba models, as torch.nn layers: Linear, Embedding, RMSNorm, the
// gated RMSNorm of Mamba-2, the depthwise causal Conv1d of both mixers, Dropout.
// Parameter names and shapes are PyTorch's, so Hugging Face checkpoints load as they are.
#pragma once
#include "module.h"

namespace coil::nn {

// y = x W^T + b. weight (out, in), bias (out). Init as torch.nn.Linear:
// U(-1/sqrt(in), 1/sqrt(in)) for both.
class Linear : public Module {
 public:
  Linear(int64_t in_features, int64_t out_features, bool bias = true, DType dtype = kF32);
  Tensor forward(const Tensor& x) const;
  Tensor weight, bias;
};

// Rows of weight (num, dim) picked by integer ids; init N(0, init_std^2) (torch.nn.Embedding:
// N(0, 1); mamba_ssm: std 0.02).
class Embedding : public Module {
 public:
  Embedding(int64_t num_embeddings, int64_t embedding_dim, DType dtype = kF32,
            double init_std = 1.0);
  Tensor forward(const Tensor& ids) const;
  Tensor weight;
  // A row that gets no gradient (torch.nn.Embedding's padding_idx); -1: none.
  int64_t padding_idx = -1;
};

// x / sqrt(mean(x^2) + eps) * weight over the last dim; weight starts at ones.
class RMSNorm : public Module {
 public:
  explicit RMSNorm(int64_t dim, double eps = 1e-5, DType dtype = kF32);
  Tensor forward(const Tensor& x) const;
  Tensor weight;
  double eps;
};

// Mamba-2's gated norm with the gate applied first: rmsnorm(x * silu(z)) * weight, normalised
// over groups of group_size channels of the last dim (mamba_ssm: dim / n_groups; Hugging Face:
// the whole dim).
class RMSNormGated : public Module {
 public:
  RMSNormGated(int64_t dim, int64_t group_size, double eps = 1e-5, DType dtype = kF32);
  Tensor forward(const Tensor& x, const Tensor& z) const;
  Tensor weight;
  int64_t group_size;
  double eps;
};

// Depthwise causal conv over token-major (batch, L, channels) input, fused with bias and SiLU.
// weight (channels, 1, K) as torch.nn.Conv1d(groups=channels); init U(-1/sqrt(K), 1/sqrt(K)).
class CausalConv1d : public Module {
 public:
  CausalConv1d(int64_t channels, int64_t kernel_size, bool bias = true, DType dtype = kF32);
  // window: the previous K-1 inputs (batch, K-1, channels) or undefined for zeros. If
  // final_window is given it receives the last K-1 inputs (the decoding cache).
  Tensor forward(const Tensor& x, bool silu = true, const Tensor& window = Tensor(),
                 Tensor* final_window = nullptr) const;
  int64_t kernel_size() const { return weight.size(2); }
  Tensor weight, bias;
};

class Dropout : public Module {
 public:
  explicit Dropout(double p = 0.5) : p(p) {}
  Tensor forward(const Tensor& x) const;
  double p;
};

// In-place initialisers (no autograd), as torch.nn.init.
void uniform_init_(Tensor& t, double low, double high);
void normal_init_(Tensor& t, double mean, double std);

// While one is alive on this thread, the random initialisers above leave tensors as they are
// (uninitialised memory): building a model whose every value is about to be loaded from a file
// skips the work. Like torch's skip_init / init_empty_weights.
class SkipInitGuard {
 public:
  SkipInitGuard();
  ~SkipInitGuard();
  SkipInitGuard(const SkipInitGuard&) = delete;
  SkipInitGuard& operator=(const SkipInitGuard&) = delete;
  static bool active();

 private:
  bool prev_;
};

}  // namespace coil::nn
