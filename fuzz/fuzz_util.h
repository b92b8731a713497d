// Shared by the libFuzzer targets. The loaders take paths, so each input is written to a file
// in a directory private to the process (on /dev/shm when there is one: no disk traffic) and
// the real loader reads it.
//
// Seeds: with COIL_FUZZ_WRITE_SEEDS=<dir> set, a target writes its seed files into <dir> at
// start-up and exits instead of fuzzing (scripts/fuzz.sh seeds).
#pragma once
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

#include <coil/coil.h>
#include <coil/nn/io/json.h>

namespace coil::fuzz {

inline const std::string& temp_dir() {
  static const std::string dir = [] {
    namespace fs = std::filesystem;
    const fs::path base =
        fs::is_directory("/dev/shm") ? fs::path("/dev/shm") : fs::temp_directory_path();
    std::string tmpl = (base / "coil-fuzz-XXXXXX").string();
    if (!::mkdtemp(tmpl.data())) {
      std::perror("coil fuzz: mkdtemp");
      std::abort();
    }
    static std::string keep = tmpl;
    std::atexit([] {
      std::error_code ec;
      fs::remove_all(keep, ec);
    });
    return tmpl;
  }();
  return dir;
}

inline void write_file(const std::string& path, const void* data, size_t size) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f || std::fwrite(data, 1, size, f) != size || std::fclose(f) != 0) {
    std::perror(("coil fuzz: writing " + path).c_str());
    std::abort();
  }
}
inline void write_file(const std::string& path, const std::string& bytes) {
  write_file(path, bytes.data(), bytes.size());
}

// The seed folder when COIL_FUZZ_WRITE_SEEDS is set, else empty.
inline std::string seed_dir() {
  const char* d = std::getenv("COIL_FUZZ_WRITE_SEEDS");
  if (!d || !*d) return {};
  std::filesystem::create_directories(d);
  return d;
}

// Seed mode: when COIL_FUZZ_WRITE_SEEDS is set, write the target's seeds there and exit.
template <class F>
void write_seeds_if_asked(const F& write_seeds) {
  if (const std::string dir = seed_dir(); !dir.empty()) {
    write_seeds(dir);
    std::exit(0);
  }
}

// A fuzzer uses one core: the machine is shared, and libFuzzer runs one input at a time.
inline void init_common() { set_num_threads(1); }

// Aborts (a crash libFuzzer reports) when an invariant of a loaded result is broken.
inline void require(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "coil fuzz: invariant broken: %s\n", what);
    std::abort();
  }
}

// Reads every byte a tensor views: a view past its storage shows up under ASan or as SIGSEGV.
inline uint32_t touch(const Tensor& t) {
  Tensor c = t.contiguous();
  require(c.nbytes() == static_cast<size_t>(c.numel()) * dtype_size(c.dtype()), "nbytes");
  uint32_t h = 0;
  const auto* p = static_cast<const unsigned char*>(c.raw_data());
  for (size_t i = 0; i < c.nbytes(); ++i) h = h * 31 + p[i];
  return h;
}

// A safetensors file with its coil.crc32c.* checksums removed from __metadata__ (the header
// re-padded to 8 bytes), as a file from another writer looks: mutations of its data then load.
inline std::string strip_checksums(const std::string& file) {
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(file[i]);
  json::Value h = json::parse(std::string_view(file).substr(8, n));
  for (auto& [k, v] : h.members())
    if (k == "__metadata__") {
      auto& m = v.members();
      std::erase_if(
          m, [](const json::Value::Member& e) { return e.first.rfind("coil.crc32c.", 0) == 0; });
    }
  std::string text = h.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>(uint64_t(text.size()) >> (8 * i));
  return out + text + file.substr(8 + n);
}

}  // namespace coil::fuzz
