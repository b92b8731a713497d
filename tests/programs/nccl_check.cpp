// The NCCL communicator, linked against the CUDA toolkit. Without a GPU it must fail with a clear
// coil::Error (that is what runs on a machine with the toolkit but no device); with one, a
// world-of-one all_reduce and broadcast on device memory must leave the values as they were.
#include <cuda_runtime.h>

#include <cstdio>
#include <string>

#include <coil/coil.h>
#include <coil/dist/nccl/communicator.h>

int main() {
  namespace dist = coil::dist;
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    try {
      dist::NcclCommunicator c(dist::world(), 0);
    } catch (const coil::Error& e) {
      const std::string msg = e.what();
      if (msg.find("no CUDA device") == std::string::npos) {
        std::printf("FAIL: unexpected error: %s\n", e.what());
        return 1;
      }
      std::printf("no GPU: NcclCommunicator reports \"%s\"\n", e.what());
      return 0;
    }
    std::printf("FAIL: a communicator without a GPU\n");
    return 1;
  }
  dist::NcclCommunicator c(dist::world(), 0);
  float host[4] = {1, 2, 3, 4}, back[4] = {};
  float* dev = nullptr;
  cudaMalloc(&dev, sizeof(host));
  cudaMemcpy(dev, host, sizeof(host), cudaMemcpyHostToDevice);
  c.all_reduce(dev, 4, coil::kF32, dist::ReduceOp::kSum);
  c.broadcast(dev, 4, coil::kF32, 0);
  c.synchronize();
  cudaMemcpy(back, dev, sizeof(back), cudaMemcpyDeviceToHost);
  cudaFree(dev);
  for (int i = 0; i < 4; ++i)
    if (back[i] != host[i] * c.size()) {
      std::printf("FAIL: element %d is %g\n", i, back[i]);
      return 1;
    }
  std::printf("nccl: all_reduce and broadcast on %d rank(s) correct\n", c.size());
  return 0;
}
