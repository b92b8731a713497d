#include "distributed_checkpoint.h"

#include <cstdio>
#include <filesystem>
#include <map>

#include "../../autograd/grad_mode.h"
#include "../../dist/dtensor.h"
#include "../../ops/creation.h"
#include "file.h"
#include "json.h"

namespace coil::io {
namespace {

constexpr const char* kFormat = "coil.distributed_checkpoint";
constexpr int64_t kVersion = 1;

std::string shard_file(int rank) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "shard-%05d.safetensors", rank);
  return buf;
}

json::Value object(std::initializer_list<std::pair<const char*, json::Value>> members) {
  json::Value o = json::Value::object();
  for (const auto& [k, v] : members) o.set(k, v);
  return o;
}

json::Value ints(const Shape& s) {
  json::Value a = json::Value::array();
  for (int64_t v : s) a.push_back(v);
  return a;
}
Shape shape_of(const json::Value& a) {
  Shape s;
  for (const json::Value& v : a.items()) s.push_back(v.as_int());
  return s;
}

// The region of the global tensor a target on this rank covers, and whether it stays zero
// (a Partial(sum) piece off the first rank of its mesh dim).
struct Region {
  Shape offsets, sizes;
  bool zero = false;
};
Region target_region(const Tensor& t) {
  if (!dist::is_dtensor(t)) return {Shape(t.dim(), 0), t.sizes(), false};
  const dist::DTensorSpec& s = dist::dtensor_spec(t);
  dist::Placements p = s.placements;
  bool zero = false;
  for (size_t i = 0; i < p.size(); ++i)
    if (p[i].is_partial()) {
      zero = zero || (p[i].op == dist::ReduceOp::kSum && s.mesh.coordinate(i) != 0);
      p[i] = dist::Replicate();
    }
  dist::LocalShard ls = dist::local_shard(s.global_shape, s.mesh, p);
  return {ls.offsets, ls.sizes, zero};
}

// Gathers every rank's text on rank 0 (others get an empty list).
std::vector<std::string> gather_text(const std::string& mine) {
  auto w = dist::world();
  Tensor len = full({1}, static_cast<double>(mine.size()), Options(kI64));
  Tensor lens = zeros({w->size()}, Options(kI64));
  w->all_gather(lens, len, {}, dist::blocking())->wait();
  std::vector<int64_t> counts(w->size());
  int64_t total = 0;
  for (int r = 0; r < w->size(); ++r) total += counts[r] = lens.data_ptr<int64_t>()[r];
  Tensor in = zeros({static_cast<int64_t>(mine.size())}, Options(kI32));
  for (size_t i = 0; i < mine.size(); ++i)
    in.data_ptr<int32_t>()[i] = static_cast<unsigned char>(mine[i]);
  Tensor out = zeros({total}, Options(kI32));
  w->all_gather(out, in, counts, dist::blocking())->wait();
  std::vector<std::string> texts;
  if (w->rank() != 0) return texts;
  int64_t off = 0;
  for (int r = 0; r < w->size(); ++r) {
    std::string s(counts[r], '\0');
    for (int64_t i = 0; i < counts[r]; ++i)
      s[i] = static_cast<char>(out.data_ptr<int32_t>()[off + i]);
    texts.push_back(std::move(s));
    off += counts[r];
  }
  return texts;
}

}  // namespace

void save_distributed(const std::string& dir, const NamedTensors& state) {
  namespace fs = std::filesystem;
  auto w = dist::world();
  NoGradGuard ng;
  if (w->rank() == 0) fs::create_directories(dir);
  w->barrier(dist::blocking())->wait();

  NamedTensors mine;  // the pieces this rank writes
  json::Value pieces = json::Value::array();
  json::Value globals = json::Value::object();  // rank 0: name -> dtype and global shape
  for (const auto& [name, t] : state) {
    COIL_CHECK(t.defined(), "save_distributed: tensor '", name, "' is undefined");
    Tensor local = t;
    Shape global = t.sizes(), offsets(t.dim(), 0);
    bool owner = w->rank() == 0;
    if (dist::is_dtensor(t)) {
      const dist::DTensorSpec& s0 = dist::dtensor_spec(t);
      dist::Placements p = s0.placements;
      bool partial = false;
      for (auto& q : p)
        if (q.is_partial()) {
          q = dist::Replicate();
          partial = true;
        }
      Tensor dt = partial ? dist::redistribute(t, p) : t;
      const dist::DTensorSpec& s = dist::dtensor_spec(dt);
      global = s.global_shape;
      offsets = dist::local_shard(global, s.mesh, p).offsets;
      local = dist::to_local(dt);
      owner = true;  // one copy of a replicated piece: the first rank of each such mesh dim
      for (size_t i = 0; i < p.size(); ++i)
        if (p[i].is_replicate() && s.mesh.coordinate(i) != 0) owner = false;
    }
    globals.set(name, object({{"dtype", safetensors_dtype_name(t.dtype())},
                              {"shape", ints(global)},
                              {"pieces", json::Value::array()}}));
    if (!owner || local.numel() == 0) continue;
    mine.emplace_back(name, local);
    pieces.push_back(
        object({{"name", name}, {"offsets", ints(offsets)}, {"sizes", ints(local.sizes())}}));
  }
  const std::string file = shard_file(w->rank());
  if (!mine.empty()) save_safetensors(dir + "/" + file, mine, {{"format", kFormat}});
  const std::vector<std::string> all =
      gather_text(object({{"file", file}, {"pieces", pieces}}).dump());
  if (w->rank() == 0) {
    for (const std::string& text : all) {
      const json::Value r = json::parse(text, "a rank's piece list");
      for (const json::Value& p : r["pieces"].items())
        for (auto& [name, e] : globals.members())
          if (name == p["name"].as_string())
            for (auto& [key, v] : e.members())
              if (key == "pieces")
                v.push_back(object({{"file", r["file"].as_string()},
                                    {"offsets", p["offsets"]},
                                    {"sizes", p["sizes"]}}));
    }
    json::Value meta = object({{"format", kFormat},
                               {"version", kVersion},
                               {"world_size", w->size()},
                               {"tensors", globals}});
    write_text_file_atomic(dir + "/metadata.json", meta.dump(1) + "\n");
  }
  w->barrier(dist::blocking())->wait();
}

void load_distributed(const std::string& dir, const NamedTensors& state) {
  NoGradGuard ng;
  const std::string meta_path = dir + "/metadata.json";
  const json::Value meta = json::parse_file(meta_path);
  COIL_CHECK(meta.get("format", "") == std::string(kFormat), "load_distributed: ", meta_path,
             " is not a coil distributed checkpoint");
  COIL_CHECK(meta.get<int64_t>("version", 0) == kVersion, "load_distributed: ", meta_path,
             " has version ", meta.get<int64_t>("version", 0), ", this build reads ", kVersion);
  const json::Value& tensors = meta["tensors"];
  std::map<std::string, SafetensorsFile> files;
  for (const auto& [name, t] : state) {
    const json::Value* e = tensors.find(name);
    COIL_CHECK(e, "load_distributed: '", name, "' is not in ", meta_path);
    const Shape global = shape_of((*e)["shape"]);
    const Shape want = dist::is_dtensor(t) ? dist::dtensor_spec(t).global_shape : t.sizes();
    COIL_CHECK(global == want, "load_distributed: '", name, "' is ", shape_str(global), " in ",
               meta_path, ", the target is ", shape_str(want));
    COIL_CHECK((*e)["dtype"].as_string() == safetensors_dtype_name(t.dtype()),
               "load_distributed: '", name, "' is ", (*e)["dtype"].as_string(), " in ", meta_path,
               ", the target is ", t.dtype());
    Tensor local = dist::is_dtensor(t) ? dist::to_local(t) : t;
    const Region r = target_region(t);
    if (r.zero) {
      local.zero_();
      continue;
    }
    int64_t filled = 0;
    std::vector<std::pair<Shape, Shape>> used;  // (lo, n) of the pieces copied so far
    for (const json::Value& p : (*e)["pieces"].items()) {
      const Shape off = shape_of(p["offsets"]), sz = shape_of(p["sizes"]);
      // A piece must lie inside the global tensor: the overlap arithmetic below relies on it.
      bool inside = off.size() == global.size() && sz.size() == global.size();
      for (size_t d = 0; inside && d < global.size(); ++d)
        inside = off[d] >= 0 && sz[d] >= 0 && sz[d] <= global[d] - off[d];
      COIL_CHECK(inside, "load_distributed: a piece of '", name, "' in ", meta_path,
                 " with offsets ", shape_str(off), " and sizes ", shape_str(sz),
                 " does not lie inside its shape ", shape_str(global));
      // the overlap of the piece and the target region, per dim
      Shape lo(off.size()), n(off.size());
      bool empty = false;
      for (size_t d = 0; d < off.size(); ++d) {
        lo[d] = std::max(off[d], r.offsets[d]);
        const int64_t hi = std::min(off[d] + sz[d], r.offsets[d] + r.sizes[d]);
        n[d] = hi - lo[d];
        empty = empty || n[d] <= 0;
      }
      if (empty) continue;
      // Overlapping pieces would count elements twice and could leave others unfilled.
      for (const auto& [lo2, n2] : used) {
        bool overlap = true;
        for (size_t d = 0; d < lo.size(); ++d)
          overlap = overlap && lo[d] < lo2[d] + n2[d] && lo2[d] < lo[d] + n[d];
        COIL_CHECK(!overlap, "load_distributed: pieces of '", name, "' in ", meta_path,
                   " overlap at offsets ", shape_str(lo));
      }
      used.emplace_back(lo, n);
      const std::string file = p["file"].as_string();
      COIL_CHECK(file.find('/') == std::string::npos, "load_distributed: piece file '", file,
                 "' must stay inside ", dir);
      auto it = files.find(file);
      if (it == files.end()) it = files.emplace(file, load_safetensors(dir + "/" + file)).first;
      Tensor src = it->second.at(name), dst = local;
      COIL_CHECK(src.sizes() == sz, "load_distributed: '", name, "' in ", file, " is ",
                 src.shape_str(), ", metadata.json says ", shape_str(sz));
      int64_t count = 1;
      for (size_t d = 0; d < off.size(); ++d) {
        src = src.narrow(d, lo[d] - off[d], n[d]);
        dst = dst.narrow(d, lo[d] - r.offsets[d], n[d]);
        count *= n[d];
      }
      dst.copy_(src);
      filled += count;
    }
    int64_t need = 1;
    for (int64_t s : r.sizes) need *= s;
    COIL_CHECK(filled == need, "load_distributed: the pieces of '", name, "' in ", meta_path,
               " cover ", filled, " of the ", need, " elements this rank needs");
  }
}

}  // namespace coil::io
