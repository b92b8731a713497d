// A job in which rank 1 throws while rank 0 waits in a collective: dist::init's handler must
// stop the whole job with rank 1's message instead of leaving rank 0 waiting forever.
#include <coil/coil.h>

#include <cstdio>

int main() {
  coil::dist::init();
  auto w = coil::dist::world();
  if (w->rank() == 1) throw coil::Error("rank 1 gives up");
  w->barrier()->wait();
  std::printf("rank %d passed the barrier\n", w->rank());
  return 0;
}
