// The synthetic tasks of examples/: the batch generators, and a tiny selective-copying run that
// must learn (the full settings and their figures are in README.md).
#include "../../examples/synthetic_tasks.h"
#include "../test_util.h"

using namespace coil;

TEST_SUITE("examples.tasks") {
  TEST_CASE("selective copying batches: data tokens in order at the markers") {
    tasks::Batch b = tasks::selective_copying(3, 20, 4, 8, 7, 0);
    CHECK(b.inputs.sizes() == Shape{3, 24});
    auto in = to_vector<int64_t>(b.inputs), tg = to_vector<int64_t>(b.targets);
    for (int64_t r = 0; r < 3; ++r) {
      std::vector<int64_t> data;
      for (int64_t t = 0; t < 20; ++t) {
        int64_t v = in[r * 24 + t];
        CHECK(v >= 0);
        CHECK(v <= 6);
        if (v != 0) data.push_back(v);
        CHECK(tg[r * 24 + t] == -100);
      }
      REQUIRE(data.size() == 4);
      for (int64_t i = 0; i < 4; ++i) {
        CHECK(in[r * 24 + 20 + i] == 7);  // marker
        CHECK(tg[r * 24 + 20 + i] == data[i]);
      }
    }
    // Deterministic in (seed, index); another index differs.
    CHECK(to_vector<int64_t>(tasks::selective_copying(3, 20, 4, 8, 7, 0).inputs) == in);
    CHECK(to_vector<int64_t>(tasks::selective_copying(3, 20, 4, 8, 7, 1).inputs) != in);
  }

  TEST_CASE("induction heads batches: the token after the first trigger is the answer") {
    tasks::Batch b = tasks::induction_heads(4, 30, 16, 3, 2);
    auto in = to_vector<int64_t>(b.inputs), tg = to_vector<int64_t>(b.targets);
    for (int64_t r = 0; r < 4; ++r) {
      const int64_t* row = in.data() + r * 30;
      CHECK(row[29] == 0);
      int64_t first = -1, triggers = 0;
      for (int64_t t = 0; t < 30; ++t)
        if (row[t] == 0) {
          ++triggers;
          if (first < 0) first = t;
        }
      CHECK(triggers == 2);
      CHECK(tg[r * 30 + 29] == row[first + 1]);
      for (int64_t t = 0; t < 29; ++t) CHECK(tg[r * 30 + t] == -100);
    }
  }

  TEST_CASE("a tiny selective-copying run learns well above chance") {
    // vocab 8: 6 data tokens, chance 1/6. About 15 s on one core.
    manual_seed(0);
    nn::MambaLM model(tasks::task_model(8, true));
    tasks::TrainSettings s;
    s.steps = 400;
    s.warmup = 40;
    s.eval_every = 400;
    s.lr = 3e-3;
    auto curve = tasks::train(
        model, s, [](int64_t i) { return tasks::selective_copying(32, 32, 4, 8, 1, i); },
        [](int64_t i) { return tasks::selective_copying(32, 32, 4, 8, 2, i); }, false);
    MESSAGE("accuracy after 400 steps: " << curve.back().second);
    CHECK(curve.back().second > 0.6);
  }
}
