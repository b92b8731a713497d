// Bad inputs across the library: each raises coil::Error whose message names the op and the
// offending values.
#include "test_util.h"

using namespace coil;

TEST_SUITE("errors") {
  TEST_CASE("streams, events and pinned memory name what is missing") {
    using coil::Device;
    CHECK_THROWS_WITH_AS(coil::Stream::create(Device(coil::kCPU)),
                         doctest::Contains("has no streams"), coil::Error);
    CHECK_THROWS_WITH_AS(coil::Event(Device(coil::kCPU)), doctest::Contains("has no streams"),
                         coil::Error);
    CHECK_THROWS_AS(coil::StreamGuard(coil::Stream()), coil::Error);
    const coil::Tensor x = coil::ones({3});
    CHECK_FALSE(x.is_pinned());
    CHECK(x.to(Device(coil::kCPU), true).is_same(x));
    if (coil::cuda_device_count() == 0) {
      CHECK_THROWS_WITH_AS(
          coil::Stream::create(Device(coil::kCUDA, 0)),
          doctest::Contains(coil::cuda_available() ? "does not exist" : "no CUDA backend"),
          coil::Error);
      CHECK_THROWS_WITH_AS(x.pin_memory(), doctest::Contains("pin_memory"), coil::Error);
    }
  }

  TEST_CASE("at least 30 different bad inputs, each named") {
    Tensor m23 = ones({2, 3}), m34 = ones({3, 4}), v3 = ones({3}),
           i3 = tensor(std::vector<int64_t>{0, 1, 5});
    struct Case {
      const char* what;
      std::function<void()> fn;
      std::vector<std::string> fragments;
    };
    std::vector<Case> cases = {
        {"broadcast", [&] { add(m23, ones({4})); }, {"add", "[2, 3]", "[4]"}},
        {"matmul inner", [&] { matmul(m23, m23); }, {"matmul", "[2, 3]", "3 vs 2"}},
        {"matmul 0-d", [&] { matmul(ones({}), v3); }, {"matmul", "at least 1 dim"}},
        {"linear in", [&] { linear(m23, m34); }, {"linear", "[2, 3]", "in_features 4"}},
        {"linear bias", [&] { linear(m23, m34.t(), ones({5})); }, {"linear", "bias", "[5]"}},
        {"bmm rank", [&] { bmm(m23, m34); }, {"bmm", "3-d", "[2, 3]"}},
        {"negative size", [&] { zeros({-1}); }, {"negative size", "[-1]"}},
        {"view size", [&] { m23.view({4}); }, {"view", "[4]", "6"}},
        {"view strides", [&] { m23.t().view({6}); }, {"view", "strides", "reshape"}},
        {"bad dim", [&] { sum(m23, {3}); }, {"sum", "dim 3", "2 dims"}},
        {"repeat dim",
         [&] {
           sum(m23, {0, -2});
         },
         {"sum", "repeats"}},
        {"permute",
         [&] {
           m23.permute({1, 1});
         },
         {"permute", "repeats"}},
        {"select index", [&] { m23.select(0, -3); }, {"select", "index -3", "size 2"}},
        {"narrow", [&] { m23.narrow(1, 2, 2); }, {"narrow", "start 2", "size 3"}},
        {"slice step", [&] { m23.slice(1, 0, 3, -1); }, {"slice", "step", "-1"}},
        {"expand",
         [&] {
           m23.expand({4, 3});
         },
         {"expand", "size 2", "[4, 3]"}},
        {"where dtype", [&] { where(m23, m23, m23); }, {"where", "bool", "float32"}},
        {"mean int", [&] { mean(i3); }, {"mean", "int64"}},
        {"empty max", [&] { max(ones({0})); }, {"max", "empty"}},
        {"item", [&] { m23.item<float>(); }, {"item", "6 elements"}},
        {"data_ptr", [&] { m23.data_ptr<int64_t>(); }, {"data_ptr", "float32", "int64"}},
        {"requires_grad int",
         [&] { ones({1}, kI32).requires_grad_(); },
         {"requires_grad_", "int32"}},
        {"cuda device", [&] { ones({1}, Device(kCUDA)); }, {"cuda", "CUDA"}},
        {"device parse", [&] { Device("tpu:0"); }, {"Device", "tpu:0"}},
        {"copy shape",
         [&] {
           Tensor t = zeros({2});
           t.copy_(v3);
         },
         {"copy_", "[3]", "[2]"}},
        {"int div",
         [&] {
           Tensor t = ones({2}, kI64);
           t.div_(ones({2}, kI64));
         },
         {"div", "float32", "int64"}},
        {"clamp order", [&] { clamp(v3, 2, 1); }, {"clamp", "min 2", "max 1"}},
        {"softplus beta", [&] { softplus(v3, -1); }, {"softplus", "beta", "-1"}},
        {"arange step", [&] { arange(0, 3, 0); }, {"arange", "step"}},
        {"randint range", [&] { randint(5, 1, {2}); }, {"randint", "low=5", "high=1"}},
        {"set threads", [&] { set_num_threads(-2); }, {"set_num_threads", "-2"}},
        {"cumsum dim", [&] { cumsum(m23, -3); }, {"cumsum", "dim -3"}},
        {"embedding index", [&] { embedding(m34, i3); }, {"embedding", "5", "3"}},
        {"index_select index", [&] { index_select(m23, 1, i3); }, {"index_select", "5", "3"}},
        {"gather dims", [&] { gather(m23, 1, ones({2}, kI64)); }, {"gather", "[2]", "[2, 3]"}},
        {"topk k", [&] { topk(v3, 4); }, {"topk", "k", "4", "3"}},
        {"cat shapes",
         [&] {
           cat({m23, m34}, 0);
         },
         {"cat", "[2, 3]", "[3, 4]"}},
        {"split sizes",
         [&] {
           split(m23, Shape{1, 2}, 0);
         },
         {"split", "[1, 2]", "2"}},
        {"softmax dim", [&] { softmax(m23, 2); }, {"softmax", "dim 2"}},
        {"cross_entropy target",
         [&] {
           cross_entropy(m23, tensor(std::vector<int64_t>{0, 3}));
         },
         {"cross_entropy", "3"}},
        {"cross_entropy shape",
         [&] { cross_entropy(m23, i3); },
         {"cross_entropy", "[3]", "[2, 3]"}},
        {"rms_norm weight", [&] { rms_norm(m23, ones({2})); }, {"rms_norm", "[2]", "3"}},
        {"dropout p", [&] { dropout(m23, 1.5); }, {"dropout", "1.5"}},
        {"anomaly op",
         [&] {
           autograd::DetectAnomalyGuard g;
           log(zeros({2}) - 1.0);
         },
         {"anomaly", "log", "NaN"}},
    };
    CHECK(cases.size() >= 30);
    for (auto& c : cases) {
      CAPTURE(c.what);
      ct::check_error(c.fn, c.fragments);
    }
  }
}
