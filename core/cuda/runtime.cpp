// The CUDA runtime of coil: the caching allocator on cudaMalloc, streams, copies, the hooks core
// calls (core/device.h). Registered at load time; with no driver or no GPU, device_count() is 0
// and creating a cuda tensor is an error naming CUDA's reason.
#include "runtime.h"

#include <cublas_v2.h>

#include <algorithm>
#include <map>
#include <tuple>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "../allocator.h"
#include "../error.h"

namespace coil::cuda {

void check(cudaError_t status, const char* what) {
  if (status == cudaSuccess) return;
  (void)cudaGetLastError();  // clear a sticky-free error so later calls report their own
  fail("cuda: ", what, " failed: ", cudaGetErrorName(status), " (", cudaGetErrorString(status),
       ")");
}

void check_cublas(int status, const char* what) {
  if (status == CUBLAS_STATUS_SUCCESS) return;
  fail("cublas: ", what, " failed with status ", status);
}

int current_device() {
  int d = 0;
  check(cudaGetDevice(&d), "cudaGetDevice");
  return d;
}

namespace {

constexpr int kMaxDevices = 64;

struct PerDevice {
  cudaStream_t stream = nullptr;  // coil's default stream of the device
  cublasHandle_t cublas = nullptr;
  cudaStream_t cublas_stream = nullptr;  // the stream the handle is bound to
};
std::mutex g_mu;
PerDevice g_dev[kMaxDevices];
// A StreamGuard's stream per device on this thread (null: the default).
thread_local cudaStream_t t_current[kMaxDevices] = {};

PerDevice& per_device_of(int d) {
  COIL_CHECK(d >= 0 && d < kMaxDevices, "cuda: device ", d, " beyond coil's limit");
  std::lock_guard<std::mutex> lk(g_mu);
  PerDevice& p = g_dev[d];
  if (!p.stream) {
    DeviceGuard g(Device(kCUDA, d));
    check(cudaStreamCreateWithFlags(&p.stream, cudaStreamNonBlocking), "stream");
  }
  return p;
}
cudaStream_t current_stream_of(int d) {
  return t_current[d] ? t_current[d] : per_device_of(d).stream;
}

int device_count_impl() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;  // no driver, or no GPU
  }
  return n;
}

void check_index(int index) {
  int n = 0;
  const cudaError_t st = cudaGetDeviceCount(&n);
  if (st != cudaSuccess) {
    (void)cudaGetLastError();
    fail("cuda: no GPU is usable by this process (CUDA says: ", cudaGetErrorString(st), ")");
  }
  COIL_CHECK(n > 0, "cuda: no GPU is usable by this process (CUDA found no device)");
  COIL_CHECK(index >= 0 && index < n, "cuda: device cuda:", index, " does not exist (", n, " GPU",
             n == 1 ? "" : "s", ")");
}

// Blocks rounded to 512 bytes up to 1 MiB, then to 2 MiB; freed blocks wait in per-(device,
// size) free lists, as PyTorch's caching allocator does, so a training step reuses the last
// step's memory and never calls cudaMalloc (which synchronises the device) in steady state.
// Free lists are per stream too: a block comes back only to allocations on the stream it was
// allocated on, whose work is ordered after its uses there (core/stream.h states the rule for
// uses on other streams).
size_t bucket_size(size_t n) {
  if (n <= (size_t(1) << 20)) return (std::max<size_t>(n, 1) + 511) / 512 * 512;
  const size_t two = size_t(2) << 20;
  return (n + two - 1) / two * two;
}

class CudaCachingAllocator final : public Allocator {
 public:
  void* allocate(size_t nbytes) override { return allocate_on(nbytes, current_device()); }
  void* allocate_on(size_t nbytes, int index) override {
    check_index(index);
    const size_t b = bucket_size(nbytes);
    std::lock_guard<std::mutex> lk(mu_);
    stats_.num_allocs++;
    void* p = nullptr;
    // blocks are reused only on the stream they were allocated on (their uses there are ordered)
    const cudaStream_t on = current_stream_of(index);
    collect_pending();
    auto& list = free_[{index, on, b}];
    if (!list.empty()) {
      p = list.back();
      list.pop_back();
      stats_.bytes_cached -= static_cast<int64_t>(b);
    } else {
      const int64_t want = static_cast<int64_t>(b);
      if (cap_[index] > 0 && held_[index] + want > cap_[index]) release_cached(index);
      if (cap_[index] > 0 && held_[index] + want > cap_[index])
        fail("cuda: ", nbytes, " bytes on cuda:", index, " would pass its memory cap of ",
             cap_[index], " bytes (", held_[index], " held on it; all devices: ", describe(stats_),
             ")");
      DeviceGuard g(Device(kCUDA, index));
      cudaError_t st = cudaMalloc(&p, b);
      if (st == cudaErrorMemoryAllocation) {  // give the cache back and try once more
        (void)cudaGetLastError();
        release_cached(index);
        st = cudaMalloc(&p, b);
      }
      if (st != cudaSuccess) {
        (void)cudaGetLastError();
        fail("cuda: out of memory allocating ", nbytes, " bytes on cuda:", index, " (",
             cudaGetErrorString(st), "; ", describe(stats_), ")");
      }
      stats_.num_system_allocs++;
      held_[index] += want;
    }
    live_[p] = Live{index, on, b, {}};
    stats_.bytes_in_use += static_cast<int64_t>(b);
    stats_.peak_bytes_in_use = std::max(stats_.peak_bytes_in_use, stats_.bytes_in_use);
    return p;
  }
  void deallocate(void* p, size_t) override {
    if (!p) return;
    std::lock_guard<std::mutex> lk(mu_);
    auto it = live_.find(p);
    if (it == live_.end()) return;
    Live l = std::move(it->second);
    live_.erase(it);
    stats_.bytes_in_use -= static_cast<int64_t>(l.bytes);
    stats_.bytes_cached += static_cast<int64_t>(l.bytes);
    if (l.others.empty()) {
      free_[{l.index, l.stream, l.bytes}].push_back(p);
      return;
    }
    // used on other streams too: free once their work queued so far is done
    Pending pend{p, l.index, l.stream, l.bytes, {}};
    DeviceGuard g(Device(kCUDA, l.index));
    for (cudaStream_t o : l.others) {  // (no throwing here: tensors free it in destructors)
      cudaEvent_t e = nullptr;
      if (cudaEventCreateWithFlags(&e, cudaEventDisableTiming) == cudaSuccess &&
          cudaEventRecord(e, o) == cudaSuccess) {
        pend.events.push_back(e);
      } else {
        (void)cudaGetLastError();
        if (e) cudaEventDestroy(e);
        cudaStreamSynchronize(o);  // no event: wait for that stream now
      }
    }
    pending_.push_back(std::move(pend));
  }
  void record_stream(void* p, void* stream) override {
    std::lock_guard<std::mutex> lk(mu_);
    auto it = live_.find(p);
    COIL_CHECK(it != live_.end(), "record_stream: the tensor's memory is not a live CUDA block");
    const cudaStream_t s = static_cast<cudaStream_t>(stream);
    Live& l = it->second;
    if (s != l.stream && std::find(l.others.begin(), l.others.end(), s) == l.others.end())
      l.others.push_back(s);
  }
  void set_memory_cap(int64_t bytes, int index) override {
    check_index(index);
    std::lock_guard<std::mutex> lk(mu_);
    cap_[index] = bytes;
  }
  int64_t memory_cap(int index) const override {
    check_index(index);
    std::lock_guard<std::mutex> lk(mu_);
    return cap_[index];
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
    for (int d = 0; d < kMaxDevices; ++d) release_cached(d);
  }

 private:
  void release_cached(int index) {  // mu_ held
    bool any = false;
    for (const auto& [key, list] : free_) any = any || (std::get<0>(key) == index && !list.empty());
    for (const Pending& q : pending_) any = any || q.index == index;
    if (!any) return;  // (also: no device calls for devices that do not exist)
    DeviceGuard g(Device(kCUDA, index));
    check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");  // every stream's work
    collect_pending();                                        // so every event is done
    for (auto& [key, list] : free_) {
      const auto& [dev, on, b] = key;
      if (dev != index) continue;
      for (void* p : list) {
        cudaFree(p);
        stats_.bytes_cached -= static_cast<int64_t>(b);
        held_[index] -= static_cast<int64_t>(b);
      }
      list.clear();
    }
  }
  struct Live {
    int index;
    cudaStream_t stream;  // allocated on
    size_t bytes;
    std::vector<cudaStream_t> others;  // record_stream's
  };
  struct Pending {  // freed, waiting for the work of other streams that used it
    void* p;
    int index;
    cudaStream_t stream;
    size_t bytes;
    std::vector<cudaEvent_t> events;
  };
  // Moves the pending blocks whose events are done to their free lists (mu_ held).
  void collect_pending() {
    for (size_t i = 0; i < pending_.size();) {
      Pending& q = pending_[i];
      bool done = true;
      for (cudaEvent_t e : q.events) {
        const cudaError_t st = cudaEventQuery(e);
        if (st == cudaErrorNotReady) {
          (void)cudaGetLastError();
          done = false;
          break;
        }
      }
      if (!done) {
        ++i;
        continue;
      }
      for (cudaEvent_t e : q.events) cudaEventDestroy(e);
      free_[{q.index, q.stream, q.bytes}].push_back(q.p);
      pending_[i] = std::move(pending_.back());
      pending_.pop_back();
    }
  }
  std::vector<Pending> pending_;
  mutable std::mutex mu_;
  std::map<std::tuple<int, cudaStream_t, size_t>, std::vector<void*>> free_;
  std::unordered_map<void*, Live> live_;
  AllocatorStats stats_;
  int64_t cap_[kMaxDevices] = {}, held_[kMaxDevices] = {};  // held: in use + cached, per device
};

void copy_bytes(void* dst, Device dd, const void* src, Device sd, size_t n) {
  if (dd.is_cuda() && sd.is_cuda() && dd.index != sd.index) {
    // peer copy: finish the source's queued work, copy, wait for the copy
    {
      DeviceGuard g(sd);
      check(cudaStreamSynchronize(stream()), "cudaStreamSynchronize");
    }
    DeviceGuard g(dd);
    check(cudaMemcpyPeerAsync(dst, dd.index, src, sd.index, n, stream()), "cudaMemcpyPeerAsync");
    check(cudaStreamSynchronize(stream()), "cudaStreamSynchronize");
    return;
  }
  const Device gpu = dd.is_cuda() ? dd : sd;
  DeviceGuard g(gpu);
  check(cudaMemcpyAsync(dst, src, n, cudaMemcpyDefault, stream()), "cudaMemcpyAsync");
  check(cudaStreamSynchronize(stream()), "cudaStreamSynchronize");
}

void synchronize_impl(Device d) {
  DeviceGuard g(d);
  check(cudaStreamSynchronize(stream()), "cudaStreamSynchronize");
}

// ---- streams, events, pinned memory (core/stream.h, Tensor::pin_memory) ----
void* stream_create_impl(int d) {
  DeviceGuard g(Device(kCUDA, d));
  cudaStream_t s = nullptr;
  check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreate");
  return s;
}
void stream_destroy_impl(int d, void* s) {
  DeviceGuard g(Device(kCUDA, d));
  // its queued work first: blocks freed on it may be handed to a stream reusing the handle
  cudaStreamSynchronize(static_cast<cudaStream_t>(s));
  cudaStreamDestroy(static_cast<cudaStream_t>(s));
}
void* stream_default_impl(int d) { return per_device_of(d).stream; }
void* stream_current_impl(int d) { return current_stream_of(d); }
void stream_set_current_impl(int d, void* s) {
  cudaStream_t st = static_cast<cudaStream_t>(s);
  t_current[d] = st == per_device_of(d).stream ? nullptr : st;
}
void stream_synchronize_impl(int d, void* s) {
  DeviceGuard g(Device(kCUDA, d));
  check(cudaStreamSynchronize(static_cast<cudaStream_t>(s)), "cudaStreamSynchronize");
}
// A query's answer: done (true), still running (false), or a CUDA error (thrown).
bool query_done(cudaError_t st, const char* what) {
  if (st == cudaErrorNotReady) {
    (void)cudaGetLastError();
    return false;
  }
  check(st, what);
  return true;
}
bool stream_query_impl(int d, void* s) {
  DeviceGuard g(Device(kCUDA, d));
  return query_done(cudaStreamQuery(static_cast<cudaStream_t>(s)), "cudaStreamQuery");
}
void stream_wait_event_impl(int d, void* s, void* e) {
  DeviceGuard g(Device(kCUDA, d));
  check(cudaStreamWaitEvent(static_cast<cudaStream_t>(s), static_cast<cudaEvent_t>(e), 0),
        "cudaStreamWaitEvent");
}
void* event_create_impl(int d, bool timing) {
  DeviceGuard g(Device(kCUDA, d));
  cudaEvent_t e = nullptr;
  check(cudaEventCreateWithFlags(&e, timing ? cudaEventDefault : cudaEventDisableTiming),
        "cudaEventCreate");
  return e;
}
void event_destroy_impl(int d, void* e) {
  DeviceGuard g(Device(kCUDA, d));
  cudaEventDestroy(static_cast<cudaEvent_t>(e));
}
void event_record_impl(int d, void* e, void* s) {
  DeviceGuard g(Device(kCUDA, d));
  check(cudaEventRecord(static_cast<cudaEvent_t>(e), static_cast<cudaStream_t>(s)),
        "cudaEventRecord");
}
void event_synchronize_impl(int d, void* e) {
  DeviceGuard g(Device(kCUDA, d));
  check(cudaEventSynchronize(static_cast<cudaEvent_t>(e)), "cudaEventSynchronize");
}
bool event_query_impl(int d, void* e) {
  DeviceGuard g(Device(kCUDA, d));
  return query_done(cudaEventQuery(static_cast<cudaEvent_t>(e)), "cudaEventQuery");
}
float event_elapsed_impl(int d, void* a, void* b) {
  DeviceGuard g(Device(kCUDA, d));
  float ms = 0;
  check(cudaEventElapsedTime(&ms, static_cast<cudaEvent_t>(a), static_cast<cudaEvent_t>(b)),
        "cudaEventElapsedTime");
  return ms;
}
// Pinned blocks are not cached: cudaFreeHost waits for the device, so a block is never handed
// out again while a copy from it is in flight.
void* host_alloc_impl(size_t n) {
  void* p = nullptr;
  const cudaError_t st = cudaHostAlloc(&p, std::max<size_t>(n, 1), cudaHostAllocPortable);
  if (st != cudaSuccess) {
    (void)cudaGetLastError();
    fail("cuda: cannot pin ", n, " bytes of host memory (", cudaGetErrorString(st), ")");
  }
  return p;
}
void host_free_impl(void* p) { cudaFreeHost(p); }
bool is_pinned_impl(const void* p) {
  cudaPointerAttributes at{};
  if (cudaPointerGetAttributes(&at, p) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return at.type == cudaMemoryTypeHost;
}
void copy_bytes_async_impl(void* dst, Device dd, const void* src, Device sd, size_t n) {
  COIL_CHECK(!(dd.is_cuda() && sd.is_cuda() && dd.index != sd.index),
             "to(non_blocking): copies between GPUs wait; use to(device)");
  const Device gpu = dd.is_cuda() ? dd : sd;
  DeviceGuard g(gpu);
  check(cudaMemcpyAsync(dst, src, n, cudaMemcpyDefault, stream()), "cudaMemcpyAsync");
}

struct Register {
  Register() {
    // never destroyed, like the CPU's: tensors may outlive static destructors
    set_allocator(kCUDA, new CudaCachingAllocator());
    CudaHooks h;
    h.device_count = &device_count_impl;
    h.copy_bytes = &copy_bytes;
    h.synchronize = &synchronize_impl;
    h.stream_create = &stream_create_impl;
    h.stream_destroy = &stream_destroy_impl;
    h.stream_default = &stream_default_impl;
    h.stream_current = &stream_current_impl;
    h.stream_set_current = &stream_set_current_impl;
    h.stream_synchronize = &stream_synchronize_impl;
    h.stream_query = &stream_query_impl;
    h.stream_wait_event = &stream_wait_event_impl;
    h.event_create = &event_create_impl;
    h.event_destroy = &event_destroy_impl;
    h.event_record = &event_record_impl;
    h.event_synchronize = &event_synchronize_impl;
    h.event_query = &event_query_impl;
    h.event_elapsed_ms = &event_elapsed_impl;
    h.host_alloc = &host_alloc_impl;
    h.host_free = &host_free_impl;
    h.is_pinned = &is_pinned_impl;
    h.copy_bytes_async = &copy_bytes_async_impl;
    set_cuda_hooks(h);
  }
} g_register;

}  // namespace

cudaStream_t stream() { return current_stream_of(current_device()); }

cublasHandle_t cublas() {
  const int d = current_device();
  PerDevice& p = per_device_of(d);
  const cudaStream_t want = current_stream_of(d);
  std::lock_guard<std::mutex> lk(g_mu);
  if (!p.cublas) check_cublas(cublasCreate(&p.cublas), "cublasCreate");
  if (p.cublas_stream != want) {  // follow this thread's current stream
    check_cublas(cublasSetStream(p.cublas, want), "cublasSetStream");
    p.cublas_stream = want;
  }
  return p.cublas;
}

DeviceGuard::DeviceGuard(Device d) {
  if (!d.is_cuda()) return;
  prev_ = current_device();
  if (prev_ != d.index) check(cudaSetDevice(d.index), "cudaSetDevice");
}

DeviceGuard::~DeviceGuard() {
  if (prev_ >= 0) cudaSetDevice(prev_);
}

}  // namespace coil::cuda
