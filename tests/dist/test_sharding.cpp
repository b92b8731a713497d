// Every op with a sharding rule, on DTensors: the registry's gradcheck problem of each op run
// with its inputs distributed (every placement combination on the world's 1-d mesh, a seeded
// sample on a 2x2 mesh at 4 ranks) gives, through full_tensor, the single-process output and,
// through the DTensor leaves' gradients, the single-process gradients. Runs at 1, 2 and 4 ranks.
#include <random>

#include "../test_util.h"

using namespace coil;
namespace dist = coil::dist;

namespace {

double rel_diff(const Tensor& a, const Tensor& b) {
  Tensor x = a.to(kF64), y = b.to(kF64);
  const double scale = std::max(1.0, y.abs().max().item<double>());
  return (x - y).abs().max().item<double>() / scale;
}

Tensor weights_like(const Shape& s) {
  Tensor w = zeros(s, Options(kF64));
  for (int64_t i = 0; i < w.numel(); ++i) w.data_ptr<double>()[i] = 0.5 + 0.25 * (i % 7);
  return w;
}

// The placements an input may take on one mesh dim.
std::vector<dist::Placement> options_for(const Tensor& t) {
  std::vector<dist::Placement> o = {dist::Replicate()};
  if (!t.defined() || t.dim() == 0) return o;
  for (int64_t d = 0; d < t.dim(); ++d) o.push_back(dist::Shard(d));
  if (is_floating(t.dtype())) o.push_back(dist::Partial());
  return o;
}

struct Outcome {
  bool ok = true;
  std::string why;
};

// Runs the case with inputs placed as given; compares output and gradients with the reference.
Outcome run_case(const GradcheckCase& c, const dist::DeviceMesh& mesh,
                 const std::vector<dist::Placements>& placements, const Tensor& ref_out,
                 const std::vector<Tensor>& ref_grads) {
  TensorList in;
  for (size_t i = 0; i < c.inputs.size(); ++i) {
    const Tensor& x = c.inputs[i];
    if (!x.defined()) {
      in.push_back(x);
      continue;
    }
    Tensor d = dist::distribute_tensor(x.detach(), mesh, placements[i]);
    if (x.requires_grad()) d.requires_grad_(true);
    in.push_back(d);
  }
  Outcome r;
  try {
    Tensor out = c.fn(in);
    Tensor full = dist::is_dtensor(out) ? dist::full_tensor(out) : out;
    if (full.sizes() != ref_out.sizes() || rel_diff(full, ref_out) > 1e-9) {
      r.ok = false;
      r.why = "output differs";
      return r;
    }
    if (!is_floating(out.dtype()) || !out.requires_grad()) return r;
    (full * weights_like(full.sizes())).sum().backward();
    for (size_t i = 0; i < in.size(); ++i) {
      if (!ref_grads[i].defined()) continue;
      Tensor g = in[i].grad();
      if (!g.defined()) {
        r.ok = false;
        r.why = "no gradient for input " + std::to_string(i);
        return r;
      }
      Tensor gf = dist::is_dtensor(g) ? dist::full_tensor(g) : g;
      if (rel_diff(gf, ref_grads[i]) > 1e-9) {
        r.ok = false;
        r.why = "gradient of input " + std::to_string(i) + " differs";
        return r;
      }
    }
  } catch (const Error& e) {
    r.ok = false;
    r.why = e.what();
  }
  return r;
}

}  // namespace

TEST_SUITE("dist") {
  TEST_CASE("sharding rules: every op with a rule matches the single-process result") {
    dist::DeviceMesh flat = dist::DeviceMesh::world();
    std::unique_ptr<dist::DeviceMesh> grid;
    if (dist::world_size() == 4)
      grid = std::make_unique<dist::DeviceMesh>(Shape{2, 2}, std::vector<std::string>{"a", "b"});
    int ops = 0, combos = 0;
    for (const OpInfo* op : all_ops()) {
      if (!op->sharding_rule.has_value() || !op->gradcheck) continue;
      CAPTURE(op->name);
      manual_seed(42);  // the same inputs on every rank
      GradcheckCase c = op->gradcheck();
      // the reference on plain tensors
      TensorList plain;
      for (const Tensor& x : c.inputs) {
        Tensor p = x.defined() ? x.detach().clone() : x;
        if (x.defined() && x.requires_grad()) p.requires_grad_(true);
        plain.push_back(p);
      }
      Tensor ref = c.fn(plain);
      std::vector<Tensor> ref_grads(plain.size());
      if (is_floating(ref.dtype()) && ref.requires_grad()) {
        (ref * weights_like(ref.sizes())).sum().backward();
        for (size_t i = 0; i < plain.size(); ++i)
          if (plain[i].defined() && plain[i].requires_grad()) ref_grads[i] = plain[i].grad();
      }
      ref = ref.detach();
      // every combination of 1-d placements (a seeded sample when there are many)
      std::vector<std::vector<dist::Placement>> opts;
      size_t total = 1;
      for (const Tensor& x : c.inputs) {
        opts.push_back(options_for(x));
        total *= opts.back().size();
      }
      std::mt19937 rng(7);
      const size_t limit = 40;
      for (size_t k = 0; k < std::min(total, limit); ++k) {
        size_t code = total <= limit ? k : rng() % total;
        std::vector<dist::Placements> pl;
        for (auto& o : opts) {
          pl.push_back({o[code % o.size()]});
          code /= o.size();
        }
        std::string desc;
        for (auto& p : pl) desc += dist::str(p) + " ";
        CAPTURE(desc);
        Outcome r = run_case(c, flat, pl, ref, ref_grads);
        if (!r.ok) FAIL_CHECK(op->name << " " << desc << ": " << r.why);
        ++combos;
      }
      if (grid) {
        for (int k = 0; k < 6; ++k) {
          std::vector<dist::Placements> pl;
          for (auto& o : opts) pl.push_back({o[rng() % o.size()], o[rng() % o.size()]});
          std::string desc;
          for (auto& p : pl) desc += dist::str(p) + " ";
          CAPTURE(desc);
          Outcome r = run_case(c, *grid, pl, ref, ref_grads);
          if (!r.ok) FAIL_CHECK(op->name << " on 2x2 " << desc << ": " << r.why);
        }
      }
      ++ops;
    }
    MESSAGE("ops with a rule checked: " << ops << ", 1-d placement combinations: " << combos);
    CHECK(ops >= 40);
  }
}
