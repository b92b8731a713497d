// The NCCL process group: ProcessGroup's collectives over an NcclCommunicator on the current
// stream of the group's GPU; the host-side call check and barrier over the bootstrap group.
#include "nccl_group.h"

#include <cuda_runtime.h>

#include <exception>

#include "../../core/stream.h"
#include "../../ops/creation.h"
#include "../backend.h"
#include "communicator.h"

namespace coil::dist {
namespace {

bool on_device(const void* p) {
  cudaPointerAttributes at{};
  if (cudaPointerGetAttributes(&at, p) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return at.type == cudaMemoryTypeDevice;
}

bool all_equal(const std::vector<int64_t>& v) {
  for (int64_t x : v)
    if (x != v[0]) return false;
  return true;
}

// Byte buffers travel as one-byte elements.
constexpr DType kByte = kBool;

class NcclGroup final : public ProcessGroup {
 public:
  NcclGroup(GroupPtr bootstrap, std::unique_ptr<NcclCommunicator> comm)
      : ProcessGroup(bootstrap->rank(), bootstrap->world_ranks()),
        boot_(std::move(bootstrap)),
        comm_(std::move(comm)) {}
  std::string backend() const override { return "nccl"; }
  Device home_device() const override { return Device(kCUDA, comm_->device()); }

 protected:
  // The job runs now, on the caller's thread: NCCL queues it on the stream.
  WorkPtr submit(const std::string& what, std::function<void(Transport&)> job, bool) override {
    auto work = std::make_shared<detail::CallWork>(what);
    std::exception_ptr error;
    try {
      Transport tr(*this);
      job(tr);
    } catch (...) {
      error = std::current_exception();
    }
    work->finish(error);
    return work;
  }
  WorkPtr send_bytes(const void* p, int64_t bytes, int dst, int,
                     std::function<void()> done) override {
    return submit(
        where("send"),
        [&](ProcessGroup::Transport&) {
          comm_->send(p, bytes, kByte, dst, stream());
          done();
        },
        false);
  }
  WorkPtr recv_bytes(void* p, int64_t bytes, int src, int, std::function<void()> done) override {
    return submit(
        where("recv"),
        [&](ProcessGroup::Transport&) {
          comm_->recv(p, bytes, kByte, src, stream());
          done();
        },
        false);
  }
  GroupPtr split_impl(int color, int key) override {
    GroupPtr b = boot_->split(color, key);
    std::unique_ptr<NcclCommunicator> c = comm_->split(color, key);
    return std::make_shared<NcclGroup>(std::move(b), std::move(c));
  }

 private:
  void* stream() const { return Stream::current(home_device()).native(); }

  struct Transport final : ProcessGroup::Transport {
    explicit Transport(NcclGroup& g) : g(g) {}
    NcclGroup& g;
    void* st() const { return g.stream(); }
    void all_reduce(void* buf, int64_t n, DType t, ReduceOp op, double) override {
      g.comm_->all_reduce(buf, n, t, op, st());
    }
    void all_gather(const void* in, void* out, const std::vector<int64_t>& bytes, double) override {
      if (!on_device(out)) {  // the call check's few integers, on the host
        Tensor src = from_blob(const_cast<void*>(in), {bytes[g.rank()]}, Options(kByte));
        Tensor dst = from_blob(out, {total(bytes)}, Options(kByte));
        g.boot_->all_gather(dst, src, bytes, blocking())->wait();
        return;
      }
      if (all_equal(bytes))
        g.comm_->all_gather(in, out, bytes[0], kByte, st());
      else
        g.comm_->all_gather_v(in, out, bytes, kByte, st());
    }
    void reduce_scatter(const void* in, void* out, const std::vector<int64_t>& counts, DType t,
                        ReduceOp op, double) override {
      if (all_equal(counts)) {
        g.comm_->reduce_scatter(in, out, counts[0], t, op, st());
        return;
      }
      // uneven blocks: reduce the whole input, keep this rank's block
      const size_t es = dtype_size(t);
      Tensor all = empty({total(counts)}, Options(t, g.home_device()));
      cudaStream_t s = static_cast<cudaStream_t>(st());
      COIL_CHECK(cudaMemcpyAsync(all.raw_data(), in, all.nbytes(), cudaMemcpyDeviceToDevice, s) ==
                     cudaSuccess,
                 "nccl reduce_scatter: cudaMemcpyAsync failed");
      g.comm_->all_reduce(all.raw_data(), all.numel(), t, op, s);
      int64_t off = 0;
      for (int r = 0; r < g.rank(); ++r) off += counts[r];
      COIL_CHECK(cudaMemcpyAsync(out, static_cast<const char*>(all.raw_data()) + off * es,
                                 counts[g.rank()] * es, cudaMemcpyDeviceToDevice, s) == cudaSuccess,
                 "nccl reduce_scatter: cudaMemcpyAsync failed");
    }
    void all_to_all(const void* in, const std::vector<int64_t>& send_bytes, void* out,
                    const std::vector<int64_t>& recv_bytes, bool, double) override {
      g.comm_->all_to_all(in, send_bytes, out, recv_bytes, kByte, st());
    }
    void broadcast(void* buf, int64_t bytes, int root, double) override {
      g.comm_->broadcast(buf, bytes, kByte, root, st());
    }
    void barrier(double) override {
      g.comm_->synchronize(st());  // this rank's queued collectives are done
      g.boot_->barrier(blocking())->wait();
    }
    static int64_t total(const std::vector<int64_t>& v) {
      int64_t n = 0;
      for (int64_t x : v) n += x;
      return n;
    }
  };

  GroupPtr boot_;
  std::unique_ptr<NcclCommunicator> comm_;
};

}  // namespace

GroupPtr new_nccl_group(const GroupPtr& bootstrap, int device) {
  COIL_CHECK(bootstrap, "new_nccl_group: no bootstrap group");
  auto comm = std::make_unique<NcclCommunicator>(bootstrap, device);
  return std::make_shared<NcclGroup>(bootstrap, std::move(comm));
}

}  // namespace coil::dist
