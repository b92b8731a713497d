#include "safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string_view>
#include <unordered_map>
#include <unordered_set>

#include "file.h"
#include "json.h"

namespace coil::io {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "safetensors data is little-endian; coil reads it in place");

namespace {

namespace fs = std::filesystem;

// safetensors' own limit on the header (safetensors/src/tensor.rs: MAX_HEADER_SIZE).
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

constexpr const char* kSupported = "F32 F64 BF16 F16 I32 I64 BOOL";

bool dtype_from_name(const std::string& s, DType* out) {
  static const std::pair<const char*, DType> table[] = {
      {"F32", kF32}, {"F64", kF64}, {"BF16", kBF16}, {"F16", kF16},
      {"I32", kI32}, {"I64", kI64}, {"BOOL", kBool}};
  for (const auto& [n, t] : table)
    if (s == n) {
      *out = t;
      return true;
    }
  return false;
}

// The file's mapping; the loaded tensors share it and the last one unmaps it.
struct Mapping {
  void* addr = nullptr;
  size_t len = 0;
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  Mapping() = default;
  ~Mapping() {
    if (addr) ::munmap(addr, len);
  }
};

std::shared_ptr<Mapping> map_file(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  COIL_CHECK(fd >= 0, "load_safetensors: cannot open '", path, "': ", std::strerror(errno));
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    fail("load_safetensors: '", path, "' is not a regular file");
  }
  auto m = std::make_shared<Mapping>();
  m->len = static_cast<size_t>(st.st_size);
  if (m->len < 8) {
    ::close(fd);
    fail("load_safetensors: '", path, "' is ", m->len,
         " bytes, shorter than the 8-byte header length that starts a safetensors file");
  }
  // Writable but private: a caller that modifies a loaded tensor gets its own page copy instead
  // of a crash, and the file never changes.
  void* a = ::mmap(nullptr, m->len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE, fd, 0);
  int e = errno;
  ::close(fd);
  COIL_CHECK(a != MAP_FAILED, "load_safetensors: cannot map '", path, "': ", std::strerror(e));
  m->addr = a;
  return m;
}

struct Entry {
  std::string name;
  DType dtype;
  Shape shape;
  uint64_t begin, end;
};

uint64_t read_u64_le(const unsigned char* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

int64_t header_int(const std::string& path, const std::string& name, const char* field,
                   const json::Value& v) {
  COIL_CHECK(v.is_int(), "load_safetensors: '", path, "': tensor '", name, "': ", field,
             " must hold integers, got a ", v.type_name());
  COIL_CHECK(v.as_int() >= 0, "load_safetensors: '", path, "': tensor '", name, "': ", field,
             " holds the negative value ", v.as_int());
  return v.as_int();
}

Entry parse_entry(const std::string& path, const std::string& name, const json::Value& v,
                  uint64_t data_len) {
  auto bad = [&](const auto&... msg) {
    fail("load_safetensors: '", path, "': tensor '", name, "': ", msg...);
  };
  if (!v.is_object())
    bad("expected an object with dtype, shape, data_offsets, got a ", v.type_name());
  const json::Value* dt = v.find("dtype");
  const json::Value* shape = v.find("shape");
  const json::Value* offs = v.find("data_offsets");
  if (!dt || !dt->is_string()) bad("missing or non-string \"dtype\"");
  if (!shape || !shape->is_array()) bad("missing or non-array \"shape\"");
  if (!offs || !offs->is_array() || offs->size() != 2)
    bad("\"data_offsets\" must be an array [begin, end]");
  Entry e;
  e.name = name;
  if (!dtype_from_name(dt->as_string(), &e.dtype))
    bad("dtype ", dt->as_string(), " is not supported (coil reads ", kSupported, ")");
  uint64_t numel = 1;
  int64_t span = 1;  // the product of the sizes with zeros as ones: the strides must fit int64
  bool overflow = false, span_overflow = false;
  for (const json::Value& d : shape->items()) {
    int64_t n = header_int(path, name, "shape", d);
    e.shape.push_back(n);
    overflow = overflow || __builtin_mul_overflow(numel, static_cast<uint64_t>(n), &numel);
    span_overflow = span_overflow || __builtin_mul_overflow(span, std::max<int64_t>(n, 1), &span);
  }
  e.begin = static_cast<uint64_t>(header_int(path, name, "data_offsets", (*offs)[0]));
  e.end = static_cast<uint64_t>(header_int(path, name, "data_offsets", (*offs)[1]));
  if (e.begin > e.end) bad("data_offsets [", e.begin, ", ", e.end, "] end before they begin");
  if (e.end > data_len)
    bad("data_offsets [", e.begin, ", ", e.end, "] run past the data region of ", data_len,
        " bytes");
  uint64_t nbytes;
  overflow = overflow || __builtin_mul_overflow(numel, dtype_size(e.dtype), &nbytes);
  if (overflow || nbytes != e.end - e.begin)
    bad("shape ", shape_str(e.shape), " of ", dt->as_string(), " needs ",
        overflow ? std::string("more than 2^64") : std::to_string(nbytes),
        " bytes but data_offsets [", e.begin, ", ", e.end, "] span ", e.end - e.begin);
  // (no elements, but a size of 0 next to sizes whose product is past int64)
  if (span_overflow) bad("shape ", shape_str(e.shape), " is too large for int64 strides");
  return e;
}

// CRC-32C (Castagnoli) of n bytes: the SSE4.2 instruction when the CPU has it, else a table.
uint32_t crc32c_table_update(uint32_t crc, const unsigned char* p, size_t n) {
  static const auto table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  for (size_t i = 0; i < n; ++i) crc = table[(crc ^ p[i]) & 0xFF] ^ (crc >> 8);
  return crc;
}
#if defined(__x86_64__)
__attribute__((target("sse4.2"))) uint32_t crc32c_hw_update(uint32_t crc, const unsigned char* p,
                                                            size_t n) {
  uint64_t c = crc;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t v;
    std::memcpy(&v, p + i, 8);
    c = __builtin_ia32_crc32di(c, v);
  }
  uint32_t c32 = static_cast<uint32_t>(c);
  for (; i < n; ++i) c32 = __builtin_ia32_crc32qi(c32, p[i]);
  return c32;
}
#endif
// Checksums coil writes into __metadata__, one per tensor; they are checked on load and kept out
// of SafetensorsFile::metadata.
constexpr std::string_view kCrcPrefix = "coil.crc32c.";

std::string hex32(uint32_t v) {
  char buf[9];
  std::snprintf(buf, sizeof(buf), "%08x", v);
  return buf;
}

}  // namespace

uint32_t crc32c(const void* data, size_t n) {
  const auto* p = static_cast<const unsigned char*>(data);
#if defined(__x86_64__)
  static const bool hw = __builtin_cpu_supports("sse4.2");
  if (hw) return ~crc32c_hw_update(~0u, p, n);
#endif
  return ~crc32c_table_update(~0u, p, n);
}

const char* safetensors_dtype_name(DType t) {
  switch (t) {
    case kF32:
      return "F32";
    case kF64:
      return "F64";
    case kBF16:
      return "BF16";
    case kF16:
      return "F16";
    case kI32:
      return "I32";
    case kI64:
      return "I64";
    case kBool:
      return "BOOL";
  }
  fail("safetensors: dtype ", t, " has no safetensors name");
}

const Tensor* SafetensorsFile::find(const std::string& name) const {
  for (const auto& [n, t] : tensors)
    if (n == name) return &t;
  return nullptr;
}

const Tensor& SafetensorsFile::at(const std::string& name) const {
  const Tensor* t = find(name);
  COIL_CHECK(t, "safetensors: no tensor named '", name, "' (the file has ", tensors.size(),
             " tensors)");
  return *t;
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> out;
  out.reserve(tensors.size());
  for (const auto& nt : tensors) out.push_back(nt.first);
  return out;
}

SafetensorsFile load_safetensors(const std::string& path) {
  std::shared_ptr<Mapping> map = map_file(path);
  const auto* base = static_cast<const unsigned char*>(map->addr);
  const uint64_t file_len = map->len;
  const uint64_t n = read_u64_le(base);
  COIL_CHECK(n <= kMaxHeaderBytes, "load_safetensors: '", path, "': header length ", n,
             " is larger than the ", kMaxHeaderBytes, "-byte limit (not a safetensors file?)");
  COIL_CHECK(n <= file_len - 8, "load_safetensors: '", path, "': header length ", n,
             " runs past the end of the ", file_len, "-byte file (truncated?)");
  const std::string_view text(reinterpret_cast<const char*>(base + 8), n);
  json::Value header = json::parse(text, "safetensors header of '" + path + "'");
  COIL_CHECK(header.is_object(), "load_safetensors: '", path,
             "': the header must be a JSON object, got a ", header.type_name());
  const uint64_t data_len = file_len - 8 - n;

  SafetensorsFile out;
  std::vector<Entry> entries;
  std::unordered_map<std::string, std::string> checksums;  // tensor name -> crc32c (hex)
  for (const auto& [name, v] : header.members()) {
    if (name == "__metadata__") {
      COIL_CHECK(v.is_object(), "load_safetensors: '", path,
                 "': __metadata__ must be an object, got a ", v.type_name());
      for (const auto& [k, s] : v.members()) {
        COIL_CHECK(s.is_string(), "load_safetensors: '", path, "': __metadata__ value of '", k,
                   "' must be a string, got a ", s.type_name());
        if (k.rfind(kCrcPrefix, 0) == 0)
          checksums.emplace(k.substr(kCrcPrefix.size()), s.as_string());
        else
          out.metadata.emplace_back(k, s.as_string());
      }
      continue;
    }
    entries.push_back(parse_entry(path, name, v, data_len));
  }

  // The data region must be covered exactly: sorted by offset, each tensor starts where the
  // previous one ends, and the last one ends at the end of the file.
  std::vector<const Entry*> by_offset;
  for (const Entry& e : entries) by_offset.push_back(&e);
  std::stable_sort(by_offset.begin(), by_offset.end(), [](const Entry* a, const Entry* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  uint64_t covered = 0;
  const Entry* prev = nullptr;
  for (const Entry* e : by_offset) {
    if (e->begin != covered) {
      if (e->begin < covered) {
        fail("load_safetensors: '", path, "': tensor '", e->name, "' data_offsets [", e->begin,
             ", ", e->end, "] overlap tensor '", prev->name, "' [", prev->begin, ", ", prev->end,
             "]");
      }
      fail("load_safetensors: '", path, "': tensor '", e->name, "' data_offsets [", e->begin, ", ",
           e->end, "] leave a hole of ", e->begin - covered, " bytes after byte ", covered,
           " of the data region");
    }
    covered = e->end;
    prev = e;
  }
  COIL_CHECK(covered == data_len, "load_safetensors: '", path, "': the data region has ", data_len,
             " bytes but the tensors cover only the first ", covered,
             " (trailing bytes belong to no tensor)");

  const unsigned char* data = base + 8 + n;
  // A file coil wrote carries a checksum per tensor: a flipped bit is an error, not a weight.
  // (by name through a map: a header of many tensors must not take quadratic time)
  std::unordered_map<std::string_view, const Entry*> by_name;
  for (const Entry& e : entries) by_name.emplace(e.name, &e);
  for (const auto& [name, want] : checksums) {
    auto it = by_name.find(name);
    COIL_CHECK(it != by_name.end(), "load_safetensors: '", path, "': a checksum names tensor '",
               name, "', which the file lacks");
    const Entry& e = *it->second;
    const std::string got = hex32(crc32c(data + e.begin, e.end - e.begin));
    COIL_CHECK(got == want, "load_safetensors: '", path, "': tensor '", name,
               "' does not match its checksum (crc32c ", got, ", stored ", want,
               "): the file is corrupted");
  }
  out.tensors.reserve(entries.size());
  for (const Entry& e : entries) {
    const unsigned char* p = data + e.begin;
    const uint64_t nbytes = e.end - e.begin;
    Tensor t;
    if (nbytes == 0) {
      t = empty(e.shape, Options(e.dtype));
    } else if (reinterpret_cast<uintptr_t>(p) % dtype_size(e.dtype) == 0) {
      t = from_blob(const_cast<unsigned char*>(p), e.shape, Options(e.dtype), map);
    } else {  // safetensors does not promise alignment; coil's kernels need it
      t = empty(e.shape, Options(e.dtype));
      std::memcpy(t.raw_data(), p, nbytes);
    }
    out.tensors.emplace_back(e.name, std::move(t));
  }
  return out;
}

void save_safetensors(const std::string& path, const NamedTensors& tensors,
                      const Metadata& metadata) {
  for (const auto& [k, v] : metadata)
    COIL_CHECK(k.rfind(kCrcPrefix, 0) != 0, "save_safetensors: '", path, "': metadata key '", k,
               "' is reserved for coil's checksums");
  std::unordered_set<std::string> seen;
  for (const auto& [name, t] : tensors) {
    COIL_CHECK(!name.empty() && name != "__metadata__", "save_safetensors: '", path,
               "': invalid tensor name '", name, "'");
    COIL_CHECK(seen.insert(name).second, "save_safetensors: '", path, "': duplicate tensor name '",
               name, "'");
    COIL_CHECK(t.defined(), "save_safetensors: '", path, "': tensor '", name, "' is undefined");
  }
  // The header with the given checksums (8 hex digits each, so its length never depends on them),
  // padded so that the data starts 8-byte aligned.
  auto header_text = [&](const std::vector<uint32_t>& crcs) {
    json::Value header = json::Value::object();
    json::Value meta = json::Value::object();
    for (const auto& [k, v] : metadata) {
      COIL_CHECK(!meta.contains(k), "save_safetensors: '", path, "': duplicate metadata key '", k,
                 "'");
      meta.set(k, v);
    }
    for (size_t i = 0; i < tensors.size(); ++i)
      meta.set(std::string(kCrcPrefix) + tensors[i].first, hex32(crcs[i]));
    header.set("__metadata__", std::move(meta));
    uint64_t offset = 0;
    for (const auto& [name, t] : tensors) {
      json::Value e = json::Value::object();
      e.set("dtype", safetensors_dtype_name(t.dtype()));
      json::Value shape = json::Value::array();
      for (int64_t d : t.sizes()) shape.push_back(d);
      e.set("shape", std::move(shape));
      json::Value offs = json::Value::array();
      offs.push_back(offset);
      offset += t.nbytes();
      offs.push_back(offset);
      e.set("data_offsets", std::move(offs));
      header.members().emplace_back(name, std::move(e));  // unique: checked above
    }
    std::string text = header.dump();
    text.append((8 - text.size() % 8) % 8, ' ');
    return text;
  };
  std::vector<uint32_t> crcs(tensors.size(), 0);
  const std::string placeholder = header_text(crcs);
  unsigned char len[8];
  for (int i = 0; i < 8; ++i)
    len[i] = static_cast<unsigned char>(uint64_t(placeholder.size()) >> (8 * i));

  // One pass over the data: each tensor's bytes are written and summed from one CPU, contiguous
  // copy (one alive at a time); the header goes in first with zero checksums and is rewritten in
  // place once they are known.
  write_file_atomic(path, [&](std::FILE* f) {
    std::fwrite(len, 1, 8, f);
    std::fwrite(placeholder.data(), 1, placeholder.size(), f);
    for (size_t i = 0; i < tensors.size(); ++i) {
      Tensor c = tensors[i].second.detach();
      if (!c.device().is_cpu()) c = c.to(Device(kCPU));
      c = c.contiguous();
      crcs[i] = crc32c(c.raw_data(), c.nbytes());
      if (c.nbytes()) std::fwrite(c.raw_data(), 1, c.nbytes(), f);
    }
    const std::string text = header_text(crcs);
    COIL_CHECK(text.size() == placeholder.size(), "save_safetensors: header length changed");
    COIL_CHECK(std::fseek(f, 8, SEEK_SET) == 0, "save_safetensors: cannot seek in '", path, "'");
    std::fwrite(text.data(), 1, text.size(), f);
  });
}

SafetensorsFile load_safetensors_dir(const std::string& dir) {
  const fs::path root(dir);
  const fs::path index_path = root / "model.safetensors.index.json";
  const fs::path single_path = root / "model.safetensors";
  std::error_code ec;
  if (!fs::exists(index_path, ec)) {
    COIL_CHECK(fs::exists(single_path, ec), "load_safetensors_dir: '", dir,
               "' has neither model.safetensors nor model.safetensors.index.json");
    return load_safetensors(single_path.string());
  }

  const std::string ipath = index_path.string();
  json::Value index = json::parse_file(ipath);
  COIL_CHECK(index.is_object(), "load_safetensors_dir: '", ipath, "' must hold a JSON object");
  const json::Value* wm = index.find("weight_map");
  COIL_CHECK(wm && wm->is_object(), "load_safetensors_dir: '", ipath,
             "' has no \"weight_map\" object");
  std::vector<std::string> shards;  // in order of first appearance
  std::unordered_map<std::string, std::string> shard_of;
  for (const auto& [name, file] : wm->members()) {
    COIL_CHECK(file.is_string(), "load_safetensors_dir: '", ipath, "': weight_map entry '", name,
               "' must be a file name, got a ", file.type_name());
    const std::string& f = file.as_string();
    const fs::path fp(f);
    bool escapes = f.empty() || fp.is_absolute();
    for (const auto& part : fp) escapes = escapes || part == "..";
    COIL_CHECK(!escapes, "load_safetensors_dir: '", ipath, "': shard '", f, "' of tensor '", name,
               "' is not a file inside the directory");
    shard_of.emplace(name, f);
    if (std::find(shards.begin(), shards.end(), f) == shards.end()) shards.push_back(f);
  }

  SafetensorsFile out;
  std::unordered_map<std::string, std::string> found_in;  // tensor -> shard that holds it
  for (size_t si = 0; si < shards.size(); ++si) {
    const std::string& shard = shards[si];
    const fs::path sp = root / shard;
    COIL_CHECK(fs::exists(sp, ec), "load_safetensors_dir: '", ipath, "' names shard '", shard,
               "', which is missing from '", dir, "'");
    SafetensorsFile part = load_safetensors(sp.string());
    if (si == 0) out.metadata = part.metadata;
    for (auto& [name, t] : part.tensors) {
      auto [it, fresh] = found_in.emplace(name, shard);
      COIL_CHECK(fresh, "load_safetensors_dir: '", dir, "': tensor '", name,
                 "' is in two shards, '", it->second, "' and '", shard, "'");
      auto m = shard_of.find(name);
      COIL_CHECK(m == shard_of.end() || m->second == shard, "load_safetensors_dir: '", dir,
                 "': tensor '", name, "' is in shard '", shard, "' but the index puts it in '",
                 m->second, "'");
      out.tensors.emplace_back(name, std::move(t));
    }
  }
  for (const auto& [name, file] : wm->members()) {
    COIL_CHECK(found_in.count(name), "load_safetensors_dir: '", dir, "': tensor '", name,
               "' is missing from its shard '", file.as_string(), "'");
  }
  return out;
}

void save_safetensors_sharded(const std::string& dir, const NamedTensors& tensors,
                              int64_t max_shard_bytes, const Metadata& metadata) {
  COIL_CHECK(max_shard_bytes > 0,
             "save_safetensors_sharded: max_shard_bytes must be positive, got ", max_shard_bytes);
  // Greedy split in the given order, as transformers' shard_checkpoint.
  std::vector<NamedTensors> shards(1);
  int64_t current = 0, total = 0;
  for (const auto& nt : tensors) {
    COIL_CHECK(nt.second.defined(), "save_safetensors_sharded: tensor '", nt.first,
               "' is undefined");
    const int64_t nb = static_cast<int64_t>(nt.second.nbytes());
    if (!shards.back().empty() && current + nb > max_shard_bytes) {
      shards.emplace_back();
      current = 0;
    }
    shards.back().push_back(nt);
    current += nb;
    total += nb;
  }

  std::error_code ec;
  fs::create_directories(dir, ec);
  COIL_CHECK(!ec, "save_safetensors_sharded: cannot create '", dir, "': ", ec.message());
  const fs::path root(dir);
  std::vector<std::string> written;
  if (shards.size() == 1) {
    written.push_back("model.safetensors");
    save_safetensors((root / written[0]).string(), shards[0], metadata);
  } else {
    const size_t n = shards.size();
    json::Value weight_map = json::Value::object();
    std::vector<std::pair<std::string, std::string>> entries;
    for (size_t i = 0; i < n; ++i) {
      char name[64];
      std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", i + 1, n);
      written.push_back(name);
      save_safetensors((root / name).string(), shards[i], metadata);
      for (const auto& nt : shards[i]) entries.emplace_back(nt.first, name);
    }
    std::sort(entries.begin(), entries.end());
    for (auto& [k, v] : entries) weight_map.members().emplace_back(k, v);
    json::Value index = json::Value::object();
    json::Value meta = json::Value::object();
    meta.set("total_size", total);
    index.set("metadata", std::move(meta));
    index.set("weight_map", std::move(weight_map));
    const std::string text = index.dump(2) + "\n";
    written.push_back("model.safetensors.index.json");
    write_file_atomic((root / written.back()).string(),
                      [&](std::FILE* f) { std::fwrite(text.data(), 1, text.size(), f); });
  }

  // Files of an earlier save that would mislead a loader (a stale index, stale shards).
  for (const auto& de : fs::directory_iterator(root, ec)) {
    const std::string fname = de.path().filename().string();
    const bool ours = fname == "model.safetensors" || fname == "model.safetensors.index.json" ||
                      (fname.rfind("model-", 0) == 0 && fname.find("-of-") != std::string::npos &&
                       fname.size() > 12 && fname.substr(fname.size() - 12) == ".safetensors");
    if (ours && std::find(written.begin(), written.end(), fname) == written.end())
      fs::remove(de.path(), ec);
  }
}

}  // namespace coil::io
