#include "test_util.h"

using namespace coil;

TEST_SUITE("core.allocator") {
  TEST_CASE("bytes in use return to the baseline and freed blocks are reused") {
    int64_t base = memory_stats().bytes_in_use;
    {
      Tensor a = empty({1000});  // 4000 bytes -> 4096 bucket
      CHECK(memory_stats().bytes_in_use == base + 4096);
    }
    CHECK(memory_stats().bytes_in_use == base);
    [[maybe_unused]] AllocatorStats before = memory_stats();
    {
      Tensor b = empty({1000});
      (void)b;
    }
#ifndef COIL_NO_CACHING_ALLOCATOR
    CHECK(memory_stats().num_system_allocs == before.num_system_allocs);  // served from the cache
#endif
    reset_peak_memory();
    {
      Tensor big = empty({3 << 20});
      (void)big;
    }
    CHECK(memory_stats().peak_bytes_in_use >= base + (12 << 20));
    empty_cache();
    CHECK(memory_stats().bytes_cached == 0);
  }
}
