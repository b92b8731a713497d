// Ops with a sharding rule but no gradient (comparisons, logical ops, index outputs): every
// 1-d placement combination of their inputs gives, through full_tensor, the single-process
// result. Runs at 1, 2 and 4 ranks.
#include <functional>

#include "../test_util.h"

using namespace coil;
namespace dist = coil::dist;

namespace {

struct Case {
  const char* op;
  std::vector<Tensor> inputs;
  std::function<Tensor(const TensorList&)> fn;
};

Tensor grid(const Shape& s, double scale, double shift) {
  Tensor x = zeros(s, Options(kF64));
  for (int64_t i = 0; i < x.numel(); ++i)
    x.data_ptr<double>()[i] = static_cast<double>((i * 7) % 11) * scale + shift;
  return x;
}

std::vector<Case> cases() {
  Tensor a = grid({4, 5}, 0.5, -2), b = grid({5}, 0.25, -1);
  std::vector<Case> c;
  auto bin = [&](const char* op, Tensor (*f)(const Tensor&, const Tensor&)) {
    c.push_back({op, {a, b}, [f](const TensorList& x) { return f(x[0], x[1]); }});
  };
  bin("eq", eq);
  bin("ne", ne);
  bin("lt", lt);
  bin("le", le);
  bin("gt", gt);
  bin("ge", ge);
  c.push_back({"logical_and", {a > 0.0, b > 0.0}, [](const TensorList& x) {
                 return logical_and(x[0], x[1]);
               }});
  c.push_back({"logical_or", {a > 0.0, b > 0.0}, [](const TensorList& x) {
                 return logical_or(x[0], x[1]);
               }});
  c.push_back({"logical_not", {a > 0.0}, [](const TensorList& x) { return logical_not(x[0]); }});
  c.push_back({"isfinite", {a}, [](const TensorList& x) { return isfinite(x[0]); }});
  c.push_back({"argsort", {a}, [](const TensorList& x) { return argsort(x[0], 1, false); }});
  c.push_back({"argmax dim", {a}, [](const TensorList& x) { return argmax(x[0], 1, false); }});
  c.push_back({"argmin dim", {a}, [](const TensorList& x) { return argmin(x[0], 0, true); }});
  c.push_back({"argmax all", {a}, [](const TensorList& x) { return argmax(x[0]); }});
  c.push_back({"topk indices", {a}, [](const TensorList& x) { return topk(x[0], 2, 1).second; }});
  Tensor ids = tensor(std::vector<int64_t>{1, 0, 3, 2, 2, 1}, {2, 3});
  c.push_back({"one_hot", {ids}, [](const TensorList& x) { return one_hot(x[0], 4); }});
  Tensor targets = tensor(std::vector<int64_t>{1, 0, 4, -100}, {4});
  for (const char* red : {"none", "sum", "mean"}) {
    const std::string r = red;
    c.push_back({"cross_entropy", {a, targets}, [r](const TensorList& x) {
                   return cross_entropy(x[0], x[1], -100, 0.0, r);
                 }});
  }
  return c;
}

}  // namespace

TEST_SUITE("dist") {
  TEST_CASE("sharding rules: ops without a gradient match the single-process result") {
    dist::DeviceMesh mesh = dist::DeviceMesh::world();
    for (const Case& c : cases()) {
      CAPTURE(c.op);
      const Tensor ref = c.fn(c.inputs);
      std::vector<std::vector<dist::Placement>> opts;
      size_t total = 1;
      for (const Tensor& x : c.inputs) {
        std::vector<dist::Placement> o = {dist::Replicate()};
        for (int64_t d = 0; d < x.dim(); ++d) o.push_back(dist::Shard(d));
        if (is_floating(x.dtype())) o.push_back(dist::Partial());
        opts.push_back(o);
        total *= o.size();
      }
      for (size_t k = 0; k < total; ++k) {
        size_t code = k;
        TensorList in;
        std::string desc;
        for (size_t i = 0; i < c.inputs.size(); ++i) {
          const dist::Placement p = opts[i][code % opts[i].size()];
          code /= opts[i].size();
          in.push_back(dist::distribute_tensor(c.inputs[i], mesh, {p}));
          desc += p.str() + " ";
        }
        CAPTURE(desc);
        Tensor out = dist::full_tensor(c.fn(in));
        REQUIRE(out.sizes() == ref.sizes());
        CHECK((out.to(kF64) - ref.to(kF64)).abs().sum().item<double>() == 0);
      }
    }
  }
}
