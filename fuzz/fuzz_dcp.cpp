// load_distributed with an arbitrary metadata.json over fixed shard files (a world of one):
// a bad metadata file is a coil::Error, never a crash or a read outside a shard.
//
// The shards, written at start-up: shard-00000.safetensors from save_distributed of the state
// below, and shard-00001/-00002.safetensors holding the two halves (rows 0-2, 3-5) of "a", which
// the seed split.json describes as two pieces.
#include "fuzz_util.h"

#include <coil/nn/io/distributed_checkpoint.h>

using namespace coil;

namespace {

std::string dir;

Tensor values(const Shape& s, DType t) {
  Tensor x = arange(0, static_cast<double>(shape_numel(s)), 1, Options(kF64)).reshape(s);
  return x.to(t);
}

// The tensors as saved (a on a one-rank mesh, sharded: a DTensor on the load side too).
io::NamedTensors saved_state() {
  io::NamedTensors s;
  s.emplace_back("a", dist::distribute_tensor(values({6, 5}, kF32), dist::DeviceMesh::world(),
                                              {dist::Shard(0)}));
  s.emplace_back("b", values({4, 7}, kF64));
  s.emplace_back("c", values({3}, kI64));
  s.emplace_back("s", values({}, kF32));
  return s;
}

// Fresh targets for one load.
io::NamedTensors targets() {
  io::NamedTensors s;
  s.emplace_back(
      "a", dist::distribute_tensor(zeros({6, 5}), dist::DeviceMesh::world(), {dist::Shard(0)}));
  s.emplace_back("b", zeros({4, 7}, Options(kF64)));
  s.emplace_back("c", zeros({3}, Options(kI64)));
  s.emplace_back("s", zeros({}, Options(kF32)));
  return s;
}

void write_shards(const std::string& d) {
  io::save_distributed(d, saved_state());
  Tensor a = values({6, 5}, kF32);
  io::save_safetensors(d + "/shard-00001.safetensors", {{"a", a.narrow(0, 0, 3)}});
  io::save_safetensors(d + "/shard-00002.safetensors", {{"a", a.narrow(0, 3, 3)}});
}

void write_seeds(const std::string& seeds) {
  const std::string meta = io::read_file(dir + "/metadata.json");
  fuzz::write_file(seeds + "/saved.json", meta);
  json::Value m = json::parse(meta);
  json::Value& a = m.members()[3].second.members()[0].second;  // tensors.a
  json::Value pieces = json::Value::array();
  for (int i = 0; i < 2; ++i) {
    json::Value p = json::Value::object();
    p.set("file", i == 0 ? "shard-00001.safetensors" : "shard-00002.safetensors");
    p.set("offsets", json::Value(std::vector<json::Value>{3 * i, 0}));
    p.set("sizes", json::Value(std::vector<json::Value>{3, 5}));
    pieces.push_back(p);
  }
  a.set("pieces", pieces);
  fuzz::write_file(seeds + "/split.json", m.dump(1) + "\n");
  fuzz::write_file(seeds + "/no_tensors.json",
                   R"({"format": "coil.distributed_checkpoint", "version": 1, "world_size": 1,)"
                   R"( "tensors": {}})");
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  fuzz::init_common();
  dir = fuzz::temp_dir() + "/dcp";
  write_shards(dir);
  fuzz::write_seeds_if_asked(write_seeds);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::write_file(dir + "/metadata.json", data, size);
  io::NamedTensors state = targets();
  try {
    io::load_distributed(dir, state);
  } catch (const Error&) {
    return 0;
  }
  for (const auto& [name, t] : state) fuzz::touch(dist::is_dtensor(t) ? dist::to_local(t) : t);
  return 0;
}
