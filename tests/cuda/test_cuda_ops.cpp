// The CUDA backend against the CPU: every op with a CUDA kernel runs on both devices on the same
// values (odd sizes, non-contiguous and broadcast operands, every dtype the op takes), and the
// results must agree: f32 within 1e-5 relative (plus a tiny absolute floor for values near 0),
// f64 within 1e-12, exact for integers, bools and copies. Runs only where a GPU is usable
// (tests/main.cpp skips the suite otherwise).
#include "../../core/op_table.h"
#include "../../ops/cpu/kernels.h"
#include "ssd_cases.h"

using namespace coil;

namespace {

const Device kGpu(kCUDA, 0);

double tol_for(DType t) { return t == kF64 ? 1e-12 : t == kF32 ? 1e-5 : 0.0; }

// got (on the GPU) against ref (computed on the CPU): same shape and dtype; values equal when
// rtol is 0, else within rtol normwise (||got - ref|| / ||ref||: a GEMM or a reduction sums in
// another order, so single elements that cancel may differ by more) and within rtol of the
// largest |ref| elementwise.
void check_same(const Tensor& got, const Tensor& ref, const std::string& what, double rtol = -1) {
  CAPTURE(what);
  REQUIRE(got.device().is_cuda());
  CHECK(got.sizes() == ref.sizes());
  CHECK(got.dtype() == ref.dtype());
  const double r = rtol >= 0 ? rtol : tol_for(ref.dtype());
  const Tensor host = got.to(Device(kCPU));
  if (r == 0) {
    ct::check_close(host, ct::vals(ref), 0, 0, what);
    return;
  }
  std::vector<double> rv = ct::vals(ref);
  double big = 0;
  for (double v : rv)
    if (std::isfinite(v)) big = std::max(big, std::fabs(v));
  const double e = ct::rel_error(host, ref);
  CHECK_MESSAGE(e <= r, what << ": normwise error " << e);
  ct::check_close(host, rv, r, r * big, what);
}

Tensor gpu(const Tensor& t) { return t.to(kGpu); }

// Runs f on leaf copies of `inputs` on the CPU and on the GPU (f gets the leaves and a function
// that puts a tensor on their device; it calls backward itself and returns its outputs), then
// compares the outputs and every input's gradient, names[i] naming input i.
void compare_with_grads(
    const TensorList& inputs,
    const std::function<TensorList(const TensorList&, const std::function<Tensor(Tensor)>&)>& f,
    const std::vector<std::string>& names, double out_tol, double grad_tol) {
  TensorList cpu_in, gpu_in;
  for (const Tensor& v : inputs) {
    cpu_in.push_back(v.detach().requires_grad_());
    gpu_in.push_back(gpu(v).detach().requires_grad_());
  }
  const TensorList rc = f(cpu_in, [](Tensor t) { return t; });
  const TensorList rg = f(gpu_in, [](Tensor t) { return gpu(t); });
  for (size_t i = 0; i < rc.size(); ++i)
    check_same(rg[i], rc[i], "output " + std::to_string(i), out_tol);
  for (size_t i = 0; i < inputs.size(); ++i)
    check_same(gpu_in[i].grad(), cpu_in[i].grad(), names[i], grad_tol);
}

}  // namespace

TEST_SUITE("cuda") {
  TEST_CASE("tensors move to the GPU and back unchanged, in every dtype and layout") {
    manual_seed(1);
    for (DType t : {kF32, kF64, kBF16, kF16, kI32, kI64, kBool})
      for (Shape s : {Shape{}, Shape{0}, Shape{7}, Shape{37, 129}, Shape{1000003}}) {
        CAPTURE(t);
        CAPTURE(shape_str(s));
        Tensor x = ct::rnd(s, kF64, -50, 50, /*noncontig=*/s.size() == 2).to(t);
        Tensor g = x.to(kGpu);
        CHECK(g.device() == kGpu);
        CHECK(g.is_contiguous());
        CHECK(ct::vals(g.to(Device(kCPU))) == ct::vals(x));
      }
    // allocations are cached: a second tensor of the size reuses the block
    empty_cache(kGpu);
    const AllocatorStats before = memory_stats(kGpu);
    { Tensor a = zeros({1 << 20}, Options(kF32, kGpu)); }
    { Tensor b = zeros({1 << 20}, Options(kF32, kGpu)); }
    const AllocatorStats after = memory_stats(kGpu);
    CHECK(after.num_system_allocs - before.num_system_allocs == 1);
    CHECK(after.bytes_in_use == before.bytes_in_use);
    CHECK(after.peak_bytes_in_use >= before.bytes_in_use + (int64_t(4) << 20));
  }

  TEST_CASE("unary ops") {
    manual_seed(2);
    struct U {
      const char* name;
      std::function<Tensor(const Tensor&)> f;
      double lo, hi;
    };
    const std::vector<U> ops = {
        {"neg", [](const Tensor& x) { return neg(x); }, -3, 3},
        {"exp", [](const Tensor& x) { return exp(x); }, -3, 3},
        {"log", [](const Tensor& x) { return log(x); }, 0.1, 5},
        {"log1p", [](const Tensor& x) { return log1p(x); }, -0.5, 5},
        {"sqrt", [](const Tensor& x) { return sqrt(x); }, 0, 5},
        {"rsqrt", [](const Tensor& x) { return rsqrt(x); }, 0.1, 5},
        {"abs", [](const Tensor& x) { return abs(x); }, -3, 3},
        {"tanh", [](const Tensor& x) { return tanh(x); }, -3, 3},
        {"sigmoid", [](const Tensor& x) { return sigmoid(x); }, -6, 6},
        {"silu", [](const Tensor& x) { return silu(x); }, -6, 6},
        {"softplus", [](const Tensor& x) { return softplus(x); }, -30, 30},
        {"gelu", [](const Tensor& x) { return gelu(x); }, -4, 4},
        {"relu", [](const Tensor& x) { return relu(x); }, -3, 3},
        {"pow", [](const Tensor& x) { return pow(x, 2.5); }, 0, 3},
        {"clamp", [](const Tensor& x) { return clamp(x, -0.5, 0.7); }, -3, 3},
        {"square", [](const Tensor& x) { return square(x); }, -3, 3},
        {"sign", [](const Tensor& x) { return sign(x); }, -3, 3},
        {"reciprocal", [](const Tensor& x) { return reciprocal(x); }, 0.2, 3},
        {"erf", [](const Tensor& x) { return erf(x); }, -3, 3},
    };
    for (const U& u : ops)
      for (DType t : {kF32, kF64, kBF16}) {
        Tensor x = ct::rnd({37, 129}, t, u.lo, u.hi, /*noncontig=*/true);
        Tensor ref = u.f(x);
        // bf16 results are rounded from f32 on both sides: one bf16 step apart at most
        check_same(u.f(gpu(x)), ref, std::string(u.name) + " " + dtype_name(t),
                   t == kBF16 ? 1e-2 : -1);
      }
    Tensor xi = ct::rnd({5, 9}, kF64, -9, 9).to(kI64);
    for (auto f : {+[](const Tensor& x) { return neg(x); }, +[](const Tensor& x) { return abs(x); },
                   +[](const Tensor& x) { return square(x); },
                   +[](const Tensor& x) { return clamp(x, -2, 3); }})
      check_same(f(gpu(xi)), f(xi), "integer unary");
    Tensor special = tensor(std::vector<float>{1.f, NAN, INFINITY, -INFINITY, 0.f}, {5});
    check_same(isfinite(gpu(special)), isfinite(special), "isfinite");
    check_same(logical_not(gpu(special)), logical_not(special), "logical_not");
  }

  TEST_CASE("binary ops broadcast, compare and promote as on the CPU") {
    manual_seed(3);
    for (DType t : {kF32, kF64, kI32, kI64}) {
      CAPTURE(t);
      Tensor a = ct::rnd({37, 1, 5}, kF64, 1, 9).to(t);
      Tensor b = ct::rnd({1, 129, 5}, kF64, 1, 9, /*noncontig=*/true).to(t);
      const Tensor ga = gpu(a), gb = gpu(b);
      check_same(add(ga, gb, 2), add(a, b, 2), "add");
      check_same(sub(ga, gb), sub(a, b), "sub");
      check_same(ga * gb, a * b, "mul");
      check_same(maximum(ga, gb), maximum(a, b), "maximum");
      check_same(minimum(ga, gb), minimum(a, b), "minimum");
      check_same(ga / gb, a / b, "div (integers give f32)");
      for (auto cmp : {+[](const Tensor&x, const Tensor&y) { return eq(x, y); },
                       +[](const Tensor&x, const Tensor&y) { return ne(x, y); },
                       +[](const Tensor&x, const Tensor&y) { return lt(x, y); },
                       +[](const Tensor&x, const Tensor&y) { return le(x, y); },
                       +[](const Tensor&x, const Tensor&y) { return gt(x, y); },
                       +[](const Tensor&x, const Tensor&y) { return ge(x, y); }})
        check_same(cmp(ga, gb), cmp(a, b), "compare");
    }
    Tensor a = ct::rnd({64, 33}, kF32), b = ct::rnd({33}, kF64);
    check_same(pow(gpu(a).abs(), gpu(b)), pow(a.abs(), b), "pow f32 ^ f64 promotes");
    Tensor m = ct::rnd({64, 33}) > 0, n = ct::rnd({64, 33}) > 0;
    check_same(logical_and(gpu(m), gpu(n)), logical_and(m, n), "logical_and");
    check_same(logical_or(gpu(m), gpu(n)), logical_or(m, n), "logical_or");
    Tensor c = ct::rnd({64, 33}), g = gpu(c);
    c.add_(a, 0.5);
    g.add_(gpu(a), 0.5);
    check_same(g, c, "add_ in place");
    check_same(where(gpu(m), gpu(a), gpu(c)), where(m, a, c), "where");
  }

  TEST_CASE("copies between dtypes and layouts, fill_") {
    manual_seed(4);
    Tensor x = ct::rnd({65, 31}, kF32, -300, 300, /*noncontig=*/true);
    for (DType t : {kF64, kBF16, kF16, kI32, kI64, kBool})
      check_same(gpu(x).to(t), x.to(t), std::string("to ") + dtype_name(t), 0);
    Tensor g = gpu(x);
    check_same(g.transpose(0, 1).contiguous(), x.transpose(0, 1).contiguous(), "contiguous", 0);
    check_same(g.narrow(1, 3, 7).clone(), x.narrow(1, 3, 7).clone(), "clone of a slice", 0);
    Tensor dst = zeros({31, 65}, Options(kF64, kGpu));
    dst.copy_(g.transpose(0, 1));
    check_same(dst, x.transpose(0, 1).to(kF64), "copy_ with a dtype change", 0);
    Tensor f = empty({17, 3}, Options(kBF16, kGpu));
    f.fill_(1.5);
    check_same(f, full({17, 3}, 1.5, Options(kBF16)), "fill_", 0);
    ct::check_error([&] { dst.copy_(x.transpose(0, 1)); }, {"copy_", "cpu", "cuda:0"});
  }

  TEST_CASE("reductions and softmax") {
    manual_seed(5);
    for (DType t : {kF32, kF64}) {
      CAPTURE(t);
      Tensor x = ct::rnd({23, 300, 7}, t, -4, 4, /*noncontig=*/true);
      Tensor g = gpu(x);
      for (int64_t d : {0, 1, 2}) {
        CAPTURE(d);
        check_same(g.sum({d}), x.sum({d}), "sum");
        check_same(amax(g, {d}), amax(x, {d}), "amax");
        check_same(logsumexp(g, {d}), logsumexp(x, {d}), "logsumexp");
        check_same(softmax(g, d), softmax(x, d), "softmax");
        check_same(log_softmax(g, d), log_softmax(x, d), "log_softmax");
        check_same(g.argmax(d), x.argmax(d), "argmax", 0);
        check_same(argmin(g, d), argmin(x, d), "argmin", 0);
      }
      check_same(g.sum(), x.sum(), "sum of all");
    }
    // NaN wins max and its index is the first NaN's; ties keep the first index
    Tensor v = tensor(std::vector<float>{1, 5, NAN, 5, NAN, 2}, {1, 6});
    check_same(gpu(v).argmax(1), v.argmax(1), "argmax with NaN", 0);
    Tensor w = tensor(std::vector<float>{1, 5, 3, 5}, {1, 4});
    check_same(gpu(w).argmax(1), w.argmax(1), "argmax tie", 0);
    Tensor ints = ct::rnd({40, 50}, kF64, -100, 100).to(kI64);
    check_same(gpu(ints).sum({1}), ints.sum({1}), "integer sum", 0);
    CHECK(has_nonfinite(gpu(v)));
    CHECK(!has_nonfinite(gpu(w)));
  }

  TEST_CASE("matmul through cuBLAS: transposed operands and broadcast batches") {
    manual_seed(6);
    for (DType t : {kF32, kF64}) {
      CAPTURE(t);
      Tensor a = ct::rnd({3, 33, 65}, t), b = ct::rnd({65, 17}, t);
      check_same(matmul(gpu(a), gpu(b)), matmul(a, b), "batched @ broadcast matrix");
      Tensor at = ct::rnd({3, 65, 33}, t).transpose(1, 2), bt = ct::rnd({3, 17, 65}, t);
      check_same(matmul(gpu(at), gpu(bt).transpose(1, 2)), matmul(at, bt.transpose(1, 2)),
                 "both transposed");
      Tensor s = ct::rnd({65, 33}, t, -2, 2, /*noncontig=*/true).narrow(0, 0, 64);
      check_same(matmul(gpu(s).narrow(1, 0, 32), gpu(b).narrow(0, 0, 32)),
                 matmul(s.narrow(1, 0, 32), b.narrow(0, 0, 32)), "strided slices");
    }
    ct::check_error(
        [] {
          matmul(gpu(ones({2, 2}, kI64)), gpu(ones({2, 2}, kI64)));
        },
        {"bmm", "cuda"});
  }

  TEST_CASE("gradients on the GPU equal the CPU's") {
    manual_seed(7);
    Tensor x = ct::rnd({16, 24}, kF64), w = ct::rnd({24, 10}, kF64), tgt = ct::rnd({16, 10}, kF64);
    auto loss = [&](const Tensor& xx, const Tensor& ww, const Tensor& tt) {
      Tensor h = tanh(matmul(xx, ww)) * 2.0 + sigmoid(xx.sum({1}, true));
      return (log_softmax(h, 1) * softmax(tt, 1)).sum() + square(amax(h, {0})).sum();
    };
    Tensor xc = x.detach().requires_grad_(), wc = w.detach().requires_grad_();
    loss(xc, wc, tgt).backward();
    Tensor xg = gpu(x).detach().requires_grad_(), wg = gpu(w).detach().requires_grad_();
    loss(xg, wg, gpu(tgt)).backward();
    check_same(xg.grad(), xc.grad(), "dx");
    check_same(wg.grad(), wc.grad(), "dw");
    // the gradient of to(cuda) goes back to the cpu
    Tensor leaf = x.detach().requires_grad_();
    (leaf.to(kGpu) * 3.0).sum().backward();
    CHECK(leaf.grad().device().is_cpu());
    ct::check_close(leaf.grad(), std::vector<double>(x.numel(), 3.0), 0, 0);
  }

  TEST_CASE("device mistakes are errors naming the devices") {
    Tensor a = ones({3}), g = ones({3}, Options(kF32, kGpu));
    ct::check_error([&] { add(a, g); }, {"add", "cpu", "cuda:0"});
    ct::check_error([&] { a.to(Device(kCUDA, 63)); }, {"cuda:63"});
  }

  TEST_CASE("indexing: embedding, index_select, index_add, gather, scatter_add, one_hot") {
    manual_seed(8);
    Tensor w = ct::rnd({50, 7}, kF32);
    Tensor ids = randint(0, 50, {6, 9});
    check_same(embedding(gpu(w), gpu(ids)), embedding(w, ids), "embedding", 0);
    Tensor idx = tensor(std::vector<int64_t>{3, 0, 3, 9, 3}, {5});
    Tensor x = ct::rnd({4, 10, 6}, kF64), src = ct::rnd({4, 5, 6}, kF64);
    check_same(index_select(gpu(x), 1, gpu(idx)), index_select(x, 1, idx), "index_select", 0);
    check_same(index_add(gpu(x), 1, gpu(idx), gpu(src), 0.5), index_add(x, 1, idx, src, 0.5),
               "index_add (duplicates)");
    Tensor gi = randint(0, 10, {4, 5, 6});
    check_same(gather(gpu(x), 1, gpu(gi)), gather(x, 1, gi), "gather", 0);
    check_same(scatter_add(gpu(x), 1, gpu(gi), gpu(src)), scatter_add(x, 1, gi, src),
               "scatter_add");
    Tensor ii = randint(-3, 3, {5, 6}).to(kI32);
    check_same(index_add(gpu(ii), 0, gpu(idx.narrow(0, 0, 2)), gpu(ii.narrow(0, 0, 2))),
               index_add(ii, 0, idx.narrow(0, 0, 2), ii.narrow(0, 0, 2)), "integer index_add");
    check_same(one_hot(gpu(ids), 50), one_hot(ids, 50), "one_hot", 0);
    // the embedding's gradient adds rows of repeated ids (index_add on the GPU)
    Tensor wc = w.detach().requires_grad_(), wg = gpu(w).detach().requires_grad_();
    Tensor g = ct::rnd({6, 9, 7}, kF32);
    (embedding(wc, ids) * g).sum().backward();
    (embedding(wg, gpu(ids)) * gpu(g)).sum().backward();
    check_same(wg.grad(), wc.grad(), "embedding gradient");
    // a bad index is an error naming the op and the value, as on the CPU
    Tensor bad = tensor(std::vector<int64_t>{1, 57}, {2});
    ct::check_error([&] { embedding(gpu(w), gpu(bad)); }, {"embedding", "57", "size 50"});
    ct::check_error([&] { one_hot(gpu(bad), 50); }, {"one_hot", "57"});
  }

  TEST_CASE("cumulative sums and products, forward and backward") {
    manual_seed(9);
    Tensor x = ct::rnd({5, 33, 4}, kF64, 0.5, 1.5, /*noncontig=*/true);
    for (int64_t d : {0, 1, 2}) {
      check_same(cumsum(gpu(x), d), cumsum(x, d), "cumsum");
      check_same(cumsum(gpu(x), d, /*reverse=*/true), cumsum(x, d, true), "reverse cumsum");
      check_same(cumprod(gpu(x), d), cumprod(x, d), "cumprod");
    }
    Tensor xc = x.detach().requires_grad_(), xg = gpu(x).detach().requires_grad_();
    (cumprod(xc, 1) * x).sum().backward();
    (cumprod(xg, 1) * gpu(x)).sum().backward();
    check_same(xg.grad(), xc.grad(), "cumprod gradient");
    Tensor ints = randint(-5, 5, {7, 11});
    check_same(cumsum(gpu(ints), 1), cumsum(ints, 1), "integer cumsum", 0);
  }

  TEST_CASE("random draws are the CPU's, element for element") {
    auto both = [](auto draw, const char* what, double rtol) {
      manual_seed(123);
      Tensor c = draw(Device(kCPU));
      manual_seed(123);
      Tensor g = draw(kGpu);
      check_same(g, c, what, rtol);
      // and the generator moved on by the same amount
      manual_seed(123);
      draw(Device(kCPU));
      const RngState a = get_rng_state();
      manual_seed(123);
      draw(kGpu);
      const RngState b = get_rng_state();
      CHECK(a.offset == b.offset);
    };
    both([](Device d) { return rand({1001, 3}, Options(kF32, d)); }, "rand", 0);
    both([](Device d) { return rand({77}, Options(kF64, d)); }, "rand f64", 0);
    both([](Device d) { return randint(-7, 90, {333}, Options(kI64, d)); }, "randint", 0);
    both([](Device d) { return randn({1001}, Options(kF64, d)); }, "randn f64", 1e-14);
    both([](Device d) { return randn({999}, Options(kF32, d)); }, "randn f32", 1e-6);
    both(
        [](Device d) {
          Tensor t = empty({513}, Options(kF32, d));
          bernoulli_(t, 0.3);
          return t;
        },
        "bernoulli_", 0);
    both(
        [](Device d) {
          Tensor x = ones({40, 31}, Options(kF32, d));
          return dropout(x, 0.25);
        },
        "dropout", 0);
  }

  TEST_CASE("grouped_mm: groups of rows, empty groups, and its gradients") {
    manual_seed(10);
    Tensor offsets = tensor(std::vector<int64_t>{0, 10, 10, 30, 37}, {5});
    Tensor g = ct::rnd({37, 9}, kF64);
    compare_with_grads(
        {ct::rnd({37, 16}, kF64), ct::rnd({4, 16, 9}, kF64)},
        [&](const TensorList& v, const std::function<Tensor(Tensor)>& on) {
          Tensor y = grouped_mm(v[0], v[1], offsets);
          (y * on(g)).sum().backward();
          return TensorList{y};
        },
        {"grouped_mm dx", "grouped_mm dw (the empty group's is zero)"}, -1, -1);
  }

  TEST_CASE("sort, argsort and topk: stable, NaN largest, any dim") {
    manual_seed(15);
    // whole numbers: many ties
    Tensor x = (ct::rnd({6, 70, 5}, kF32, -3, 3, /*noncontig=*/true) * 4.0).to(kI32).to(kF32);
    x.narrow(1, 3, 1).fill_(NAN);
    for (bool desc : {false, true})
      for (int64_t d : {1, 2}) {
        CAPTURE(desc);
        CAPTURE(d);
        auto [vc, ic] = sort(x, d, desc);
        auto [vg, ig] = sort(gpu(x), d, desc);
        check_same(vg, vc, "sort values", 0);
        check_same(ig, ic, "sort indices (ties keep their order)", 0);
        check_same(argsort(gpu(x), d, desc), argsort(x, d, desc), "argsort", 0);
        auto [tc, tic] = topk(x, 4, d, desc);
        auto [tg, tig] = topk(gpu(x), 4, d, desc);
        check_same(tg, tc, "topk values", 0);
        check_same(tig, tic, "topk indices", 0);
      }
    Tensor xi = randint(-5, 5, {3, 40});
    check_same(sort(gpu(xi), 1).second, sort(xi, 1).second, "integer sort", 0);
    // the gradient of topk scatters back to the chosen positions
    Tensor xc = ct::rnd({4, 30}, kF64).requires_grad_(), xg = gpu(xc.detach()).requires_grad_();
    (topk(xc, 3, 1).first * 2.0).sum().backward();
    (topk(xg, 3, 1).first * 2.0).sum().backward();
    check_same(xg.grad(), xc.grad(), "topk gradient", 0);
  }

  TEST_CASE("causal_conv1d with a window and silu, and its gradients") {
    manual_seed(11);
    for (DType t : {kF64, kF32}) {
      CAPTURE(t);
      Tensor dy = ct::rnd({3, 37, 10}, t);
      compare_with_grads(
          {ct::rnd({3, 37, 10}, t), ct::rnd({10, 4}, t), ct::rnd({10}, t), ct::rnd({3, 3, 10}, t)},
          [&](const TensorList& in, const std::function<Tensor(Tensor)>& on) {
            CausalConv1dOptions o;
            o.bias = in[2];
            o.initial_window = in[3];
            Tensor y = causal_conv1d(in[0], in[1], o).first;
            (y * on(dy)).sum().backward();
            return TensorList{y};
          },
          {"dx", "dw", "dbias", "dwindow"}, -1, -1);
    }
  }

  TEST_CASE("selective_scan and ssd_scan, every option, and every gradient") {
    manual_seed(12);
    for (DType t : {kF64, kF32}) {
      CAPTURE(t);
      const double out_tol = t == kF32 ? 2e-5 : -1, grad_tol = t == kF32 ? 1e-4 : 1e-10;
      // Mamba-1: dim 12 in 2 groups, N 40 (two states per lane), L 150 (three checkpoints)
      {
        const int64_t Bt = 2, L = 150, D = 12, N = 40, G = 2;
        Tensor dy = ct::rnd({Bt, L, D}, t), dfin = ct::rnd({Bt, D, N}, t);
        compare_with_grads(
            {ct::rnd({Bt, L, D}, t), ct::rnd({Bt, L, D}, t, -3, 1), -ct::rnd({D, N}, t, 0.2, 2),
             ct::rnd({Bt, L, G, N}, t), ct::rnd({Bt, L, G, N}, t), ct::rnd({D}, t),
             ct::rnd({Bt, L, D}, t), ct::rnd({D}, t, -1, 1), ct::rnd({Bt, D, N}, t)},
            [&](const TensorList& v, const std::function<Tensor(Tensor)>& on) {
              const SelectiveScanOptions o = ct::selective_options(v);
              auto [y, fin] = selective_scan(v[0], v[1], v[2], v[3], v[4], o);
              ((y * on(dy)).sum() + (fin * on(dfin)).sum()).backward();
              return TensorList{y, fin};
            },
            {"du", "ddelta", "dA", "dB", "dC", "dD", "dz", "ddelta_bias", "dinit"}, out_tol,
            grad_tol);
      }
      // Mamba-2: 4 heads of 8 in 2 groups, N 64, L 100
      {
        const int64_t Bt = 2, L = 100, H = 4, P = 8, N = 64, G = 2;
        Tensor dy = ct::rnd({Bt, L, H, P}, t), dfin = ct::rnd({Bt, H, P, N}, t);
        compare_with_grads(
            {ct::rnd({Bt, L, H, P}, t), ct::rnd({Bt, L, H}, t, -3, 1), -ct::rnd({H}, t, 0.2, 2),
             ct::rnd({Bt, L, G, N}, t), ct::rnd({Bt, L, G, N}, t), ct::rnd({H}, t),
             ct::rnd({Bt, L, H, P}, t), ct::rnd({H}, t, -1, 1), ct::rnd({Bt, H, P, N}, t)},
            [&](const TensorList& v, const std::function<Tensor(Tensor)>& on) {
              const SsdScanOptions o = ct::ssd_options(v);
              auto [y, fin] = ssd_scan(v[0], v[1], v[2], v[3], v[4], 16, o);
              ((y * on(dy)).sum() + (fin * on(dfin)).sum()).backward();
              return TensorList{y, fin};
            },
            {"dx", "ddt", "dA", "dB", "dC", "dD", "dz", "ddt_bias", "dinit"}, out_tol, grad_tol);
      }
    }
  }

  TEST_CASE("ssd_scan's chunked kernels: chunk edges, tiles, optional inputs, every gradient") {
    // f32 takes the chunked kernels (ssd_chunked.cuh; the cuda.emu suite runs the same source on
    // the CPU): 64-step chunks, products in 64 x 64 tiles of headdim and N.
    for (const char* simt : {"0", "1"})  // the tensor cores' 3xTF32, then float32 FMAs
      for (const ct::SsdCase& k : ct::ssd_chunked_cases(true)) {
        manual_seed(16);
        setenv("COIL_SSD_SIMT", simt, 1);
        CAPTURE(simt);
        CAPTURE(k.L);
        CAPTURE(k.P);
        CAPTURE(k.N);
        const DType t = kF32;
        TensorList in = ct::ssd_case_inputs(k, t);
        std::vector<size_t> used;
        TensorList leaves;
        std::vector<std::string> names;
        const char* all[] = {"dx", "ddt", "dA", "dB", "dC", "dD", "dz", "ddt_bias", "dinit"};
        for (size_t i = 0; i < in.size(); ++i)
          if (in[i].defined()) {
            used.push_back(i);
            leaves.push_back(in[i]);
            names.push_back(all[i]);
          }
        Tensor dy = ct::rnd({k.Bt, k.L, k.H, k.P}, t), dfin = ct::rnd({k.Bt, k.H, k.P, k.N}, t);
        compare_with_grads(
            leaves,
            [&](const TensorList& v, const std::function<Tensor(Tensor)>& on) {
              TensorList w(in.size());
              for (size_t i = 0; i < used.size(); ++i) w[used[i]] = v[i];
              const SsdScanOptions o = ct::ssd_options(w, k.softplus);
              auto [y, fin] = ssd_scan(w[0], w[1], w[2], w[3], w[4], 64, o);
              Tensor loss = (y * on(dy)).sum();
              if (k.dfin) loss = loss + (fin * on(dfin)).sum();
              loss.backward();
              return TensorList{y, fin};
            },
            names, 2e-5, 1e-4);
      }
    unsetenv("COIL_SSD_SIMT");
  }

  TEST_CASE("ssd_scan's chunked backward recomputes the states a forward did not keep") {
    const OpInfo* op = find_op("ssd_scan");
    REQUIRE(op);
    auto kernel = reinterpret_cast<SsdScanKernel>(op->kernel(kCUDA));
    REQUIRE(op->has_kernel(kCUDA));
    manual_seed(17);
    SsdScanInputs in;
    in.x = gpu(ct::rnd({2, 150, 2, 16}, kF32));
    in.dt = gpu(ct::rnd({2, 150, 2}, kF32, -2, 1));
    in.A = gpu(ct::rnd({2}, kF32, -1.5, -0.1));
    in.B = gpu(ct::rnd({2, 150, 1, 8}, kF32));
    in.C = gpu(ct::rnd({2, 150, 1, 8}, kF32));
    in.D = gpu(ct::rnd({2}, kF32));
    in.z = gpu(ct::rnd({2, 150, 2, 16}, kF32));
    in.dt_bias = gpu(ct::rnd({2}, kF32));
    in.initial_state = gpu(ct::rnd({2, 2, 16, 8}, kF32));
    in.dt_softplus = true;
    const Options go(kF32, kGpu);
    SsdScanForward f;
    f.y = empty(in.x.sizes(), go);
    f.y_pre = empty(in.x.sizes(), go);
    f.keep_states = true;
    kernel(in, &f, nullptr);
    REQUIRE(f.states.defined());
    const Tensor dy = gpu(ct::rnd(in.x.sizes(), kF32)), dfin = gpu(ct::rnd({2, 2, 16, 8}, kF32));
    std::vector<Tensor> got[2];
    for (int keep = 0; keep < 2; ++keep) {
      SsdScanBackward b;
      b.y_pre = f.y_pre;
      if (keep) b.states = f.states;
      for (Tensor* g : {&b.dx, &b.dz}) *g = empty(in.x.sizes(), go);
      b.ddt = empty(in.dt.sizes(), go);
      for (Tensor* g : {&b.dA, &b.dD, &b.ddt_bias}) *g = empty({2}, go);
      b.dB = empty(in.B.sizes(), go);
      b.dC = empty(in.C.sizes(), go);
      b.dinitial_state = empty({2, 2, 16, 8}, go);
      b.dy = dy;
      b.dfinal_state = dfin;
      kernel(in, nullptr, &b);
      for (const Tensor& g : {b.dx, b.dz, b.dinitial_state, b.ddt, b.dB, b.dC})
        got[keep].push_back(g.to(Device(kCPU)));
    }
    // the states are the same computation both times: dx, dz and dinit are equal to the bit; ddt,
    // dB and dC sum with atomics, whose order (and last bits) may differ
    for (size_t i = 0; i < got[0].size(); ++i) {
      CAPTURE(i);
      if (i < 3)
        CHECK(ct::vals(got[0][i]) == ct::vals(got[1][i]));
      else
        ct::check_close(got[1][i], ct::vals(got[0][i]), 1e-6, 1e-6);
    }
  }

  TEST_CASE("selective_scan's fast kernels: chunk edges, groups, optional inputs, every gradient") {
    // The fast path takes f32 with channels in blocks of 32 inside a group and N <= 32 (launch.h);
    // its forward chunk is 80 steps, its backward's 64. The f64 runs take the plain kernels.
    struct Case {
      int64_t Bt, L, D, N, G;
      bool d, z, bias, h0, dfin, softplus, bc3;  // bc3: B and C as (batch, L, N)
    };
    const std::vector<Case> cases = {
        {2, 150, 64, 16, 1, true, true, true, true, true, true, false},
        {1, 1, 32, 16, 1, true, true, true, true, true, true, true},
        {2, 64, 64, 5, 2, true, true, true, true, true, true, false},
        {1, 63, 32, 16, 1, false, false, false, false, false, false, true},
        {1, 65, 32, 3, 1, false, false, false, true, false, true, false},
        {2, 200, 64, 16, 2, false, true, false, false, true, false, false},
        {1, 257, 96, 32, 3, true, false, true, true, true, true, false},
        {1, 160, 32, 16, 1, true, true, true, false, true, true, true},
        {2, 81, 64, 16, 1, true, true, false, true, false, true, true},
    };
    manual_seed(15);
    for (DType t : {kF32, kF64}) {
      CAPTURE(t);
      const double out_tol = t == kF32 ? 2e-5 : -1, grad_tol = t == kF32 ? 1e-4 : 1e-10;
      for (const Case& k : cases) {
        CAPTURE(k.L);
        CAPTURE(k.D);
        CAPTURE(k.N);
        CAPTURE(k.G);
        const Shape bc = k.bc3 ? Shape{k.Bt, k.L, k.N} : Shape{k.Bt, k.L, k.G, k.N};
        // without softplus, delta stays positive so the states do not grow
        TensorList in = {ct::rnd({k.Bt, k.L, k.D}, t),
                         k.softplus ? ct::rnd({k.Bt, k.L, k.D}, t, -3, 1)
                                    : ct::rnd({k.Bt, k.L, k.D}, t, 0.01, 1),
                         -ct::rnd({k.D, k.N}, t, 0.2, 2), ct::rnd(bc, t), ct::rnd(bc, t)};
        std::vector<std::string> names = {"du", "ddelta", "dA", "dB", "dC"};
        auto add = [&](bool on, Tensor v, const char* name) {
          if (!on) return -1;
          in.push_back(v);
          names.emplace_back(name);
          return static_cast<int>(in.size()) - 1;
        };
        const int iD = add(k.d, ct::rnd({k.D}, t), "dD");
        const int iz = add(k.z, ct::rnd({k.Bt, k.L, k.D}, t), "dz");
        const int ib = add(k.bias, ct::rnd({k.D}, t, -1, 1), "ddelta_bias");
        const int ih = add(k.h0, ct::rnd({k.Bt, k.D, k.N}, t), "dinit");
        Tensor dy = ct::rnd({k.Bt, k.L, k.D}, t), dfin = ct::rnd({k.Bt, k.D, k.N}, t);
        compare_with_grads(
            in,
            [&](const TensorList& v, const std::function<Tensor(Tensor)>& on) {
              SelectiveScanOptions o;
              if (iD >= 0) o.D = v[iD];
              if (iz >= 0) o.z = v[iz];
              if (ib >= 0) o.delta_bias = v[ib];
              if (ih >= 0) o.initial_state = v[ih];
              o.delta_softplus = k.softplus;
              o.return_final_state = true;
              auto [y, fin] = selective_scan(v[0], v[1], v[2], v[3], v[4], o);
              Tensor loss = (y * on(dy)).sum();
              if (k.dfin) loss = loss + (fin * on(dfin)).sum();
              loss.backward();
              return TensorList{y, fin};
            },
            names, out_tol, grad_tol);
      }
    }
    // Without a recorded forward (no input needs grad) there are no checkpoints: the forward
    // alone, and its final state, at a shape of the fast path.
    Tensor u = ct::rnd({2, 150, 64}), delta = ct::rnd({2, 150, 64}, kF32, -3, 1);
    Tensor A = -ct::rnd({64, 16}, kF32, 0.2, 2), B = ct::rnd({2, 150, 16}),
           C = ct::rnd({2, 150, 16});
    SelectiveScanOptions o;
    o.delta_softplus = true;
    o.return_final_state = true;
    auto [yc, fc] = selective_scan(u, delta, A, B, C, o);
    auto [yg, fg] = selective_scan(gpu(u), gpu(delta), gpu(A), gpu(B), gpu(C), o);
    check_same(yg, yc, "y without grad", 2e-5);
    check_same(fg, fc, "final state without grad", 2e-5);
  }

  TEST_CASE("streams and events: work on a side stream, ordering by events, timing") {
    manual_seed(18);
    const Tensor a = ct::rnd({512, 512}), b = ct::rnd({512, 512});
    const Tensor ref = matmul(a, b);
    const Stream main = Stream::current(kGpu);
    CHECK(main == Stream::default_stream(kGpu));
    const Stream side = Stream::create(kGpu);
    CHECK(side != main);
    Tensor ag = gpu(a), bg = gpu(b), y;
    Event start(kGpu, true), done(kGpu, true);
    {
      StreamGuard g(side);
      CHECK(Stream::current(kGpu) == side);
      start.record();
      y = matmul(ag, bg);
      for (int i = 0; i < 20; ++i) y = y * 0.5 + matmul(ag, bg) * 0.5;  // the same values
      done.record();
    }
    CHECK(Stream::current(kGpu) == main);
    main.wait(done);  // main's work after this waits for y
    Tensor z = y + 0.0;
    check_same(z, ref, "matmul on a side stream", 1e-5);
    done.synchronize();
    CHECK(done.query());
    CHECK(side.query());
    CHECK(start.elapsed_ms(done) > 0.0f);
    side.synchronize();
    // a tensor of the main stream read on the side one: record_stream keeps its block from
    // being handed out again before the side stream's reads are done
    {
      Tensor big = gpu(ct::rnd({2048, 2048}));
      Tensor want = matmul(big, big).to(Device(kCPU));
      Tensor got;
      {
        StreamGuard g(side);
        got = matmul(big, big);
        big.record_stream(side);
      }
      big = Tensor();  // freed while the side stream may still read it
      Tensor other = gpu(zeros({2048, 2048})) + 1.0;  // main-stream work that may want the block
      side.synchronize();
      check_same(got, want, "record_stream", 1e-5);
    }
    // an event made without timing cannot time
    Event plain(kGpu);
    plain.record(side);
    CHECK_THROWS_WITH_AS(plain.elapsed_ms(done), doctest::Contains("timing"), Error);
  }

  TEST_CASE("process groups take CUDA tensors, staged through the host for MPI") {
    // a world of one here (no mpirun); dist/nccl's group keeps them on the GPU (nccl_check)
    manual_seed(20);
    dist::GroupPtr w = dist::world();
    const Tensor v = ct::rnd({6, 3});
    Tensor x = gpu(v);
    w->all_reduce(x, dist::ReduceOp::kAvg)->wait();
    CHECK(x.device() == kGpu);
    CHECK(ct::vals(x.to(Device(kCPU))) == ct::vals(v));
    Tensor h = gpu(v).to(kBF16).transpose(0, 1);
    w->all_reduce(h)->wait();
    CHECK(h.device() == kGpu);
    CHECK(ct::vals(h.to(Device(kCPU))) == ct::vals(v.to(kBF16).transpose(0, 1)));
    Tensor out = gpu(zeros({6, 3}));
    w->all_gather(out, gpu(v))->wait();
    CHECK(ct::vals(out.to(Device(kCPU))) == ct::vals(v));
    Tensor rs = gpu(zeros({6, 3}));
    w->reduce_scatter(rs, gpu(v))->wait();
    CHECK(ct::vals(rs.to(Device(kCPU))) == ct::vals(v));
    Tensor b = gpu(v);
    w->broadcast(b, 0)->wait();
    CHECK(ct::vals(b.to(Device(kCPU))) == ct::vals(v));
  }

  TEST_CASE("pinned memory: pin_memory, non-blocking copies both ways") {
    manual_seed(19);
    const Tensor x = ct::rnd({1000, 37});
    CHECK_FALSE(x.is_pinned());
    const Tensor p = x.pin_memory();
    CHECK(p.is_pinned());
    CHECK(p.device().is_cpu());
    CHECK(ct::vals(p) == ct::vals(x));
    Tensor g = p.to(kGpu, /*non_blocking=*/true);
    Tensor back = (g * 2.0).to(Device(kCPU), /*non_blocking=*/true);
    CHECK(back.is_pinned());
    synchronize(kGpu);
    CHECK(ct::vals(back) == ct::vals(x * 2.0));
    // a pageable source takes the waiting copy
    CHECK(ct::vals(x.to(kGpu, true).to(Device(kCPU))) == ct::vals(x));
  }

  TEST_CASE("a memory cap on the GPU: an allocation past it is an error that loses nothing") {
    struct Uncap {
      ~Uncap() { set_memory_cap(kGpu, 0); }
    } uncap;
    empty_cache(kGpu);
    const AllocatorStats before = memory_stats(kGpu);
    set_memory_cap(kGpu, before.bytes_in_use + (64 << 20));
    CHECK(memory_cap(kGpu) == before.bytes_in_use + (64 << 20));
    Tensor a = empty({8 << 20}, Options(kF32, kGpu));  // 32 MiB: under the cap
    ct::check_error([] { (void)empty({12 << 20}, Options(kF32, kGpu)); },
                    {"50331648 bytes on cuda:0", "memory cap"});
    CHECK(memory_stats(kGpu).bytes_in_use == before.bytes_in_use + (32 << 20));
    a = Tensor();
    Tensor b = empty({12 << 20}, Options(kF32, kGpu));  // fits once a's block is given back
    CHECK(b.numel() == (12 << 20));
    set_memory_cap(kGpu, 0);
    // More than the device has: cudaMalloc's failure is a coil::Error, not an abort.
    ct::check_error([] { (void)empty({int64_t(1) << 40}, Options(kF32, kGpu)); },
                    {"out of memory", "cuda:0"});
  }

  TEST_CASE("bf16 and f16 GEMMs on the tensor cores, TF32 when allowed") {
    manual_seed(16);
    Tensor a = ct::rnd({3, 70, 130}), b = ct::rnd({130, 90});
    const Tensor ref = matmul(a, b);  // float32 on the CPU
    for (DType t : {kBF16, kF16}) {
      CAPTURE(t);
      // the CPU widens the same rounded inputs to float32: the products agree to the output's
      // rounding (bf16: 8 bits of mantissa)
      const Tensor got = matmul(gpu(a.to(t)), gpu(b.to(t)));
      check_same(got, matmul(a.to(t), b.to(t)), "16-bit matmul", 1e-2);
      CHECK(ct::rel_error(got.to(Device(kCPU)).to(kF32), ref) < 1e-2);
    }
    CHECK(!allow_tf32());
    set_allow_tf32(true);
    const Tensor tf = matmul(gpu(a), gpu(b));
    set_allow_tf32(false);
    const double e = ct::rel_error(tf.to(Device(kCPU)), ref);
    MESSAGE("tf32 matmul: normwise error " << e);
    CHECK(e < 3e-4);
    check_same(matmul(gpu(a), gpu(b)), ref, "float32 again once tf32 is off");
  }

  TEST_CASE("autocast on the GPU: a Mamba-2 LM's loss and gradients near the CPU's") {
    nn::MambaConfig c;
    c.model_type = "mamba2";
    c.vocab_size = 64;
    c.hidden_size = 64;
    c.num_hidden_layers = 2;
    c.state_size = 16;
    c.num_heads = 8;
    c.head_dim = 16;
    c.n_groups = 1;
    c.chunk_size = 16;
    manual_seed(17);
    auto cpu_model = std::make_shared<nn::MambaLM>(c);
    manual_seed(17);
    auto gpu_model = std::make_shared<nn::MambaLM>(c);
    gpu_model->to(kGpu);
    Tensor ids = randint(0, 64, {4, 49});
    auto loss_of = [&](nn::MambaLM& m, const Tensor& x) {
      AutocastGuard autocast(kBF16);
      Tensor logits = m.forward(x.narrow(1, 0, 48));
      CHECK(logits.dtype() == kBF16);
      return cross_entropy(logits.reshape({-1, 64}), x.narrow(1, 1, 48).reshape({-1}));
    };
    Tensor lc = loss_of(*cpu_model, ids), lg = loss_of(*gpu_model, gpu(ids));
    lc.backward();
    lg.backward();
    CHECK(std::fabs(lc.item<double>() - lg.item<double>()) < 1e-2 * lc.item<double>());
    const auto pc = cpu_model->parameters(), pg = gpu_model->parameters();
    for (size_t i = 0; i < pc.size(); ++i) {
      REQUIRE(pg[i].grad().dtype() == kF32);
      CHECK(ct::rel_error(pg[i].grad().to(Device(kCPU)), pc[i].grad()) < 5e-2);
    }
  }

  TEST_CASE("20 training steps of a Mamba and a Mamba-2 LM on the GPU give the CPU's losses") {
    for (const std::string mixer : {"mamba", "mamba2"}) {
      CAPTURE(mixer);
      nn::MambaConfig c;
      c.model_type = mixer;
      c.vocab_size = 64;
      c.hidden_size = 64;
      c.num_hidden_layers = 2;
      c.state_size = 16;
      if (mixer == "mamba2") {
        c.num_heads = 8;
        c.head_dim = 16;
        c.n_groups = 1;
        c.chunk_size = 16;
      }
      c.pad_vocab_size_multiple = 1;
      manual_seed(13);
      auto cpu_model = std::make_shared<nn::MambaLM>(c);
      manual_seed(13);
      auto gpu_model = std::make_shared<nn::MambaLM>(c);
      gpu_model->to(kGpu);
      optim::AdamW oc(cpu_model->parameters()), og(gpu_model->parameters());
      manual_seed(14);
      double worst = 0;
      for (int step = 0; step < 20; ++step) {
        Tensor ids = randint(0, 64, {4, 48});
        auto loss_of = [&](nn::MambaLM& m, const Tensor& x) {
          Tensor logits = m.forward(x);
          return cross_entropy(logits.narrow(1, 0, 47).reshape({-1, 64}),
                               x.narrow(1, 1, 47).reshape({-1}));
        };
        oc.zero_grad();
        og.zero_grad();
        Tensor lc = loss_of(*cpu_model, ids), lg = loss_of(*gpu_model, gpu(ids));
        lc.backward();
        lg.backward();
        optim::clip_grad_norm_(cpu_model->parameters(), 1.0);
        optim::clip_grad_norm_(gpu_model->parameters(), 1.0);
        oc.step();
        og.step();
        const double a = lc.item<double>(), b = lg.item<double>();
        worst = std::max(worst, std::fabs(a - b) / std::fabs(a));
        CHECK_MESSAGE(std::fabs(a - b) <= 1e-4 * std::fabs(a),
                      "step " << step << ": cpu " << a << ", gpu " << b);
      }
      MESSAGE(mixer << ": largest relative loss difference over 20 steps " << worst);
    }
  }
}
