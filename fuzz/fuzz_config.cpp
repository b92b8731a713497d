// config.json: json::parse, MambaConfig::from_json and HybridConfig::from_json on arbitrary
// text (config.json is read whole; these are what MambaConfig::load and HybridConfig::load
// call). A document that parses dumps to text that parses to the same dump; a config that loads
// writes a config.json that loads again.
#include "fuzz_util.h"

#include <optional>

using namespace coil;

namespace {

void write_seeds(const std::string& dir) {
  fuzz::write_file(dir + "/mamba_130m.json", nn::MambaConfig::mamba_130m().to_json());
  fuzz::write_file(dir + "/mamba2_130m.json", nn::MambaConfig::mamba2_130m().to_json());
  nn::MambaConfig tiny;
  tiny.vocab_size = 256;
  tiny.hidden_size = 8;
  tiny.num_hidden_layers = 1;
  tiny.time_step_rank = 3;
  tiny.selective = false;
  fuzz::write_file(dir + "/mamba_tiny.json", tiny.to_json());
  nn::HybridConfig h;
  h.layer_types = {"mamba", "mamba", "mamba", "mamba"};
  h.pad_token_id = 0;
  fuzz::write_file(dir + "/hybrid.json", h.to_json());
  // As transformers 5 writes them: "linear_attention" layers, "auto" head size, __float__.
  fuzz::write_file(dir + "/hybrid_hf.json",
                   R"({"model_type": "granitemoehybrid", "hidden_size": 64, "mamba_n_heads": 4,)"
                   R"( "mamba_d_head": "auto", "mamba_expand": 2, "num_hidden_layers": 2,)"
                   R"( "layer_types": ["linear_attention", "mamba"], "pad_token_id": null,)"
                   R"( "time_step_limit": [0.0, {"__float__": "Infinity"}]})"
                   "\n");
  fuzz::write_file(
      dir + "/json_edge.json",
      R"({"a": [1, -0, 1.5e300, -2E-3, 9223372036854775807, -9223372036854775808,)"
      R"( 18446744073709551616, NaN, -Infinity, Infinity, true, false, null],)"
      R"( "s": "\u00e9\ud83d\ude00\n\t\"\\\/ caf\u00c3 \u0000", "o": {"": {}}, "e": []})");
  fuzz::write_file(dir + "/bad_surrogate.json", R"({"s": "\ud800x"})");
  fuzz::write_file(dir + "/duplicate.json", R"({"hidden_size": 1, "hidden_size": 2})");
  fuzz::write_file(dir + "/deep.json", std::string(300, '[') + std::string(300, ']'));
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  fuzz::init_common();
  fuzz::write_seeds_if_asked(write_seeds);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  std::optional<json::Value> v;
  try {
    v = json::parse(text, "fuzz");
  } catch (const Error&) {
    return 0;  // not JSON: the configs below fail the same way
  }
  const std::string compact = v->dump(), pretty = v->dump(2);
  fuzz::require(json::parse(compact).dump() == compact, "json: compact dump does not round-trip");
  fuzz::require(json::parse(pretty).dump() == compact, "json: indented dump does not round-trip");
  // A config that loads must load again from what it writes (an Error there is a bug, so it
  // is not caught).
  std::optional<nn::MambaConfig> m;
  try {
    m = nn::MambaConfig::from_json(text);
  } catch (const Error&) {
  }
  if (m) nn::MambaConfig::from_json(m->to_json(), "written back");
  std::optional<nn::HybridConfig> h;
  try {
    h = nn::HybridConfig::from_json(text);
  } catch (const Error&) {
  }
  if (h) nn::HybridConfig::from_json(h->to_json(), "written back");
  return 0;
}
