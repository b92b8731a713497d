#include "test_util.h"

using namespace coil;

TEST_SUITE("ops.view") {
  TEST_CASE("views share storage and follow strides") {
    Tensor x = arange(24, kF32).view({2, 3, 4});
    CHECK(x.is_contiguous());
    Tensor p = x.permute({2, 0, 1});
    CHECK(p.sizes() == Shape{4, 2, 3});
    CHECK(!p.is_contiguous());
    CHECK(p.impl().storage == x.impl().storage);
    // element (i, j, k) of p is x[j][k][i]
    std::vector<double> pv = ct::vals(p);
    for (int64_t i = 0; i < 24; ++i) {
      Shape idx = ct::unravel(i, {4, 2, 3});
      CHECK(pv[i] == (idx[1] * 12 + idx[2] * 4 + idx[0]));
    }
    Tensor s = x.slice(2, 1, std::nullopt, 2);  // columns 1, 3
    ct::check_close(s, {1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23}, 0, 0);
    ct::check_close(x.slice(1, -2), {4, 5, 6, 7, 8, 9, 10, 11, 16, 17, 18, 19, 20, 21, 22, 23}, 0,
                    0);
    ct::check_close(x.select(1, -1).select(0, 1), {20, 21, 22, 23}, 0, 0);
    ct::check_close(x.narrow(2, 1, 2).select(0, 0).select(0, 0), {1, 2}, 0, 0);
    Tensor e = tensor(std::vector<float>{1, 2, 3}, {3, 1}).expand({2, 3, 4});
    CHECK(e.strides()[0] == 0);
    CHECK(ct::vals(e)[23] == 3);
    CHECK(x.unsqueeze(0).sizes() == Shape{1, 2, 3, 4});
    CHECK(x.unsqueeze(-1).sizes() == Shape{2, 3, 4, 1});
    CHECK(x.unsqueeze(3).squeeze(3).sizes() == Shape{2, 3, 4});
    CHECK(ones({1, 2, 1}).squeeze().sizes() == Shape{2});
    CHECK(x.flatten(1).sizes() == Shape{2, 12});
    CHECK(x.flatten().sizes() == Shape{24});
    CHECK(x.view({-1, 6}).sizes() == Shape{4, 6});
    CHECK(ones({}).dim() == 0);
    CHECK(ones({}).numel() == 1);
    CHECK(ones({}).flatten().sizes() == Shape{1});
    // writes through a view reach the base
    NoGradGuard g;
    x.select(0, 0).fill_(-1);
    CHECK(ct::vals(x)[5] == -1);
    CHECK(ct::vals(x)[12] == 12);
  }

  TEST_CASE("reshape copies only when it must; view refuses") {
    Tensor x = arange(12, kF32).view({3, 4});
    Tensor t = x.t();
    CHECK(t.reshape({12}).impl().storage != x.impl().storage);
    ct::check_close(t.reshape({12}), {0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11}, 0, 0);
    CHECK(x.reshape({2, 6}).impl().storage == x.impl().storage);
    ct::check_error([&] { t.view({12}); }, {"view", "[12]", "reshape"});
    // merging a sliced dim with a contiguous one is still a view when strides allow
    Tensor y = arange(24, kF32).view({4, 6}).slice(0, 0, 4, 2);  // rows 0, 2
    CHECK(y.view({2, 2, 3}).impl().storage == y.impl().storage);
  }

  TEST_CASE("view gradients") {
    for (const char* n : {"view", "reshape", "permute", "slice", "select", "expand", "unsqueeze"}) {
      CAPTURE(n);
      GradcheckCase c = op_info(n).gradcheck();
      ct::check_gradcheck(c.fn, c.inputs);
    }
    Tensor x = ct::rnd({3, 4, 5}, kF64).requires_grad_();
    ct::check_gradcheck(
        [](const TensorList& v) {
          return v[0].transpose(0, 2).narrow(1, 1, 2).flatten(0, 1).squeeze() *
                 v[0].select(2, 0).sum();
        },
        {x});
  }

  TEST_CASE("bad views are errors") {
    Tensor x = ones({2, 3});
    ct::check_error([&] { x.view({4, -1}); }, {"view", "[4, -1]", "6"});
    ct::check_error([&] { x.view({-1, -1}); }, {"view", "-1"});
    ct::check_error([&] { x.permute({0, 0}); }, {"permute", "repeats"});
    ct::check_error([&] { x.permute({0}); }, {"permute", "[0]"});
    ct::check_error([&] { x.select(1, 3); }, {"select", "index 3", "size 3"});
    ct::check_error([&] { x.narrow(0, 1, 2); }, {"narrow", "length 2", "size 2"});
    ct::check_error([&] { x.slice(0, 0, 2, 0); }, {"slice", "step", "0"});
    ct::check_error([&] { x.expand({3, 3}); }, {"expand", "size 2", "[3, 3]"});
    ct::check_error([&] { x.transpose(0, 2); }, {"transpose", "dim 2"});
    ct::check_error([&] { x.view({2, 3}).unsqueeze(4); }, {"unsqueeze", "dim 4"});
  }
}
