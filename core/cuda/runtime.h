// The CUDA backend's runtime (internal to core/cuda and ops/cuda): error checks, the stream every
// kernel runs on, the cuBLAS handle, a device guard. Plain C++ over the CUDA runtime API.
//
// Streams: coil's own per device, created at first use and kept; every coil kernel and copy of
// that device goes on the thread's current stream (that one, unless a StreamGuard of
// core/stream.h names another), so work runs in the order it was issued. Copies to and from the
// host synchronise it, so a result read on the host is complete (to(d, non_blocking) aside).
#pragma once
#include <cuda_runtime_api.h>

#include "../device.h"

typedef struct cublasContext* cublasHandle_t;

namespace coil::cuda {

// Throws coil::Error naming `what` and CUDA's message when status is not cudaSuccess.
void check(cudaError_t status, const char* what);
void check_cublas(int status, const char* what);
// The current stream and the cuBLAS handle (bound to that stream) of the current device.
cudaStream_t stream();
cublasHandle_t cublas();
int current_device();

// Makes d the current device for its lifetime, then restores the previous one.
class DeviceGuard {
 public:
  explicit DeviceGuard(Device d);
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int prev_ = -1;
};

}  // namespace coil::cuda
