#include "mamba.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "../autograd/autograd.h"
#include "../core/error.h"
#include "../core/rng.h"
#include "../ops/ops.h"

namespace coil::nn {

// ---- config ----

MambaConfig MambaConfig::padded() const {
  MambaConfig c = *this;
  const int64_t m = std::max<int64_t>(1, pad_vocab_size_multiple);
  c.vocab_size = (vocab_size + m - 1) / m * m;
  return c;
}

void MambaConfig::validate() const {
  auto positive = [](const char* field, int64_t v) {
    COIL_CHECK(v > 0, "MambaConfig: ", field, " must be positive, got ", v);
  };
  COIL_CHECK(model_type == "mamba" || model_type == "mamba2",
             "MambaConfig: model_type must be \"mamba\" or \"mamba2\", got \"", model_type, "\"");
  positive("vocab_size", vocab_size);
  positive("hidden_size", hidden_size);
  positive("state_size", state_size);
  positive("num_hidden_layers", num_hidden_layers);
  COIL_CHECK(num_hidden_layers <= kMaxLayers, "MambaConfig: num_hidden_layers ", num_hidden_layers,
             " is more than ", kMaxLayers);
  positive("expand", expand);
  positive("conv_kernel", conv_kernel);
  int64_t d_inner = 0;  // shapes multiply these sizes: the products must stay in range
  COIL_CHECK(!__builtin_mul_overflow(expand, hidden_size, &d_inner), "MambaConfig: expand ", expand,
             " x hidden_size ", hidden_size, " is out of range");
  COIL_CHECK(selective || !is_mamba2(),
             "MambaConfig: the non-selective ablation (selective = "
             "false) is a Mamba-1 variant; model_type is \"mamba2\"");
  COIL_CHECK(time_step_min > 0 && time_step_max >= time_step_min,
             "MambaConfig: need 0 < time_step_min <= time_step_max, got ", time_step_min, ", ",
             time_step_max);
  if (!is_mamba2()) return;
  positive("num_heads", num_heads);
  positive("head_dim", head_dim);
  positive("n_groups", n_groups);
  positive("chunk_size", chunk_size);
  int64_t heads_inner = 0, conv = 0;
  COIL_CHECK(!__builtin_mul_overflow(num_heads, head_dim, &heads_inner) && heads_inner == d_inner,
             "MambaConfig: num_heads ", num_heads, " x head_dim ", head_dim,
             " must equal expand x hidden_size = ", d_inner);
  COIL_CHECK(!__builtin_mul_overflow(n_groups, state_size, &conv) &&
                 !__builtin_mul_overflow(conv, 2, &conv) &&
                 !__builtin_add_overflow(conv, d_inner, &conv),
             "MambaConfig: n_groups ", n_groups, " x state_size ", state_size, " is out of range");
  COIL_CHECK(num_heads % n_groups == 0, "MambaConfig: n_groups ", n_groups,
             " must divide num_heads ", num_heads);
  COIL_CHECK(time_step_limit_min == 0.0 && std::isinf(time_step_limit_max),
             "MambaConfig: time_step_limit other than (0, inf) is not supported, got (",
             time_step_limit_min, ", ", time_step_limit_max, ")");
  COIL_CHECK(A_init_min > 0 && A_init_max >= A_init_min, "MambaConfig: A_init range (", A_init_min,
             ", ", A_init_max, ") must be positive");
}

MambaConfig MambaConfig::mamba_130m() {
  MambaConfig c;
  c.vocab_size = 50277;
  return c.padded();
}

MambaConfig MambaConfig::mamba2_130m() {
  MambaConfig c;
  c.model_type = "mamba2";
  c.vocab_size = 50277;
  c.state_size = 128;
  c.num_heads = 24;
  c.head_dim = 64;
  c.n_groups = 1;
  c.chunk_size = 256;
  return c.padded();
}

// ---- initialisation helpers (mamba_ssm's) ----

namespace {

// dt log-uniform in [dt_min, dt_max], floored; the bias is its inverse softplus, so that
// softplus(bias) = dt at init.
Tensor inverse_softplus_dt_bias(int64_t n, const MambaConfig& c, DType dtype) {
  Tensor u = rand({n}, kF64);
  Tensor dt =
      exp(u * (std::log(c.time_step_max) - std::log(c.time_step_min)) + std::log(c.time_step_min));
  dt = clamp(dt, c.time_step_floor, std::nullopt);
  // log(-expm1(-dt)) = log(1 - exp(-dt))
  Tensor bias = dt + log(1.0 - exp(neg(dt)));
  return bias.to(dtype);
}

void zero_(Tensor& t) {
  NoGradGuard no_grad;
  t.zero_();
}

// out_proj: Linear default, then / sqrt(n_layer) (mamba_ssm's rescale_prenorm_residual).
void rescale_(Tensor& w, int64_t n_layer) {
  if (SkipInitGuard::active()) return;
  NoGradGuard no_grad;
  w.mul_(1.0 / std::sqrt(static_cast<double>(n_layer)));
}

}  // namespace

// ---- Mamba-1 mixer ----

Mamba::Mamba(const MambaConfig& c, DType dtype)
    : d_inner(c.intermediate_size()),
      d_state(c.state_size),
      dt_rank(c.dt_rank()),
      selective(c.selective) {
  const int64_t dm = c.hidden_size;
  in_proj =
      register_module("in_proj", std::make_shared<Linear>(dm, 2 * d_inner, c.use_bias, dtype));
  conv1d = register_module(
      "conv1d", std::make_shared<CausalConv1d>(d_inner, c.conv_kernel, c.use_conv_bias, dtype));
  if (selective) {
    x_proj = register_module(
        "x_proj", std::make_shared<Linear>(d_inner, dt_rank + 2 * d_state, false, dtype));
    dt_proj = register_module("dt_proj", std::make_shared<Linear>(dt_rank, d_inner, true, dtype));
    const double std = c.time_step_scale / std::sqrt(static_cast<double>(dt_rank));
    uniform_init_(dt_proj->weight, -std, std);
    NoGradGuard no_grad;
    dt_proj->bias.copy_(inverse_softplus_dt_bias(d_inner, c, kF64));
  } else {
    // The ablation's Δ starts where the selective model's does; B and C as a random LTI system.
    dt_bias = inverse_softplus_dt_bias(d_inner, c, dtype);
    B = empty({d_inner, d_state}, dtype);
    C = empty({d_inner, d_state}, dtype);
    normal_init_(B, 0, 1);
    normal_init_(C, 0, 1 / std::sqrt(static_cast<double>(d_state)));
    register_parameter("dt_bias", &dt_bias);
    register_parameter("B", &B);
    register_parameter("C", &C);
  }
  out_proj = register_module("out_proj", std::make_shared<Linear>(d_inner, dm, c.use_bias, dtype));
  if (c.use_bias) {
    zero_(in_proj->bias);
    zero_(out_proj->bias);
  }
  rescale_(out_proj->weight, c.num_hidden_layers);
  // A = -(1..N) for every channel, stored as its log.
  A_log = log(arange(1, d_state + 1, 1, kF64)).unsqueeze(0).expand({d_inner, d_state}).contiguous();
  A_log = A_log.to(dtype);
  D = ones({d_inner}, dtype);
  register_parameter("A_log", &A_log);
  register_parameter("D", &D);
}

Tensor Mamba::forward(const Tensor& u, LayerCache* cache) const {
  COIL_CHECK(u.dim() == 3 && u.size(2) == in_proj->weight.size(1),
             "Mamba: input must be (batch, L, ", in_proj->weight.size(1), "), got ", u.shape_str());
  const int64_t b = u.size(0), L = u.size(1);
  const dist::ContextParallel* cp = context_parallel ? &*context_parallel : nullptr;
  COIL_CHECK(!(cp && cache), "Mamba: a decoding cache and context parallelism do not mix");
  TensorList xz = split(in_proj->forward(u), Shape{d_inner, d_inner}, -1);
  Tensor window;
  Tensor x = conv1d->forward(xz[0], true,
                             cp ? dist::cp_conv_halo(xz[0], conv1d->kernel_size() - 1, *cp)
                                : (cache ? cache->conv_window : Tensor()),
                             cache ? &window : nullptr);
  SelectiveScanOptions o;
  o.D = D;
  o.z = xz[1];
  o.delta_softplus = true;
  if (cache) {
    o.initial_state = cache->ssm_state;
    o.return_final_state = true;
  }
  Tensor delta, Bt, Ct;
  if (selective) {
    TensorList dbc = split(x_proj->forward(x), Shape{dt_rank, d_state, d_state}, -1);
    delta = linear(dbc[0], dt_proj->weight);
    o.delta_bias = dt_proj->bias;
    Bt = dbc[1];
    Ct = dbc[2];
  } else {  // the same Δ, B, C at every token: B and C as one group per channel
    delta = dt_bias.expand({b, L, d_inner});
    Bt = B.expand({b, L, d_inner, d_state});
    Ct = C.expand({b, L, d_inner, d_state});
  }
  auto [y, state] = cp ? dist::cp_selective_scan(x, delta, neg(exp(A_log)), Bt, Ct, o, *cp)
                       : selective_scan(x, delta, neg(exp(A_log)), Bt, Ct, o);
  if (cache) {
    cache->conv_window = window;
    cache->ssm_state = state;
  }
  return out_proj->forward(y);
}

// ---- Mamba-2 mixer ----

Mamba2::Mamba2(const MambaConfig& c, DType dtype)
    : d_inner(c.intermediate_size()),
      d_state(c.state_size),
      n_heads(c.num_heads),
      head_dim(c.head_dim),
      n_groups(c.n_groups),
      chunk_size(c.chunk_size) {
  const int64_t dm = c.hidden_size, conv_dim = c.conv_dim();
  in_proj = register_module(
      "in_proj", std::make_shared<Linear>(dm, d_inner + conv_dim + n_heads, c.use_bias, dtype));
  conv1d = register_module(
      "conv1d", std::make_shared<CausalConv1d>(conv_dim, c.conv_kernel, c.use_conv_bias, dtype));
  if (c.use_bias) zero_(in_proj->bias);
  dt_bias = inverse_softplus_dt_bias(n_heads, c, dtype);
  Tensor a = rand({n_heads}, kF64) * (c.A_init_max - c.A_init_min) + c.A_init_min;
  A_log = log(a).to(dtype);
  D = ones({n_heads}, dtype);
  register_parameter("dt_bias", &dt_bias);
  register_parameter("A_log", &A_log);
  register_parameter("D", &D);
  norm = register_module("norm", std::make_shared<RMSNormGated>(
                                     d_inner, c.norm_per_group ? d_inner / n_groups : d_inner,
                                     c.layer_norm_epsilon, dtype));
  out_proj = register_module("out_proj", std::make_shared<Linear>(d_inner, dm, c.use_bias, dtype));
  if (c.use_bias) zero_(out_proj->bias);
  rescale_(out_proj->weight, c.num_hidden_layers);
}

Tensor Mamba2::forward(const Tensor& u, LayerCache* cache) const {
  COIL_CHECK(u.dim() == 3 && u.size(2) == in_proj->weight.size(1),
             "Mamba2: input must be (batch, L, ", in_proj->weight.size(1), "), got ",
             u.shape_str());
  const int64_t b = u.size(0), L = u.size(1), gn = n_groups * d_state;
  const dist::ContextParallel* cp = context_parallel ? &*context_parallel : nullptr;
  COIL_CHECK(!(cp && cache), "Mamba2: a decoding cache and context parallelism do not mix");
  TensorList zxd = split(in_proj->forward(u), Shape{d_inner, d_inner + 2 * gn, n_heads}, -1);
  Tensor window;
  Tensor xbc = conv1d->forward(zxd[1], true,
                               cp ? dist::cp_conv_halo(zxd[1], conv1d->kernel_size() - 1, *cp)
                                  : (cache ? cache->conv_window : Tensor()),
                               cache ? &window : nullptr);
  TensorList s = split(xbc, Shape{d_inner, gn, gn}, -1);
  SsdScanOptions o;
  o.D = D;
  o.dt_bias = dt_bias;
  o.dt_softplus = true;
  if (cache) {
    o.initial_state = cache->ssm_state;
    o.return_final_state = true;
  }
  const Tensor xs = s[0].reshape({b, L, n_heads, head_dim}),
               Bs = s[1].reshape({b, L, n_groups, d_state}),
               Cs = s[2].reshape({b, L, n_groups, d_state});
  auto [y, state] = cp ? dist::cp_ssd_scan(xs, zxd[2], neg(exp(A_log)), Bs, Cs, chunk_size, o, *cp)
                       : ssd_scan(xs, zxd[2], neg(exp(A_log)), Bs, Cs, chunk_size, o);
  if (cache) {
    cache->conv_window = window;
    cache->ssm_state = state;
  }
  return out_proj->forward(norm->forward(y.reshape({b, L, d_inner}), zxd[0]));
}

// ---- blocks and the LM ----

MambaBlock::MambaBlock(const MambaConfig& c, DType dtype) : mamba2_(c.is_mamba2()) {
  norm = register_module("norm",
                         std::make_shared<RMSNorm>(c.hidden_size, c.layer_norm_epsilon, dtype));
  if (mamba2_)
    mixer = register_module("mixer", std::make_shared<Mamba2>(c, dtype));
  else
    mixer = register_module("mixer", std::make_shared<Mamba>(c, dtype));
}

Tensor MambaBlock::forward(const Tensor& x, LayerCache* cache) const {
  Tensor h = norm->forward(x);
  h = mamba2_ ? static_cast<const Mamba2&>(*mixer).forward(h, cache)
              : static_cast<const Mamba&>(*mixer).forward(h, cache);
  return x + h;
}

MambaBackbone::MambaBackbone(const MambaConfig& c, DType dtype) {
  embeddings = register_module(
      "embeddings", std::make_shared<Embedding>(c.vocab_size, c.hidden_size, dtype, 0.02));
  layers = register_module("layers", std::make_shared<ModuleList>());
  for (int64_t i = 0; i < c.num_hidden_layers; ++i)
    layers->push_back(std::make_shared<MambaBlock>(c, dtype));
  norm_f = register_module("norm_f",
                           std::make_shared<RMSNorm>(c.hidden_size, c.layer_norm_epsilon, dtype));
}

Tensor MambaBackbone::forward(const Tensor& ids, MambaCache* cache) const {
  COIL_CHECK(ids.dim() == 2 && !is_floating(ids.dtype()) && ids.dtype() != kBool,
             "MambaLM: ids must be integer (batch, L), got ", ids.dtype(), " ", ids.shape_str());
  if (cache && cache->layers.empty()) cache->layers.resize(layers->size());
  COIL_CHECK(!cache || cache->layers.size() == layers->size(), "MambaLM: cache has ",
             cache ? cache->layers.size() : 0, " layers, model ", layers->size());
  Tensor h = embeddings->forward(ids);
  for (size_t i = 0; i < layers->size(); ++i)
    h = layers->at<MambaBlock>(i)->forward(h, cache ? &cache->layers[i] : nullptr);
  if (cache) cache->position += ids.size(1);
  return norm_f->forward(h);
}

MambaLM::MambaLM(const MambaConfig& config, DType dtype) : config_(config) {
  config_.validate();
  backbone = register_module("backbone", std::make_shared<MambaBackbone>(config_, dtype));
  // A tied head gets the embedding itself; build it with one row so no time goes into an init
  // that is thrown away.
  const bool tied = config_.tie_word_embeddings;
  lm_head = register_module(
      "lm_head",
      std::make_shared<Linear>(config_.hidden_size, tied ? 1 : config_.vocab_size, false, dtype));
  if (tied) lm_head->weight = backbone->embeddings->weight;
}

void MambaLM::set_context_parallel(const std::optional<dist::ContextParallel>& cp) {
  const bool on = cp && cp->group && cp->group->size() > 1;
  auto set = [&](std::optional<dist::ContextParallel>& field) {
    if (on)
      field = *cp;
    else
      field.reset();
  };
  for (const auto& [name, layer] : backbone->layers->named_children()) {
    auto block = std::dynamic_pointer_cast<MambaBlock>(layer);
    if (auto m = std::dynamic_pointer_cast<Mamba>(block->mixer)) set(m->context_parallel);
    if (auto m = std::dynamic_pointer_cast<Mamba2>(block->mixer)) set(m->context_parallel);
  }
}

Tensor MambaLM::forward(const Tensor& ids, MambaCache* cache) const {
  return linear(backbone->forward(ids, cache), lm_head->weight);
}

MambaLM::DecayGroups MambaLM::weight_decay_groups() const {
  DecayGroups g;
  auto ends_with = [](const std::string& s, const std::string& suffix) {
    return s.size() >= suffix.size() &&
           s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
  };
  for (auto& [name, p] : named_parameters()) {
    bool no_decay = p.dim() < 2 || ends_with(name, ".A_log") || ends_with(name, ".D") ||
                    ends_with(name, ".dt_bias") || ends_with(name, ".B") || ends_with(name, ".C");
    (no_decay ? g.no_decay : g.decay).push_back(p);
  }
  return g;
}

// ---- generation ----

Tensor MambaLM::sample(const Tensor& logits, const SamplingOptions& s) {
  COIL_CHECK(logits.dim() == 2, "sample: logits must be (batch, vocab), got ", logits.shape_str());
  COIL_CHECK(s.greedy || s.temperature > 0, "sample: temperature must be positive, got ",
             s.temperature);
  COIL_CHECK(s.top_p > 0 && s.top_p <= 1, "sample: top_p must be in (0, 1], got ", s.top_p);
  COIL_CHECK(s.top_k >= 0, "sample: top_k must be >= 0, got ", s.top_k);
  const int64_t b = logits.size(0), v = logits.size(1);
  std::vector<float> x = to_vector<float>(logits);
  std::vector<double> u = s.greedy ? std::vector<double>() : to_vector<double>(rand({b}, kF64));
  std::vector<int64_t> out(b);
  std::vector<int64_t> order(v);
  std::vector<double> p(v);
  for (int64_t r = 0; r < b; ++r) {
    const float* row = x.data() + r * v;
    if (s.greedy) {
      out[r] = std::max_element(row, row + v) - row;
      continue;
    }
    std::iota(order.begin(), order.end(), 0);
    const int64_t k = s.top_k > 0 ? std::min(s.top_k, v) : v;
    auto by_logit = [&](int64_t a, int64_t c) {
      return row[a] > row[c] || (row[a] == row[c] && a < c);
    };
    if (k < v || s.top_p < 1) {
      std::partial_sort(order.begin(), order.begin() + k, order.end(), by_logit);
    }
    // Softmax over the k candidates, at the temperature.
    const double mx = row[*std::max_element(order.begin(), order.begin() + k,
                                            [&](int64_t a, int64_t c) { return row[a] < row[c]; })];
    double total = 0;
    for (int64_t i = 0; i < k; ++i) total += p[i] = std::exp((row[order[i]] - mx) / s.temperature);
    int64_t keep = k;
    if (s.top_p < 1) {  // candidates are sorted: keep the smallest prefix reaching top_p
      double acc = 0;
      for (int64_t i = 0; i < k; ++i) {
        acc += p[i] / total;
        if (acc >= s.top_p) {
          keep = i + 1;
          break;
        }
      }
      total = 0;
      for (int64_t i = 0; i < keep; ++i) total += p[i];
    }
    double target = u[r] * total, acc = 0;
    out[r] = order[keep - 1];
    for (int64_t i = 0; i < keep; ++i) {
      acc += p[i];
      if (target < acc) {
        out[r] = order[i];
        break;
      }
    }
  }
  return tensor(out, {b});
}

Tensor MambaLM::generate(const Tensor& prompt_ids, int64_t max_new_tokens,
                         const SamplingOptions& sampling) const {
  COIL_CHECK(max_new_tokens >= 0, "generate: max_new_tokens must be >= 0, got ", max_new_tokens);
  Tensor prompt = prompt_ids.dim() == 1 ? prompt_ids.unsqueeze(0) : prompt_ids;
  COIL_CHECK(prompt.dim() == 2 && prompt.size(1) > 0,
             "generate: prompt must be non-empty (batch, L) or (L), got ", prompt_ids.shape_str());
  prompt = prompt.to(kI64);
  NoGradGuard no_grad;
  MambaCache cache;
  const int64_t b = prompt.size(0);
  Tensor logits = forward(prompt, &cache).select(1, prompt.size(1) - 1);
  TensorList pieces{prompt};
  for (int64_t i = 0; i < max_new_tokens; ++i) {
    Tensor next = sample(logits, sampling).view({b, 1});
    pieces.push_back(next);
    if (i + 1 < max_new_tokens) logits = forward(next, &cache).select(1, 0);
  }
  return cat(pieces, 1);
}

}  // namespace coil::nn
