// Devices: cpu and cuda:N. CUDA kernels come with the CUDA backend (core/cuda/, ops/cuda/,
// built when CMake finds the toolkit); in a build without it, asking for a cuda tensor is a clear
// error.
#pragma once
#include <ostream>
#include <string>

namespace coil {

enum class DeviceType : uint8_t { cpu = 0, cuda = 1 };
inline constexpr int kNumDeviceTypes = 2;

struct Device {
  DeviceType type = DeviceType::cpu;
  int index = 0;
  Device() = default;
  Device(DeviceType t, int i = 0) : type(t), index(i) {}  // NOLINT: Device(kCPU) reads well
  explicit Device(const std::string& spec);               // "cpu", "cuda", "cuda:1"
  bool is_cpu() const { return type == DeviceType::cpu; }
  bool is_cuda() const { return type == DeviceType::cuda; }
  bool operator==(const Device& o) const { return type == o.type && index == o.index; }
  bool operator!=(const Device& o) const { return !(*this == o); }
  std::string str() const;
};
inline constexpr DeviceType kCPU = DeviceType::cpu, kCUDA = DeviceType::cuda;
inline std::ostream& operator<<(std::ostream& os, const Device& d) { return os << d.str(); }

// True when this build has a CUDA backend registered (filled in by the CUDA layer).
bool cuda_available();
// GPUs this process can use: 0 without a CUDA backend, without a driver or without a GPU.
int cuda_device_count();

// What the CUDA backend (core/cuda/) registers at start-up: the calls core needs that involve a
// GPU. Copies are synchronous: when they return, the bytes are at dst.
struct CudaHooks {
  int (*device_count)() = nullptr;
  void (*copy_bytes)(void* dst, Device dst_device, const void* src, Device src_device,
                     size_t nbytes) = nullptr;
  void (*synchronize)(Device d) = nullptr;
  // Streams and events (core/stream.h): handles are the backend's (cudaStream_t, cudaEvent_t).
  void* (*stream_create)(int device) = nullptr;
  void (*stream_destroy)(int device, void* s) = nullptr;  // waits for its work first
  void* (*stream_default)(int device) = nullptr;
  void* (*stream_current)(int device) = nullptr;              // this thread's
  void (*stream_set_current)(int device, void* s) = nullptr;  // null: the default again
  void (*stream_synchronize)(int device, void* s) = nullptr;
  bool (*stream_query)(int device, void* s) = nullptr;
  void (*stream_wait_event)(int device, void* s, void* e) = nullptr;
  void* (*event_create)(int device, bool timing) = nullptr;
  void (*event_destroy)(int device, void* e) = nullptr;
  void (*event_record)(int device, void* e, void* s) = nullptr;
  void (*event_synchronize)(int device, void* e) = nullptr;
  bool (*event_query)(int device, void* e) = nullptr;
  float (*event_elapsed_ms)(int device, void* start, void* end) = nullptr;
  // Page-locked host memory (Tensor::pin_memory) and copies that do not wait: queued on the
  // current stream of the GPU side, for pinned host memory or between buffers of one GPU.
  void* (*host_alloc)(size_t nbytes) = nullptr;
  void (*host_free)(void* p) = nullptr;
  bool (*is_pinned)(const void* p) = nullptr;
  void (*copy_bytes_async)(void* dst, Device dst_device, const void* src, Device src_device,
                           size_t nbytes) = nullptr;
};
void set_cuda_hooks(const CudaHooks& h);
const CudaHooks& cuda_hooks();  // every member null without a CUDA backend
// Waits for all work queued on d (a no-op on cpu).
void synchronize(Device d);

}  // namespace coil
