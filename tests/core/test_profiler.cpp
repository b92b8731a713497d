// core/profiler.h: kernel calls timed per op and phase, nested calls counted once.
#include "test_util.h"

using namespace coil;

namespace {
const profiler::Entry* find(const std::vector<profiler::Entry>& es, const std::string& name,
                            bool backward) {
  for (const profiler::Entry& e : es)
    if (e.name == name && e.backward == backward) return &e;
  return nullptr;
}
}  // namespace

TEST_SUITE("core.tensor") {
  TEST_CASE("the profiler times kernel calls per op and phase") {
    profiler::reset();
    Tensor a = ones({64, 64}).requires_grad_();
    exp(a);  // off: not counted
    CHECK(profiler::entries().empty());
    profiler::enable();
    Tensor y = exp(exp(a * 0.01));
    y.sum().backward();
    profiler::enable(false);
    const std::vector<profiler::Entry> es = profiler::entries();
    const profiler::Entry* e = find(es, "exp", false);
    REQUIRE(e != nullptr);
    CHECK(e->calls == 2);
    CHECK(e->total_ms >= 0);
    const profiler::Entry* m = find(es, "mul", false);
    REQUIRE(m != nullptr);
    CHECK(m->calls == 1);
    bool any_backward = false;
    for (const profiler::Entry& x : es) any_backward = any_backward || x.backward;
    CHECK(any_backward);  // exp's backward multiplies by its output
    for (size_t i = 1; i < es.size(); ++i) CHECK(es[i - 1].total_ms >= es[i].total_ms);
    const std::string r = profiler::report();
    CHECK(r.find("profile op=exp phase=fwd calls=2 ") != std::string::npos);
    CHECK(r.find("profile total_ms=") != std::string::npos);
    profiler::reset();
    CHECK(profiler::entries().empty());
  }
}
