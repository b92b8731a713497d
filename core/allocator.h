// Size-bucketed caching allocator per device, with statistics so tests can bound memory.
#pragma once
#include <cstddef>
#include <cstdint>

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
  virtual AllocatorStats stats() const = 0;
  virtual void reset_peak() = 0;
  virtual void empty_cache() = 0;
};

// The allocator for a device type; cuda's is registered by the CUDA backend.
Allocator* get_allocator(DeviceType t);
void set_allocator(DeviceType t, Allocator* a);

AllocatorStats memory_stats(Device d = Device(kCPU));
void reset_peak_memory(Device d = Device(kCPU));
void empty_cache(Device d = Device(kCPU));

}  // namespace coil
