// Helpers for tests: independent float64 references over explicit indices.
#pragma once
#include <doctest/doctest.h>

#include <unistd.h>

#include <atomic>
#include <cmath>
#include <coil/coil.h>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

namespace ct {

using coil::Shape;
using coil::Tensor;

// Row-major multi-index of flat position i in shape.
inline Shape unravel(int64_t i, const Shape& shape) {
  Shape idx(shape.size());
  for (int64_t d = static_cast<int64_t>(shape.size()) - 1; d >= 0; --d) {
    int64_t n = shape[d];
    idx[d] = n ? i % n : 0;
    i = n ? i / n : 0;
  }
  return idx;
}
inline int64_t ravel(const Shape& idx, const Shape& shape) {
  int64_t i = 0;
  for (size_t d = 0; d < shape.size(); ++d) i = i * shape[d] + idx[d];
  return i;
}
// Flat position in `shape` that a broadcast output index reads.
inline int64_t bcast_pos(const Shape& out_idx, const Shape& shape) {
  Shape idx(shape.size());
  size_t off = out_idx.size() - shape.size();
  for (size_t d = 0; d < shape.size(); ++d) idx[d] = shape[d] == 1 ? 0 : out_idx[d + off];
  return ravel(idx, shape);
}

inline std::vector<double> vals(const Tensor& t) { return coil::to_vector<double>(t); }

// Normwise relative error ||got - want|| / ||want||, in float64.
inline double rel_error(const Tensor& got, const Tensor& want) {
  const double n = want.to(coil::kF64).square().sum().item<double>();
  const double d = (got.to(coil::kF64) - want.to(coil::kF64)).square().sum().item<double>();
  return std::sqrt(d) / std::max(std::sqrt(n), 1e-300);
}

// A gradient each rank holds a share of, summed over `group` (null: this rank's alone); an
// undefined gradient (no share) counts as zeros shaped like `like`.
inline Tensor summed_grad(const Tensor& g, const Tensor& like, const coil::dist::GroupPtr& group) {
  Tensor s = g.defined() ? g.detach().clone() : coil::zeros_like(like);
  if (group) coil::dist::all_reduce(s, coil::dist::ReduceOp::kSum, group);
  return s;
}

// A small hybrid Mamba-2 + MoE model's config: 2 layers, d_model 16, 4 experts (top 2) of
// hidden 8 and a shared MLP of 8, 4 heads of 8, state 8, chunk 8, vocabulary 64.
inline coil::nn::HybridConfig tiny_hybrid() {
  coil::nn::HybridConfig c;
  c.vocab_size = 64;
  c.hidden_size = 16;
  c.num_hidden_layers = 2;
  c.num_local_experts = 4;
  c.num_experts_per_tok = 2;
  c.intermediate_size = 8;
  c.shared_intermediate_size = 8;
  c.mamba_n_heads = 4;
  c.mamba_d_head = 8;
  c.mamba_d_state = 8;
  c.mamba_chunk_size = 8;
  return c;
}

// The scans' options from the inputs list the scan tests share,
// {x, delta, A, B, C, D, z, delta_bias, initial_state}: every optional input on, the final state
// returned.
inline coil::SelectiveScanOptions selective_options(const coil::TensorList& v,
                                                    bool softplus = true) {
  coil::SelectiveScanOptions o;
  o.D = v[5];
  o.z = v[6];
  o.delta_bias = v[7];
  o.initial_state = v[8];
  o.delta_softplus = softplus;
  o.return_final_state = true;
  return o;
}
inline coil::SsdScanOptions ssd_options(const coil::TensorList& v, bool softplus = true) {
  coil::SsdScanOptions o;
  o.D = v[5];
  o.z = v[6];
  o.dt_bias = v[7];
  o.initial_state = v[8];
  o.dt_softplus = softplus;
  o.return_final_state = true;
  return o;
}

// A tensor with random values in [lo, hi), in dtype, optionally as a non-contiguous view
// (a transposed copy transposed back, so the values are the same but the strides are not).
inline Tensor rnd(const Shape& s, coil::DType t = coil::kF32, double lo = -2, double hi = 2,
                  bool noncontig = false) {
  Tensor x = coil::rand(s, coil::kF64) * (hi - lo) + lo;
  x = x.to(t);
  if (noncontig && s.size() >= 2) {
    int64_t a = static_cast<int64_t>(s.size()) - 1, b = a - 1;
    x = x.transpose(a, b).contiguous().transpose(a, b);
  }
  return x;
}

// Normwise and elementwise closeness against a float64 reference.
inline void check_close(const Tensor& got, const std::vector<double>& ref, double rtol, double atol,
                        const std::string& what = "") {
  std::vector<double> g = vals(got);
  REQUIRE_MESSAGE(g.size() == ref.size(), what << ": size " << g.size() << " vs " << ref.size());
  for (size_t i = 0; i < g.size(); ++i) {
    bool both_nan = std::isnan(g[i]) && std::isnan(ref[i]);
    bool same_inf = std::isinf(g[i]) && g[i] == ref[i];
    if (both_nan || same_inf) continue;
    if (!(std::fabs(g[i] - ref[i]) <= atol + rtol * std::fabs(ref[i]))) {
      FAIL_CHECK(what << ": element " << i << " got " << g[i] << " expected " << ref[i]);
      return;
    }
  }
}

inline void check_gradcheck(const std::function<Tensor(const coil::TensorList&)>& fn,
                            const coil::TensorList& in, double atol = 1e-5, double rtol = 1e-3) {
  auto r = coil::gradcheck(fn, in, 1e-6, atol, rtol);
  CHECK_MESSAGE(r.ok, r.message);
}

// Runs fn and checks it throws coil::Error whose message contains every fragment.
inline void check_error(const std::function<void()>& fn,
                        const std::vector<std::string>& fragments) {
  try {
    fn();
  } catch (const coil::Error& e) {
    std::string m = e.what();
    for (const auto& f : fragments)
      CHECK_MESSAGE(m.find(f) != std::string::npos, "message '" << m << "' lacks '" << f << "'");
    return;
  }
  FAIL_CHECK("expected coil::Error containing '" << (fragments.empty() ? "" : fragments[0]) << "'");
}

// A fresh directory under /tmp, removed with everything in it when the test ends.
struct TempDir {
  std::filesystem::path path;
  TempDir() {
    static std::atomic<int> counter{0};
    path = std::filesystem::temp_directory_path() /
           ("coil_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    std::filesystem::remove_all(path);
    std::filesystem::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  std::string file(const std::string& name) const { return (path / name).string(); }
};

// A small English-like text of `words` words in dir/corpus.txt: training data for LM tests.
inline std::string write_corpus(const TempDir& dir, int words = 3000) {
  std::string text;
  const char* w[] = {"the ", "cat ", "sat ", "on ", "a ", "mat. ", "A ", "dog ", "ran.\n"};
  for (int i = 0; i < words; ++i) text += w[(i * 7 + i / 5) % 9];
  std::string path = dir.file("corpus.txt");
  std::ofstream(path, std::ios::binary) << text;
  return path;
}

}  // namespace ct
