// The CUDA runtime of coil: the caching allocator on cudaMalloc, streams, copies, the hooks core
// calls (core/device.h). Registered at load time; with no driver or no GPU, device_count() is 0
// and creating a cuda tensor is an error naming CUDA's reason.
#include "runtime.h"

#include <cublas_v2.h>

#include <map>
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
  cudaStream_t stream = nullptr;
  cublasHandle_t cublas = nullptr;
};
std::mutex g_mu;
PerDevice g_dev[kMaxDevices];

PerDevice& per_device() {
  const int d = current_device();
  COIL_CHECK(d >= 0 && d < kMaxDevices, "cuda: device ", d, " beyond coil's limit");
  std::lock_guard<std::mutex> lk(g_mu);
  PerDevice& p = g_dev[d];
  if (!p.stream) check(cudaStreamCreateWithFlags(&p.stream, cudaStreamNonBlocking), "stream");
  return p;
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
// Reuse is safe without events because every kernel of a device runs on its one stream.
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
    auto& list = free_[{index, b}];
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
    live_[p] = {index, b};
    stats_.bytes_in_use += static_cast<int64_t>(b);
    stats_.peak_bytes_in_use = std::max(stats_.peak_bytes_in_use, stats_.bytes_in_use);
    return p;
  }
  void deallocate(void* p, size_t) override {
    if (!p) return;
    std::lock_guard<std::mutex> lk(mu_);
    auto it = live_.find(p);
    if (it == live_.end()) return;
    const auto [index, b] = it->second;
    live_.erase(it);
    free_[{index, b}].push_back(p);
    stats_.bytes_in_use -= static_cast<int64_t>(b);
    stats_.bytes_cached += static_cast<int64_t>(b);
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
    for (auto& [key, list] : free_) {
      if (key.first != index || list.empty()) continue;
      DeviceGuard g(Device(kCUDA, index));
      check(cudaStreamSynchronize(per_device().stream), "cudaStreamSynchronize");
      for (void* p : list) {
        cudaFree(p);
        stats_.bytes_cached -= static_cast<int64_t>(key.second);
        held_[index] -= static_cast<int64_t>(key.second);
      }
      list.clear();
    }
  }
  mutable std::mutex mu_;
  std::map<std::pair<int, size_t>, std::vector<void*>> free_;
  std::unordered_map<void*, std::pair<int, size_t>> live_;
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

struct Register {
  Register() {
    // never destroyed, like the CPU's: tensors may outlive static destructors
    set_allocator(kCUDA, new CudaCachingAllocator());
    CudaHooks h;
    h.device_count = &device_count_impl;
    h.copy_bytes = &copy_bytes;
    h.synchronize = &synchronize_impl;
    set_cuda_hooks(h);
  }
} g_register;

}  // namespace

cudaStream_t stream() { return per_device().stream; }

cublasHandle_t cublas() {
  PerDevice& p = per_device();
  std::lock_guard<std::mutex> lk(g_mu);
  if (!p.cublas) {
    check_cublas(cublasCreate(&p.cublas), "cublasCreate");
    check_cublas(cublasSetStream(p.cublas, p.stream), "cublasSetStream");
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
