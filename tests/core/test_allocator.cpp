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

  TEST_CASE("a memory cap, and a real allocation failure, are errors that lose nothing") {
    struct Uncap {
      ~Uncap() { set_memory_cap(Device(kCPU), 0); }
    } uncap;
    empty_cache();
    const int64_t base = memory_stats().bytes_in_use;
    set_memory_cap(Device(kCPU), base + (64 << 20));
    CHECK(memory_cap() == base + (64 << 20));
    Tensor a = empty({8 << 20});  // 32 MiB: under the cap
    ct::check_error([] { (void)empty({12 << 20}); },
                    {"allocate", "50331648 bytes on cpu", "memory cap", "in use"});
    CHECK(memory_stats().bytes_in_use == base + (32 << 20));  // the failed request left nothing
    a = Tensor();
    Tensor b = empty({12 << 20});  // fits once a is freed (its cached block is given back)
    CHECK(b.numel() == (12 << 20));
    set_memory_cap(Device(kCPU), 0);
    ct::check_error([] { set_memory_cap(Device(kCPU), -1); }, {"set_memory_cap", "-1"});
    // More than the address space: the system allocator fails, coil::Error says so.
    ct::check_error([] { (void)empty({int64_t(1) << 46}); }, {"out of memory", "bytes on cpu"});
    // A shape whose byte count does not fit in int64 (it used to wrap around to 0 elements).
    ct::check_error(
        [] {
          (void)empty({int64_t(1) << 40, int64_t(1) << 40});
        },
        {"empty", "[1099511627776, 1099511627776]", "2^63 bytes"});
  }
}
