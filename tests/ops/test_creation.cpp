#include "test_util.h"

using namespace coil;

TEST_SUITE("ops.creation") {
  TEST_CASE("factories") {
    ct::check_close(zeros({2, 2}), {0, 0, 0, 0}, 0, 0);
    ct::check_close(full({3}, 2.5, kF64), {2.5, 2.5, 2.5}, 0, 0);
    CHECK(ones({2}, kBF16).dtype() == kBF16);
    ct::check_close(arange(5), {0, 1, 2, 3, 4}, 0, 0);
    CHECK(arange(5).dtype() == kI64);
    ct::check_close(arange(1, 2, 0.25), {1, 1.25, 1.5, 1.75}, 0, 0);
    CHECK(arange(1, 2, 0.25).dtype() == kF32);
    ct::check_close(arange(5, 0, -2), {5, 3, 1}, 0, 0);
    ct::check_close(linspace(0, 1, 5), {0, 0.25, 0.5, 0.75, 1}, 1e-7, 0);
    ct::check_close(eye(2), {1, 0, 0, 1}, 0, 0);
    CHECK(zeros({2}, Options(kF32).with_requires_grad()).requires_grad());
    ct::check_error([] { zeros({2, -1}); }, {"negative size", "[2, -1]"});
    ct::check_error([] { arange(0, 1, 0); }, {"arange", "step"});
    ct::check_error([] { randint(3, 3, {2}); }, {"randint", "low=3", "high=3"});
    ct::check_error([] { zeros({2}, Device(kCUDA)); }, {"cuda", "CUDA"});
  }

  TEST_CASE("seeded random numbers do not depend on the thread count") {
    manual_seed(123);
    set_num_threads(1);
    std::vector<double> a = ct::vals(randn({100001})), u1 = ct::vals(rand({5000}));
    manual_seed(123);
    set_num_threads(2);
    std::vector<double> b = ct::vals(randn({100001})), u2 = ct::vals(rand({5000}));
    CHECK(a == b);
    CHECK(u1 == u2);
    manual_seed(124);
    CHECK(ct::vals(randn({4})) != std::vector<double>(a.begin(), a.begin() + 4));
  }

  TEST_CASE("distributions have the right moments") {
    manual_seed(7);
    Tensor n = randn({200000}, kF64);
    CHECK(mean(n).item<double>() == doctest::Approx(0).epsilon(0.01).scale(1));
    CHECK(std::fabs(mean(n).item<double>()) < 0.01);
    CHECK(std::fabs(var(n).item<double>() - 1) < 0.02);
    Tensor u = rand({200000}, kF64);
    CHECK(std::fabs(mean(u).item<double>() - 0.5) < 0.005);
    CHECK(amax(u, {0}).item<double>() < 1.0);
    CHECK(-amax(-u, {0}).item<double>() >= 0.0);
    Tensor r = randint(-2, 3, {100000});
    CHECK(amax(r, {0}).item<int64_t>() == 2);
    CHECK(-amax(-r, {0}).item<int64_t>() == -2);
    Tensor t = empty({1000, 3}).t();  // non-contiguous in-place init
    normal_(t, 5, 0.1);
    CHECK(std::fabs(mean(t).item<float>() - 5) < 0.02);
    uniform_(t, -1, 1);
    CHECK(amax(abs(t), {0, 1}).item<float>() <= 1.0f);
  }
}

TEST_SUITE("ops.creation") {
  // A DTensor's random piece is drawn as a box of the global draw: these boxes start at odd
  // element indices (normal's pairs, dropout's groups of four are split) and in every dim.
  TEST_CASE("a draw piece holds the whole draw's values in its box") {
    const Shape global = {3, 5, 7};
    const std::vector<std::pair<Shape, Shape>> boxes = {
        {{0, 0, 0}, {3, 5, 7}}, {{1, 2, 1}, {2, 2, 3}}, {{0, 3, 0}, {3, 2, 7}},
        {{2, 0, 5}, {1, 5, 2}}, {{0, 1, 3}, {3, 3, 1}}, {{1, 0, 0}, {0, 5, 7}}};
    auto box_of = [](const Tensor& t, const Shape& off, const Shape& size) {
      Tensor b = t;
      for (int64_t d = 0; d < 3; ++d) b = b.narrow(d, off[d], size[d]);
      return b;
    };
    using Draw = std::function<Tensor(const Shape&)>;
    const Tensor x = randn(global, kF64);
    const std::vector<std::pair<const char*, Draw>> draws = {
        {"rand", [](const Shape& s) { return rand(s, kF64); }},
        {"randn", [](const Shape& s) { return randn(s, kF64); }},
        {"randn bf16", [](const Shape& s) { return randn(s, kBF16); }},
        {"randint", [](const Shape& s) { return randint(-3, 9, s); }},
        {"bernoulli_",
         [](const Shape& s) {
           Tensor t = zeros(s);
           return bernoulli_(t, 0.3);
         }},
        {"dropout", [&](const Shape& s) {
           // the input's box, so the piece is dropout's box too
           const DrawPiece* p = current_draw_piece();
           Tensor in = p ? box_of(x, p->offsets, s).contiguous() : x;
           return dropout(in, 0.4);
         }}};
    for (const auto& [name, draw] : draws) {
      CAPTURE(name);
      manual_seed(77);
      const Tensor whole = draw(global);
      const RngState after = get_rng_state();
      for (const auto& [off, size] : boxes) {
        CAPTURE(shape_str(off));
        manual_seed(77);
        Tensor piece;
        {
          DrawPieceScope scope(DrawPiece{global, off});
          piece = draw(size);
        }
        CHECK(get_rng_state().offset == after.offset);  // the generator moved as for the whole
        REQUIRE(piece.sizes() == size);
        CHECK(ct::vals(piece) == ct::vals(box_of(whole, off, size)));
      }
    }
  }
}
