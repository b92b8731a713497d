#include "allocator.h"

#include <algorithm>
#include <cstdlib>
#include <map>
#include <mutex>
#include <new>
#include <vector>

#include "error.h"

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace coil {
namespace {

// Blocks are rounded up to a bucket: powers of two up to 1 MiB, then multiples of 1 MiB.
// Freed blocks wait in a per-bucket free list, so a training step reuses last step's memory.
// Blocks of 2 MiB and more start on a 2 MiB boundary and ask for transparent huge pages: kernels
// that stride through a large tensor (a scan reads one row per step, kilobytes apart) would
// otherwise miss the TLB on nearly every row.
constexpr size_t kHugePage = size_t(2) << 20;
void* system_alloc(size_t b) {
  if (b < kHugePage) return std::aligned_alloc(64, b);
  const size_t whole = (b + kHugePage - 1) / kHugePage * kHugePage;  // aligned_alloc's rule
  void* p = std::aligned_alloc(kHugePage, whole);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (p) madvise(p, whole, MADV_HUGEPAGE);  // a hint: failure only costs speed
#endif
  return p;
}

size_t bucket_size(size_t n) {
  if (n == 0) return 64;
  if (n <= (1u << 20)) {
    size_t b = 64;
    while (b < n) b <<= 1;
    return b;
  }
  const size_t mb = size_t(1) << 20;
  return (n + mb - 1) / mb * mb;
}

class CpuCachingAllocator final : public Allocator {
 public:
  ~CpuCachingAllocator() override { empty_cache(); }
  void* allocate(size_t nbytes) override {
    size_t b = bucket_size(nbytes);
    std::lock_guard<std::mutex> lk(mu_);
    stats_.num_allocs++;
    void* p = nullptr;
    auto it = free_.find(b);
    if (it != free_.end() && !it->second.empty()) {
      p = it->second.back();
      it->second.pop_back();
      stats_.bytes_cached -= static_cast<int64_t>(b);
    } else {
      const int64_t want = static_cast<int64_t>(b);
      if (cap_ > 0 && stats_.bytes_in_use + stats_.bytes_cached + want > cap_) empty_cache_locked();
      if (cap_ > 0 && stats_.bytes_in_use + want > cap_)
        fail("allocate: ", nbytes, " bytes on cpu would pass the memory cap of ", cap_, " bytes (",
             describe(stats_), ")");
      p = system_alloc(b);
      if (!p) {
        empty_cache_locked();
        p = system_alloc(b);
      }
      if (!p)
        fail("allocate: out of memory asking for ", nbytes, " bytes on cpu (", describe(stats_),
             ")");
      stats_.num_system_allocs++;
    }
    stats_.bytes_in_use += static_cast<int64_t>(b);
    stats_.peak_bytes_in_use = std::max(stats_.peak_bytes_in_use, stats_.bytes_in_use);
    return p;
  }
  void deallocate(void* ptr, size_t nbytes) override {
    size_t b = bucket_size(nbytes);
    std::lock_guard<std::mutex> lk(mu_);
    stats_.bytes_in_use -= static_cast<int64_t>(b);
#ifdef COIL_NO_CACHING_ALLOCATOR  // sanitizer builds: let ASan see every free
    std::free(ptr);
#else
    free_[b].push_back(ptr);
    stats_.bytes_cached += static_cast<int64_t>(b);
#endif
  }
  void set_memory_cap(int64_t bytes, int) override {
    std::lock_guard<std::mutex> lk(mu_);
    cap_ = bytes;
  }
  int64_t memory_cap(int) const override {
    std::lock_guard<std::mutex> lk(mu_);
    return cap_;
  }
  AllocatorStats stats() const override {
    std::lock_guard<std::mutex> lk(mu_);
    return stats_;
  }
  void reset_peak() override {
    std::lock_guard<std::mutex> lk(mu_);
    stats_.peak_bytes_in_use = stats_.bytes_in_use;
  }
  void empty_cache() override {
    std::lock_guard<std::mutex> lk(mu_);
    empty_cache_locked();
  }

 private:
  void empty_cache_locked() {
    for (auto& [b, v] : free_)
      for (void* p : v) std::free(p);
    free_.clear();
    stats_.bytes_cached = 0;
  }
  mutable std::mutex mu_;
  std::map<size_t, std::vector<void*>> free_;
  AllocatorStats stats_;
  int64_t cap_ = 0;
};

Allocator* g_allocators[kNumDeviceTypes] = {nullptr, nullptr};

}  // namespace

Allocator* get_allocator(DeviceType t) {
  if (t == kCPU) {
    static CpuCachingAllocator* cpu =
        new CpuCachingAllocator();  // never destroyed: tensors may outlive statics
    return cpu;
  }
  Allocator* a = g_allocators[static_cast<int>(t)];
  COIL_CHECK(a,
             "device cuda: this build of coil has no CUDA backend (configure with COIL_CUDA=ON)");
  return a;
}

void set_allocator(DeviceType t, Allocator* a) { g_allocators[static_cast<int>(t)] = a; }

AllocatorStats memory_stats(Device d) { return get_allocator(d.type)->stats(); }
void set_memory_cap(Device d, int64_t bytes) {
  COIL_CHECK(bytes >= 0, "set_memory_cap: the cap must be >= 0 bytes (0 = none), got ", bytes);
  get_allocator(d.type)->set_memory_cap(bytes, d.index);
}
int64_t memory_cap(Device d) { return get_allocator(d.type)->memory_cap(d.index); }
std::string describe(const AllocatorStats& s) {
  return "in use " + std::to_string(s.bytes_in_use) + " bytes, cached " +
         std::to_string(s.bytes_cached) + ", peak " + std::to_string(s.peak_bytes_in_use) + ", " +
         std::to_string(s.num_allocs) + " allocations (" + std::to_string(s.num_system_allocs) +
         " from the system)";
}
void reset_peak_memory(Device d) { get_allocator(d.type)->reset_peak(); }
void empty_cache(Device d) { get_allocator(d.type)->empty_cache(); }

}  // namespace coil
