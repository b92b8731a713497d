// The device's own rates for bench_cuda's bounds: the copy bandwidth (device to device, counting
// bytes read and written) and the throughput of expf, each from a kernel timed with events.
#include <cuda_runtime.h>

#include <cstdio>

namespace {

__global__ void exp_chain(float* out, int iters) {
  float a = threadIdx.x * 1e-6f, b = blockIdx.x * 1e-6f, c = 0.5f, d = 0.25f;
  for (int i = 0; i < iters; ++i) {  // four independent chains, values kept near 1
    a = expf(a) * 0.36787944f;
    b = expf(b) * 0.36787944f;
    c = expf(c) * 0.36787944f;
    d = expf(d) * 0.36787944f;
  }
  if (a + b + c + d == 123.f) out[0] = a;  // keeps the chains alive
}

float time_ms(cudaEvent_t a, cudaEvent_t b) {
  float ms = 0;
  cudaEventElapsedTime(&ms, a, b);
  return ms;
}

}  // namespace

// Bytes per second of a device-to-device copy of `bytes` (read + write), best of 5.
double probe_copy_bandwidth(size_t bytes) {
  void *src = nullptr, *dst = nullptr;
  cudaMalloc(&src, bytes);
  cudaMalloc(&dst, bytes);
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  double best = 0;
  for (int r = 0; r < 6; ++r) {
    cudaEventRecord(e0);
    cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice);
    cudaEventRecord(e1);
    cudaEventSynchronize(e1);
    const double s = time_ms(e0, e1) * 1e-3;
    if (r > 0 && 2.0 * bytes / s > best) best = 2.0 * bytes / s;
  }
  cudaFree(src);
  cudaFree(dst);
  return best;
}

// expf per second over the whole device, best of 5.
double probe_exp_rate() {
  float* out = nullptr;
  cudaMalloc(&out, sizeof(float));
  int sms = 0;
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
  const int blocks = sms * 8, threads = 256, iters = 4096;
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  double best = 0;
  for (int r = 0; r < 6; ++r) {
    cudaEventRecord(e0);
    exp_chain<<<blocks, threads>>>(out, iters);
    cudaEventRecord(e1);
    cudaEventSynchronize(e1);
    const double n = 4.0 * iters * blocks * threads;
    const double s = time_ms(e0, e1) * 1e-3;
    if (r > 0 && n / s > best) best = n / s;
  }
  cudaFree(out);
  return best;
}
