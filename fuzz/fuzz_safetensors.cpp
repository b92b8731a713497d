// load_safetensors on arbitrary bytes: a bad file is a coil::Error, never a crash; a file that
// loads has tensors whose every byte can be read, and it saves and loads back the same.
#include "fuzz_util.h"

#include <coil/nn/io/safetensors.h>

using namespace coil;

namespace {

std::string path, copy;

void write_seeds(const std::string& dir) {
  manual_seed(1);
  io::NamedTensors t;
  t.emplace_back("w", randn({2, 3}));
  t.emplace_back("ids", arange(5));
  t.emplace_back("half", randn({3}).to(kBF16));
  t.emplace_back("h16", randn({2, 1}).to(kF16));
  t.emplace_back("mask", full({4}, 1, Options(kBool)));
  t.emplace_back("i32", arange(3, Options(kI32)));
  t.emplace_back("scalar", full({}, 2.5, Options(kF64)));
  t.emplace_back("none", zeros({0, 3}));
  io::save_safetensors(dir + "/all_dtypes.safetensors", t, {{"format", "pt"}});
  const std::string all = io::read_file(dir + "/all_dtypes.safetensors");
  fuzz::write_file(dir + "/no_checksums.safetensors", fuzz::strip_checksums(all));
  io::save_safetensors(dir + "/empty.safetensors", {});
  // Malformed: truncated data, a header length past the end, a non-object header, overlapping
  // offsets, an odd-aligned tensor (data copied, not viewed).
  fuzz::write_file(dir + "/truncated.safetensors", all.substr(0, all.size() - 5));
  fuzz::write_file(dir + "/bad_len.safetensors",
                   std::string("\xff\x00\x00\x00\x00\x00\x00\x00[]", 10));
  auto raw = [](const std::string& header, const std::string& data) {
    std::string out(8, '\0');
    for (int i = 0; i < 8; ++i) out[i] = static_cast<char>(uint64_t(header.size()) >> (8 * i));
    return out + header + data;
  };
  fuzz::write_file(dir + "/overlap.safetensors",
                   raw(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                       R"("b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                       std::string(8, '\1')));
  fuzz::write_file(dir + "/unaligned.safetensors",
                   raw(R"({"__metadata__":{"k":"v"},"a":{"dtype":"I64","shape":[1,1],)"
                       R"("data_offsets":[0,8]}})",
                       std::string(8, '\2')));
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  fuzz::init_common();
  fuzz::write_seeds_if_asked(write_seeds);
  path = fuzz::temp_dir() + "/input.safetensors";
  copy = fuzz::temp_dir() + "/copy.safetensors";
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::write_file(path, data, size);
  io::SafetensorsFile f;
  try {
    f = io::load_safetensors(path);
  } catch (const Error&) {
    return 0;
  }
  for (const auto& [name, t] : f.tensors) {
    fuzz::require(t.defined() && !name.empty(), "a loaded tensor is undefined or unnamed");
    fuzz::touch(t);
  }
  // What loaded saves again (unless save refuses a name it never writes) and loads back equal.
  try {
    io::save_safetensors(copy, f.tensors, f.metadata);
  } catch (const Error&) {
    return 0;
  }
  io::SafetensorsFile g = io::load_safetensors(copy);
  fuzz::require(g.metadata == f.metadata && g.size() == f.size(), "round trip: metadata or count");
  for (size_t i = 0; i < f.size(); ++i) {
    const Tensor &a = f.tensors[i].second, &b = g.tensors[i].second;
    fuzz::require(g.tensors[i].first == f.tensors[i].first && a.dtype() == b.dtype() &&
                      a.sizes() == b.sizes() && fuzz::touch(a) == fuzz::touch(b),
                  "round trip: a tensor differs");
  }
  return 0;
}
