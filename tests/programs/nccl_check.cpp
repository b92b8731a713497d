// The NCCL communicator, linked against the CUDA toolkit. Without a GPU it must fail with a clear
// coil::Error (that is what runs on a machine with the toolkit but no device); with one, a
// world-of-one all_reduce and broadcast on device memory must leave the values as they were.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>

#include <coil/coil.h>
#include <coil/dist/nccl/communicator.h>
#include <coil/dist/nccl/nccl_group.h>

namespace {

int failures = 0;
void expect(bool ok, const char* what) {
  if (!ok) {
    std::printf("FAIL: %s\n", what);
    ++failures;
  }
}
bool all_near(const coil::Tensor& t, double want) {
  for (double v : coil::to_vector<double>(t.to(coil::Device(coil::kCPU))))
    if (std::fabs(v - want) > 1e-6 * std::max(1.0, std::fabs(want))) return false;
  return true;
}

// The NCCL process group on this rank's GPU (run under mpirun with one rank per GPU, or alone):
// every collective on CUDA tensors, halves, a non-contiguous tensor, a CPU tensor staged through
// the GPU, uneven row counts, and a split.
int group_check(int device) {
  using namespace coil;
  namespace dist = coil::dist;
  dist::GroupPtr g = dist::new_nccl_group(dist::world(), device);
  const Device gpu(kCUDA, device);
  const int n = g->size(), r = g->rank();
  expect(g->backend() == "nccl" && g->home_device() == gpu, "backend and home device");
  Tensor x = full({5}, r + 1.0, Options(kF32, gpu));
  g->all_reduce(x)->wait();
  expect(all_near(x, n * (n + 1) / 2.0) && x.device() == gpu, "all_reduce sum");
  Tensor a = full({5}, r + 1.0, Options(kF32, gpu));
  g->all_reduce(a, dist::ReduceOp::kAvg)->wait();
  expect(all_near(a, (n + 1) / 2.0), "all_reduce avg");
  Tensor h = full({3}, 1.0, Options(kBF16, gpu));
  g->all_reduce(h)->wait();
  expect(all_near(h, n) && h.dtype() == kBF16, "all_reduce of bf16");
  Tensor nc = full({4, 6}, 1.0, Options(kF32, gpu)).transpose(0, 1);
  g->all_reduce(nc)->wait();
  expect(all_near(nc, n), "all_reduce of a non-contiguous tensor");
  Tensor c = full({4}, 2.0);  // on the CPU: staged through the GPU
  g->all_reduce(c)->wait();
  expect(all_near(c, 2.0 * n) && c.device().is_cpu(), "all_reduce of a CPU tensor");
  // uneven all_gather: rank q sends q + 1 rows of value q
  std::vector<int64_t> counts;
  for (int q = 0; q < n; ++q) counts.push_back(q + 1);
  Tensor in = full({r + 1, 2}, static_cast<double>(r), Options(kF32, gpu));
  Tensor out = empty({n * (n + 1) / 2, 2}, Options(kF32, gpu));
  g->all_gather(out, in, counts)->wait();
  std::vector<double> got = to_vector<double>(out.to(Device(kCPU)));
  bool ok = true;
  for (int q = 0, row = 0; q < n; ++q)
    for (int k = 0; k <= q; ++k, ++row) ok = ok && got[row * 2] == q && got[row * 2 + 1] == q;
  expect(ok, "all_gather with uneven counts");
  Tensor rs_in = ones({2 * n, 3}, Options(kF32, gpu)), rs_out = empty({2, 3}, Options(kF32, gpu));
  g->reduce_scatter(rs_out, rs_in)->wait();
  expect(all_near(rs_out, n), "reduce_scatter");
  Tensor a2a_in = full({n, 2}, static_cast<double>(r), Options(kF32, gpu));
  Tensor a2a_out = empty({n, 2}, Options(kF32, gpu));
  g->all_to_all(a2a_out, a2a_in)->wait();
  got = to_vector<double>(a2a_out.to(Device(kCPU)));
  ok = true;
  for (int q = 0; q < n; ++q) ok = ok && got[q * 2] == q;
  expect(ok, "all_to_all");
  Tensor b = full({3}, r == 0 ? 7.0 : 0.0, Options(kF32, gpu));
  g->broadcast(b, 0)->wait();
  expect(all_near(b, 7.0), "broadcast");
  g->barrier()->wait();
  dist::GroupPtr half = g->split(r % 2, r);
  Tensor s = ones({2}, Options(kF32, gpu));
  half->all_reduce(s)->wait();
  expect(all_near(s, half->size()) && half->backend() == "nccl", "split");
  dist::DeviceMesh mesh({n}, {"dp"}, {}, g);  // a mesh over the NCCL group: NCCL groups per dim
  Tensor m = ones({2}, Options(kF32, gpu));
  mesh.group("dp")->all_reduce(m)->wait();
  expect(mesh.group("dp")->backend() == "nccl" && all_near(m, n), "a DeviceMesh over the group");
  if (failures == 0) std::printf("nccl group: every collective correct on %d rank(s)\n", n);
  return failures == 0 ? 0 : 1;
}

}  // namespace

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
  return group_check(dist::rank() % devices);
}
