// Size-bucketed caching allocator per device, with statistics so tests can bound memory.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "device.h"

namespace coil {

struct AllocatorStats {
  int64_t bytes_in_use = 0;  // live blocks, at their bucket size
  int64_t peak_bytes_in_use = 0;
  int64_t bytes_cached = 0;       // freed blocks kept for reuse
  int64_t num_allocs = 0;         // calls to allocate
  int64_t num_system_allocs = 0;  // calls that reached the system allocator
};

class Allocator {
 public:
  virtual ~Allocator() = default;
  virtual void* allocate(size_t nbytes) = 0;
  // On device `index` of the allocator's type (a GPU allocator overrides it; cpu has one).
  virtual void* allocate_on(size_t nbytes, int index) {
    (void)index;
    return allocate(nbytes);
  }
  virtual void deallocate(void* ptr, size_t nbytes) = 0;
  // Marks the block at ptr as used by the (backend) stream too: once freed, it is reused only
  // after the work queued on that stream by then is done (Tensor::record_stream).
  virtual void record_stream(void* ptr, void* stream) {
    (void)ptr;
    (void)stream;
  }
  // A cap on the memory the allocator holds on device `index` (blocks in use plus cached), 0
  // for none. A request that would pass it first gives the cache back, then throws coil::Error
  // with the size and the statistics; so does a real failure of the system allocator.
  virtual void set_memory_cap(int64_t bytes, int index) = 0;
  virtual int64_t memory_cap(int index) const = 0;
  virtual AllocatorStats stats() const = 0;
  virtual void reset_peak() = 0;
  virtual void empty_cache() = 0;
};

// The allocator for a device type; cuda's is registered by the CUDA backend.
Allocator* get_allocator(DeviceType t);
void set_allocator(DeviceType t, Allocator* a);

AllocatorStats memory_stats(Device d = Device(kCPU));
// The per-device cap of Allocator::set_memory_cap (bytes, 0 = none), as PyTorch's
// torch.cuda.set_per_process_memory_fraction but in bytes and on every device type.
void set_memory_cap(Device d, int64_t bytes);
int64_t memory_cap(Device d = Device(kCPU));
// "in use N bytes, cached N, peak N, N allocations (N from the system)" for error messages.
std::string describe(const AllocatorStats& s);
void reset_peak_memory(Device d = Device(kCPU));
void empty_cache(Device d = Device(kCPU));

}  // namespace coil
