// Mamba-1 and Mamba-2 language models (state-spaces/mamba's MambaLMHeadModel), with Hugging
// Face's parameter names and config fields, so `config.json` + `model.safetensors` from the Hub
// load as they are. The math is ../shared/MATH.md sections 1-3.
//
//   MambaLM
//     backbone.embeddings           Embedding (vocab, d_model)
//     backbone.layers.{i}.norm      RMSNorm
//     backbone.layers.{i}.mixer     Mamba (model_type "mamba") or Mamba2 ("mamba2")
//     backbone.norm_f               RMSNorm
//     lm_head                       tied to the embedding unless tie_word_embeddings is false
#pragma once
#include <limits>
#include <optional>
#include <string>

#include "../dist/context_parallel.h"
#include "layers.h"

namespace coil::nn {

// Field names are Hugging Face's MambaConfig / Mamba2Config. Defaults are mamba-130m's.
struct MambaConfig {
  std::string model_type = "mamba";  // "mamba" (Mamba-1) or "mamba2"
  int64_t vocab_size = 50280;
  int64_t hidden_size = 768;
  int64_t state_size = 16;
  int64_t num_hidden_layers = 24;
  int64_t expand = 2;
  int64_t conv_kernel = 4;
  bool use_bias = false;
  bool use_conv_bias = true;
  int64_t time_step_rank = 0;  // 0: "auto", ceil(hidden_size / 16)
  double time_step_min = 1e-3, time_step_max = 0.1, time_step_floor = 1e-4;
  double time_step_scale = 1.0;
  double layer_norm_epsilon = 1e-5;
  bool residual_in_fp32 = true;
  bool tie_word_embeddings = true;
  int64_t pad_vocab_size_multiple = 8;  // used by padded(): mamba_ssm pads new models' vocab
  int64_t bos_token_id = 0, eos_token_id = 0, pad_token_id = 0;
  // Mamba-2
  int64_t num_heads = 24, head_dim = 64, n_groups = 1, chunk_size = 256;
  double time_step_limit_min = 0.0;
  double time_step_limit_max = std::numeric_limits<double>::infinity();
  double A_init_min = 1.0, A_init_max = 16.0;  // mamba_ssm: A ~ U[1, 16]
  // Gated norm grouping (coil's field, MATH.md 3): true normalises per group of
  // d_inner / n_groups channels, as mamba_ssm does and as transformers does today (5.24.0, the
  // version tests/fixtures pins: MambaRMSNormGated with group_size = intermediate_size //
  // n_groups); false over all d_inner channels, as MATH.md describes older transformers. They
  // differ only when n_groups > 1.
  bool norm_per_group = true;
  // Mamba-1 only (coil's field): false builds the paper's non-selective ablation (MATH.md 7):
  // Δ (per channel), B and C (per channel and state) are learned parameters that do not depend
  // on the input; x_proj and dt_proj are absent.
  bool selective = true;

  bool is_mamba2() const { return model_type == "mamba2"; }
  int64_t intermediate_size() const { return expand * hidden_size; }
  int64_t dt_rank() const {  // ceil(hidden_size / 16), without overflow near the int64 limit
    return time_step_rank > 0 ? time_step_rank : hidden_size / 16 + (hidden_size % 16 != 0);
  }
  int64_t conv_dim() const {
    return is_mamba2() ? intermediate_size() + 2 * n_groups * state_size : intermediate_size();
  }
  // The vocabulary rounded up to pad_vocab_size_multiple, as mamba_ssm builds new models.
  MambaConfig padded() const;
  // Throws coil::Error naming the first inconsistent field.
  void validate() const;
  // Layers are built one by one: a config.json asking for more is an error, not a hang.
  static constexpr int64_t kMaxLayers = 1 << 16;

  // config.json as Hugging Face writes it (extra fields are ignored when reading).
  static MambaConfig from_json(const std::string& text, const std::string& what = "config.json");
  static MambaConfig load(const std::string& path);
  std::string to_json() const;
  void save(const std::string& path) const;  // atomic: temporary name, then rename

  static MambaConfig mamba_130m();   // state-spaces/mamba-130m (vocab 50277 padded to 50280)
  static MambaConfig mamba2_130m();  // state-spaces/mamba2-130m
};

// Per-layer decoding state: the last K-1 conv inputs and the SSM state. One token costs the same
// at any position.
struct LayerCache {
  Tensor conv_window;  // (batch, K-1, conv_dim)
  Tensor ssm_state;    // Mamba: (batch, d_inner, N); Mamba-2: (batch, heads, head_dim, N)
};

struct MambaCache {
  std::vector<LayerCache> layers;
  int64_t position = 0;  // tokens consumed so far
};

// Mamba-1 mixer (MATH.md 1). forward(u (batch, L, d_model)) -> (batch, L, d_model).
class Mamba : public Module {
 public:
  Mamba(const MambaConfig& c, DType dtype = kF32);
  // With a cache, starts from its window and state (zeros when undefined) and stores the new ones.
  Tensor forward(const Tensor& u, LayerCache* cache = nullptr) const;

  std::shared_ptr<Linear> in_proj, x_proj, dt_proj, out_proj;  // x_proj, dt_proj: selective only
  std::shared_ptr<CausalConv1d> conv1d;
  Tensor A_log, D;
  Tensor dt_bias, B, C;  // the non-selective ablation's (d_inner), (d_inner, N), (d_inner, N)
  int64_t d_inner, d_state, dt_rank;
  bool selective;
  // Set: u is this rank's piece of a sequence split over the group (dist/context_parallel.h).
  std::optional<dist::ContextParallel> context_parallel;
};

// Mamba-2 mixer (MATH.md 3). forward(u (batch, L, d_model)) -> (batch, L, d_model).
class Mamba2 : public Module {
 public:
  Mamba2(const MambaConfig& c, DType dtype = kF32);
  Tensor forward(const Tensor& u, LayerCache* cache = nullptr) const;

  std::shared_ptr<Linear> in_proj, out_proj;
  std::shared_ptr<CausalConv1d> conv1d;
  std::shared_ptr<RMSNormGated> norm;
  Tensor dt_bias, A_log, D;
  int64_t d_inner, d_state, n_heads, head_dim, n_groups, chunk_size;
  // Set: u is this rank's piece of a sequence split over the group (dist/context_parallel.h).
  std::optional<dist::ContextParallel> context_parallel;
};

// Pre-norm residual block: x + mixer(norm(x)).
class MambaBlock : public Module {
 public:
  MambaBlock(const MambaConfig& c, DType dtype = kF32);
  Tensor forward(const Tensor& x, LayerCache* cache = nullptr) const;
  std::shared_ptr<RMSNorm> norm;
  std::shared_ptr<Module> mixer;  // Mamba or Mamba2

 private:
  bool mamba2_;
};

class MambaBackbone : public Module {
 public:
  MambaBackbone(const MambaConfig& c, DType dtype = kF32);
  Tensor forward(const Tensor& ids, MambaCache* cache = nullptr) const;
  std::shared_ptr<Embedding> embeddings;
  std::shared_ptr<ModuleList> layers;
  std::shared_ptr<RMSNorm> norm_f;
};

struct SamplingOptions {
  bool greedy = false;       // argmax; ignores the rest
  double temperature = 1.0;  // logits / temperature
  int64_t top_k = 0;         // 0: off
  double top_p = 1.0;        // nucleus: smallest set with probability >= top_p
};

class MambaLM : public Module {
 public:
  // Builds a freshly initialised model with mamba_ssm's initialisation (MATH.md 1-3). The
  // vocabulary is used as given; call config.padded() first for mamba_ssm's padding.
  explicit MambaLM(const MambaConfig& config, DType dtype = kF32);

  // ids (batch, L) int -> logits (batch, L, vocab). With a cache: continues from it.
  Tensor forward(const Tensor& ids, MambaCache* cache = nullptr) const;

  // Prompt ids (batch, L) or (L); returns (batch, L + max_new_tokens) ids. Runs the prompt once
  // through the full forward, then one cached step per token.
  Tensor generate(const Tensor& prompt_ids, int64_t max_new_tokens,
                  const SamplingOptions& sampling = {}) const;
  // Picks the next ids (batch) from logits (batch, vocab) with coil's RNG.
  static Tensor sample(const Tensor& logits, const SamplingOptions& sampling);

  // AdamW groups as the reference trains: no decay on biases, norm weights, A_log, D, dt_bias
  // (and the ablation's B, C).
  struct DecayGroups {
    std::vector<Tensor> decay, no_decay;
  };
  DecayGroups weight_decay_groups() const;

  // Hugging Face directory: config.json + model.safetensors (or a sharded index).
  static std::shared_ptr<MambaLM> from_pretrained(const std::string& dir, DType dtype = kF32);
  void save_pretrained(const std::string& dir) const;

  // Context parallelism: forward takes this rank's piece (torch.chunk's split of the sequence
  // over cp.group) and returns its logits; the mixers exchange their conv halo and scan state
  // (dist/context_parallel.h). Parameter gradients are this rank's share: sum them over the
  // group (LMTrainer does, with data parallelism). A group of one, or nullopt, turns it off.
  void set_context_parallel(const std::optional<dist::ContextParallel>& cp);

  const MambaConfig& config() const { return config_; }
  std::shared_ptr<MambaBackbone> backbone;
  std::shared_ptr<Linear> lm_head;

 private:
  MambaConfig config_;
};

}  // namespace coil::nn
