// selective_scan against the float64 oracle of scan_reference.h: outputs, final state and every
// gradient with each optional input on and off, odd sizes, mamba_ssm's test grid, split
// sequences, gradcheck, a memory bound for the fused backward, and bad inputs.
#include <cmath>
#include <random>

#include "scan_reference.h"
#include "test_util.h"

using namespace coil;
using scan_ref::SelectiveScanProblem;

namespace {

struct Flags {
  bool D = true, z = true, bias = true, softplus = true, h0 = true;
};

// Inputs as in mamba_ssm's tests; with softplus, delta also reaches both sides of the
// threshold (> 20) and the far negative side, where softplus is tiny.
SelectiveScanProblem make_problem(int64_t batch, int64_t L, int64_t dim, int64_t N, int64_t groups,
                                  Flags f, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal;
  std::uniform_real_distribution<double> unit;
  auto randn = [&](int64_t n) {
    std::vector<double> v(static_cast<size_t>(n));
    for (double& x : v) x = normal(rng);
    return v;
  };
  auto rand = [&](int64_t n, double lo, double hi) {
    std::vector<double> v(static_cast<size_t>(n));
    for (double& x : v) x = lo + (hi - lo) * unit(rng);
    return v;
  };
  SelectiveScanProblem p;
  p.batch = batch;
  p.L = L;
  p.dim = dim;
  p.N = N;
  p.groups = groups;
  const int64_t tok = batch * L * dim;
  p.u = randn(tok);
  if (f.softplus) {
    p.delta = rand(tok, -4, 2);
    for (int64_t i = 0; i < tok; ++i) {
      if (i % 37 == 5) p.delta[i] = 20.5 + unit(rng);
      if (i % 41 == 7) p.delta[i] = -25 - unit(rng);
    }
  } else {
    p.delta = rand(tok, 0, 0.5);
  }
  p.A = rand(dim * N, -2, -0.05);
  p.B = randn(batch * L * groups * N);
  p.C = randn(batch * L * groups * N);
  if (f.D) p.D = randn(dim);
  if (f.z) p.z = randn(tok);
  if (f.bias) p.delta_bias = rand(dim, 0, 0.5);
  if (f.h0) p.initial_state = randn(batch * dim * N);
  p.delta_softplus = f.softplus;
  return p;
}

// Rounds every input to `t`, so the oracle sees exactly what the op sees.
void round_to(SelectiveScanProblem& p, DType t) {
  if (t == kF64) return;
  for (std::vector<double>* v : {&p.u, &p.delta, &p.B, &p.C, &p.z}) {
    if (v->empty()) continue;
    *v = ct::vals(tensor(*v, {static_cast<int64_t>(v->size())}).to(t));
  }
  // A, D, delta_bias and the state stay f32 (like mamba's weights) unless t is f32 anyway.
  for (std::vector<double>* v : {&p.A, &p.D, &p.delta_bias, &p.initial_state}) {
    if (v->empty()) continue;
    *v = ct::vals(tensor(*v, {static_cast<int64_t>(v->size())}).to(kF32));
  }
}

std::vector<double> randn_vec(int64_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal;
  std::vector<double> v(static_cast<size_t>(n));
  for (double& x : v) x = normal(rng);
  return v;
}

// A float64 gradcheck input in [lo, hi).
Tensor gc_in(const Shape& s, double lo = -1, double hi = 1) {
  return (rand(s, kF64) * (hi - lo) + lo).requires_grad_();
}

double rel_err(const std::vector<double>& got, const std::vector<double>& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    num += (got[i] - ref[i]) * (got[i] - ref[i]);
    den += ref[i] * ref[i];
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

void check_rel(const Tensor& got, const std::vector<double>& ref, double tol,
               const std::string& what) {
  REQUIRE_MESSAGE(got.defined(), what << ": undefined");
  std::vector<double> g = ct::vals(got);
  REQUIRE_MESSAGE(g.size() == ref.size(), what << ": size " << g.size() << " vs " << ref.size());
  const double e = rel_err(g, ref);
  CHECK_MESSAGE(e < tol, what << ": normwise relative error " << e << " >= " << tol);
}

// The op's inputs as leaves requiring grad. 16-bit u keeps A, D, delta_bias and the state f32.
struct Leaves {
  Tensor u, delta, A, B, C, D, z, bias, h0;
  TensorList all() const { return {u, delta, A, B, C, D, z, bias, h0}; }
};

// An optional input is absent when its vector is empty; required ones may be empty tensors.
Tensor leaf(const std::vector<double>& v, const Shape& s, DType t, bool noncontig = false,
            bool optional = false) {
  if (optional && v.empty()) return Tensor();
  Tensor x = tensor(v, s).to(t);
  if (noncontig && s.size() >= 2) {
    // Same values, transposed strides.
    const int64_t a = static_cast<int64_t>(s.size()) - 1;
    x = x.transpose(a, a - 1).contiguous().transpose(a, a - 1);
  }
  return x.requires_grad_();
}

Leaves make_leaves(const SelectiveScanProblem& p, DType t, bool noncontig = false) {
  const DType wt = t == kF64 ? kF64 : kF32;
  const Shape tok{p.batch, p.L, p.dim};
  // Groups of one go in as the 3-d (batch, L, N) form.
  const Shape bc = p.groups == 1 ? Shape{p.batch, p.L, p.N} : Shape{p.batch, p.L, p.groups, p.N};
  Leaves l;
  l.u = leaf(p.u, tok, t, noncontig);
  l.delta = leaf(p.delta, tok, t, noncontig);
  l.A = leaf(p.A, {p.dim, p.N}, wt);
  l.B = leaf(p.B, bc, t, noncontig);
  l.C = leaf(p.C, bc, t, noncontig);
  l.D = leaf(p.D, {p.dim}, wt, false, true);
  l.z = leaf(p.z, tok, t, noncontig, true);
  l.bias = leaf(p.delta_bias, {p.dim}, wt, false, true);
  l.h0 = leaf(p.initial_state, {p.batch, p.dim, p.N}, wt, false, true);
  return l;
}

std::pair<Tensor, Tensor> run(const Leaves& l, bool softplus, bool final_state = true) {
  SelectiveScanOptions o;
  o.D = l.D;
  o.z = l.z;
  o.delta_bias = l.bias;
  o.initial_state = l.h0;
  o.delta_softplus = softplus;
  o.return_final_state = final_state;
  return selective_scan(l.u, l.delta, l.A, l.B, l.C, o);
}

// Forward, final state and (with `grads`) every gradient against the oracle.
void check_case(SelectiveScanProblem p, DType t, bool grads, const std::string& name,
                bool noncontig = false) {
  CAPTURE(name);
  round_to(p, t);
  const double tol = t == kF64 ? 1e-10 : t == kF32 ? 1e-5 : 2e-2;
  Leaves l = make_leaves(p, t, noncontig);
  auto [y, fin] = run(l, p.delta_softplus);
  CHECK(y.dtype() == t);
  scan_ref::SelectiveScanResult ref = scan_ref::selective_scan_forward(p);
  check_rel(y, ref.y, tol, name + " y");
  check_rel(fin, ref.final_state, tol, name + " final_state");
  if (!grads) return;
  std::vector<double> dy = randn_vec(static_cast<int64_t>(ref.y.size()), 99);
  std::vector<double> dfin = randn_vec(static_cast<int64_t>(ref.final_state.size()), 98);
  backward({y, fin},
           {tensor(dy, y.sizes()).to(y.dtype()), tensor(dfin, fin.sizes()).to(fin.dtype())});
  if (t != kF64) {
    // The oracle's seeds are what the op saw.
    dy = ct::vals(tensor(dy, y.sizes()).to(t));
    dfin = ct::vals(tensor(dfin, fin.sizes()).to(t));
  }
  scan_ref::SelectiveScanGradients g = scan_ref::selective_scan_backward(p, dy, dfin);
  struct Check {
    const char* name;
    const Tensor& input;
    const std::vector<double>& ref;
  };
  const Check checks[] = {{"du", l.u, g.du},
                          {"ddelta", l.delta, g.ddelta},
                          {"dA", l.A, g.dA},
                          {"dB", l.B, g.dB},
                          {"dC", l.C, g.dC},
                          {"dD", l.D, g.dD},
                          {"dz", l.z, g.dz},
                          {"ddelta_bias", l.bias, g.ddelta_bias},
                          {"dinitial_state", l.h0, g.dinitial_state}};
  for (const Check& c : checks) {
    if (!c.input.defined()) continue;
    CHECK(c.input.grad().dtype() == c.input.dtype());
    check_rel(c.input.grad(), c.ref, tol, name + " " + c.name);
  }
}

}  // namespace

TEST_SUITE("ops.selective_scan") {
  TEST_CASE("the oracle's gradients match its own finite differences") {
    // The hand-derived reverse loop of scan_reference.h, checked on its own forward.
    SelectiveScanProblem p = make_problem(2, 9, 4, 3, 2, Flags{}, 5);
    std::vector<double> dy = randn_vec(2 * 9 * 4, 1), dfin = randn_vec(2 * 4 * 3, 2);
    auto loss = [&](const SelectiveScanProblem& q) {
      scan_ref::SelectiveScanResult r = scan_ref::selective_scan_forward(q);
      double s = 0;
      for (size_t i = 0; i < dy.size(); ++i) s += r.y[i] * dy[i];
      for (size_t i = 0; i < dfin.size(); ++i) s += r.final_state[i] * dfin[i];
      return s;
    };
    scan_ref::SelectiveScanGradients g = scan_ref::selective_scan_backward(p, dy, dfin);
    using Field = std::vector<double> SelectiveScanProblem::*;
    const std::pair<Field, std::vector<double>*> fields[] = {
        {&SelectiveScanProblem::u, &g.du},
        {&SelectiveScanProblem::delta, &g.ddelta},
        {&SelectiveScanProblem::A, &g.dA},
        {&SelectiveScanProblem::B, &g.dB},
        {&SelectiveScanProblem::C, &g.dC},
        {&SelectiveScanProblem::D, &g.dD},
        {&SelectiveScanProblem::z, &g.dz},
        {&SelectiveScanProblem::delta_bias, &g.ddelta_bias},
        {&SelectiveScanProblem::initial_state, &g.dinitial_state}};
    for (const auto& [field, grad] : fields) {
      for (size_t i = 0; i < (p.*field).size(); ++i) {
        SelectiveScanProblem q = p;
        const double eps = 1e-6;
        (q.*field)[i] += eps;
        const double fp = loss(q);
        (q.*field)[i] -= 2 * eps;
        const double fm = loss(q);
        const double num = (fp - fm) / (2 * eps);
        REQUIRE_MESSAGE(std::fabs(num - (*grad)[i]) <= 1e-6 + 1e-6 * std::fabs(num),
                        "element " << i << ": " << (*grad)[i] << " vs numeric " << num);
      }
    }
  }

  TEST_CASE("matches the oracle with every optional input on and off") {
    for (DType t : {kF32, kF64}) {
      for (int mask = 0; mask < 32; ++mask) {
        Flags f{(mask & 1) != 0, (mask & 2) != 0, (mask & 4) != 0, (mask & 8) != 0,
                (mask & 16) != 0};
        // dim 19: one full SIMD block and a tail; dim 36 in 2 groups: 16 + 2 lanes per group;
        // L crosses the 64-step checkpoint chunks without being a multiple of them.
        check_case(make_problem(2, 77, 19, 5, 1, f, mask), t, true,
                   "mask " + std::to_string(mask) + " dim 19");
        check_case(make_problem(1, 130, 36, 16, 2, f, 100 + mask), t, true,
                   "mask " + std::to_string(mask) + " dim 36 groups 2");
      }
    }
  }

  TEST_CASE("mamba_ssm's grid: batch 2, dim 4, N 8, L 128/512/4096, groups 1 and 2") {
    for (DType t : {kF32, kF64})
      for (int64_t L : {128, 512, 4096})
        for (int64_t groups : {1, 2}) {
          Flags f;
          f.h0 = false;
          check_case(make_problem(2, L, 4, 8, groups, f, static_cast<uint64_t>(L + groups)), t,
                     true, "L " + std::to_string(L) + " groups " + std::to_string(groups));
        }
  }

  TEST_CASE("odd sizes: dim 1, N 1, L 1, L 0, L not a multiple of the chunk") {
    struct Size {
      int64_t batch, L, dim, N, groups;
    };
    for (DType t : {kF32, kF64})
      for (Size s :
           {Size{1, 1, 1, 1, 1}, Size{1, 65, 1, 1, 1}, Size{3, 1, 17, 1, 1}, Size{2, 64, 3, 16, 1},
            Size{1, 129, 5, 2, 5}, Size{2, 200, 33, 7, 3}, Size{1, 0, 3, 2, 1}}) {
        std::string name = "batch " + std::to_string(s.batch) + " L " + std::to_string(s.L) +
                           " dim " + std::to_string(s.dim) + " N " + std::to_string(s.N);
        check_case(make_problem(s.batch, s.L, s.dim, s.N, s.groups, Flags{}, 7), t, true, name);
      }
  }

  TEST_CASE("long sequence, forward: L 8192") {
    for (DType t : {kF32, kF64})
      check_case(make_problem(1, 8192, 24, 16, 1, Flags{}, 3), t, false, "L 8192");
  }

  TEST_CASE("non-contiguous inputs and 16-bit inputs") {
    check_case(make_problem(2, 100, 20, 4, 2, Flags{}, 11), kF32, true, "non-contiguous", true);
    check_case(make_problem(2, 100, 20, 4, 1, Flags{}, 12), kF64, true, "non-contiguous f64", true);
    check_case(make_problem(1, 70, 20, 16, 1, Flags{}, 13), kBF16, true, "bf16");
    check_case(make_problem(1, 70, 20, 4, 1, Flags{}, 14), kF16, true, "f16");
  }

  TEST_CASE("without the final state") {
    SelectiveScanProblem p = make_problem(2, 70, 18, 4, 1, Flags{}, 21);
    round_to(p, kF32);
    Leaves l = make_leaves(p, kF32);
    auto [y, fin] = run(l, true, false);
    CHECK_FALSE(fin.defined());
    std::vector<double> dy = randn_vec(static_cast<int64_t>(p.u.size()), 4);
    backward({y}, {tensor(dy, y.sizes()).to(kF32)});
    dy = ct::vals(tensor(dy, y.sizes()).to(kF32));
    scan_ref::SelectiveScanGradients g = scan_ref::selective_scan_backward(p, dy, {});
    check_rel(l.u.grad(), g.du, 1e-5, "du");
    check_rel(l.A.grad(), g.dA, 1e-5, "dA");
    check_rel(l.h0.grad(), g.dinitial_state, 1e-5, "dinitial_state");
  }

  TEST_CASE("a split sequence with the state passed on equals the whole") {
    for (DType t : {kF32, kF64}) {
      CAPTURE(t);
      const double tol = t == kF64 ? 1e-11 : 1e-5;
      SelectiveScanProblem p = make_problem(2, 150, 21, 6, 3, Flags{}, 31);
      round_to(p, t);
      Leaves l = make_leaves(p, t);
      std::vector<double> dyv = randn_vec(static_cast<int64_t>(p.u.size()), 8),
                          dfv = randn_vec(2 * 21 * 6, 9);
      Tensor dy = tensor(dyv, {2, 150, 21}).to(t), dfin = tensor(dfv, {2, 21, 6}).to(t);

      auto [yw, fw] = run(l, true);
      backward({yw, fw}, {dy, dfin});
      TensorList whole;
      for (Tensor x : l.all()) {
        whole.push_back(x.grad().clone());
        x.set_grad(Tensor());
      }

      const int64_t L1 = 70, L2 = 80;
      auto part = [&](int64_t s, int64_t n, const Tensor& h0) {
        SelectiveScanOptions o;
        o.D = l.D;
        o.z = l.z.narrow(1, s, n);
        o.delta_bias = l.bias;
        o.initial_state = h0;
        o.delta_softplus = true;
        o.return_final_state = true;
        return selective_scan(l.u.narrow(1, s, n), l.delta.narrow(1, s, n), l.A,
                              l.B.narrow(1, s, n), l.C.narrow(1, s, n), o);
      };
      auto [y1, f1] = part(0, L1, l.h0);
      auto [y2, f2] = part(L1, L2, f1);  // the gradient of f2 and y2 flows back through f1
      Tensor y = cat({y1, y2}, 1);
      check_rel(y, ct::vals(yw), tol, "y");
      check_rel(f2, ct::vals(fw), tol, "final_state");
      backward({y, f2}, {dy, dfin});
      const char* names[] = {"du",          "ddelta",        "dA", "dB", "dC", "dD", "dz",
                             "ddelta_bias", "dinitial_state"};
      TensorList leaves = l.all();
      for (size_t i = 0; i < leaves.size(); ++i)
        check_rel(leaves[i].grad(), ct::vals(whole[i]), tol, names[i]);
    }
  }

  TEST_CASE("gradcheck in float64 for every input") {
    GradcheckCase c = op_info("selective_scan").gradcheck();
    ct::check_gradcheck(c.fn, c.inputs);
    // Crossing a 64-step chunk with N 16, no options.
    manual_seed(3);
    TensorList in{gc_in({1, 70, 3}), gc_in({1, 70, 3}, 0.05, 0.5), gc_in({3, 16}, -1, -0.1),
                  gc_in({1, 70, 16}), gc_in({1, 70, 16})};
    ct::check_gradcheck(
        [](const TensorList& v) { return selective_scan(v[0], v[1], v[2], v[3], v[4]).first; }, in);
    // Softplus, z and D, through the final state but from a zero initial state.
    TensorList in2{gc_in({2, 5, 6}),    gc_in({2, 5, 6}, -3, 3), gc_in({6, 2}, -1, 0),
                   gc_in({2, 5, 3, 2}), gc_in({2, 5, 3, 2}),     gc_in({6}),
                   gc_in({2, 5, 6})};
    ct::check_gradcheck(
        [](const TensorList& v) {
          SelectiveScanOptions o;
          o.D = v[5];
          o.z = v[6];
          o.delta_softplus = true;
          o.return_final_state = true;
          auto [y, h] = selective_scan(v[0], v[1], v[2], v[3], v[4], o);
          return cat({flatten(y), flatten(h)}, 0);
        },
        in2);
  }

  TEST_CASE("one thread and two threads agree") {
    const int before = get_num_threads();
    SelectiveScanProblem p = make_problem(1, 150, 70, 16, 2, Flags{}, 41);
    round_to(p, kF32);
    std::vector<double> dy = randn_vec(static_cast<int64_t>(p.u.size()), 5);
    std::vector<TensorList> res;
    for (int threads : {1, 2}) {
      set_num_threads(threads);
      Leaves l = make_leaves(p, kF32);
      auto [y, fin] = run(l, true);
      backward({y}, {tensor(dy, y.sizes()).to(kF32)});
      TensorList r{y.detach(), fin.detach()};
      for (const Tensor& x : l.all()) r.push_back(x.grad());
      res.push_back(r);
    }
    set_num_threads(before);
    for (size_t i = 0; i < res[0].size(); ++i)
      check_rel(res[1][i], ct::vals(res[0][i]), 1e-6, "output " + std::to_string(i));
  }

  TEST_CASE("memory: the backward never holds the (L x dim x N) states") {
    // batch 2, dim 256, N 16, L 4096, f32, with z: peak bytes over forward + backward stay
    // below 3x the bytes of (u, delta, B, C, z, y); the states alone would be 8x u.
    const int64_t batch = 2, L = 4096, dim = 256, N = 16;
    manual_seed(1);
    Tensor u = randn({batch, L, dim}).requires_grad_();
    Tensor delta = (rand({batch, L, dim}) * 0.5).requires_grad_();
    Tensor A = (rand({dim, N}) * -1.0 - 0.1).requires_grad_();
    Tensor B = randn({batch, L, N}).requires_grad_();
    Tensor C = randn({batch, L, N}).requires_grad_();
    Tensor z = randn({batch, L, dim}).requires_grad_();
    Tensor D = randn({dim}).requires_grad_();
    Tensor bias = (rand({dim}) * 0.5).requires_grad_();
    const int64_t io_bytes = static_cast<int64_t>(u.nbytes() * 4 + B.nbytes() + C.nbytes());
    const int64_t before = memory_stats().bytes_in_use;
    reset_peak_memory();
    {
      SelectiveScanOptions o;
      o.D = D;
      o.z = z;
      o.delta_bias = bias;
      o.delta_softplus = true;
      Tensor y = selective_scan(u, delta, A, B, C, o).first;
      Tensor dy = ones_like(y);
      backward({y}, {dy});
    }
    const int64_t peak = memory_stats().peak_bytes_in_use - before;
    MESSAGE("selective_scan memory: peak ", peak, " bytes, bound 3 x ", io_bytes);
    CHECK(peak < 3 * io_bytes);
    CHECK(u.grad().defined());
    CHECK(z.grad().defined());
    CHECK(std::isfinite(A.grad().abs().sum().item_double()));
  }

  TEST_CASE("bad inputs name the op and the argument") {
    Tensor u = zeros({2, 8, 4}), d = zeros({2, 8, 4}), A = -ones({4, 3}), B = zeros({2, 8, 3});
    auto call = [](const Tensor& u, const Tensor& d, const Tensor& A, const Tensor& B,
                   const Tensor& C,
                   SelectiveScanOptions o = {}) { selective_scan(u, d, A, B, C, o); };
    ct::check_error([&] { call(u.view({16, 4}), d, A, B, B); }, {"selective_scan", "u", "[16, 4]"});
    ct::check_error([&] { call(u, zeros({2, 7, 4}), A, B, B); }, {"selective_scan", "delta"});
    ct::check_error(
        [&] {
          call(u, d, A, zeros({2, 7, 3}), B);
        },
        {"selective_scan", "B", "[2, 7, 3]"});
    ct::check_error([&] { call(u, d, A, B, zeros({2, 7, 3})); }, {"selective_scan", "C"});
    ct::check_error([&] { call(u, d, -ones({5, 3}), B, B); }, {"selective_scan", "A", "[5, 3]"});
    ct::check_error([&] { call(u, d, -ones({4}), B, B); }, {"selective_scan", "A"});
    ct::check_error(
        [&] {
          call(u, d, A, zeros({2, 8, 3, 3}), zeros({2, 8, 3, 3}));
        },
        {"selective_scan", "groups 3", "dim 4"});
    SelectiveScanOptions o;
    o.initial_state = zeros({2, 4, 2});
    ct::check_error([&] { call(u, d, A, B, B, o); },
                    {"selective_scan", "initial_state", "[2, 4, 2]"});
    o = {};
    o.D = zeros({3});
    ct::check_error([&] { call(u, d, A, B, B, o); }, {"selective_scan", "D"});
    o = {};
    o.z = zeros({2, 8, 5});
    ct::check_error([&] { call(u, d, A, B, B, o); }, {"selective_scan", "z"});
    o = {};
    o.delta_bias = zeros({4, 1});
    ct::check_error([&] { call(u, d, A, B, B, o); }, {"selective_scan", "delta_bias"});
    ct::check_error(
        [&] {
          call(u, d, zeros({4, 3}, kI64), B, B);
        },
        {"selective_scan", "A", "float32"});
    ct::check_error([&] { call(u, d, A.to(kBF16), B, B); }, {"selective_scan", "A", "float32"});
    ct::check_error([&] { call(u, d.to(kF64), A, B, B); }, {"selective_scan", "delta", "dtype"});
    ct::check_error([&] { call(u.to(kI64), d, A, B, B); }, {"selective_scan", "u"});
  }
}
