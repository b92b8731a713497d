// NCCL for CUDA buffers. A communicator is bootstrapped over a CPU process group (MPI): rank 0
// makes the ncclUniqueId and broadcasts it, every rank joins with ncclCommInitRank; sub-groups
// come from ncclCommSplit. Calls are enqueued on the given CUDA stream (nullptr: the default
// stream) and return at once, as NCCL's do; synchronize(stream) waits.
//
// It works on raw device buffers; nccl_group.h puts the Tensor-level ProcessGroup on top of it.
// Built only when the CUDA toolkit and NCCL are found (library coil_nccl).
#pragma once
#include <memory>
#include <vector>

#include "../process_group.h"

namespace coil::dist {

class NcclCommunicator {
 public:
  // Collective over `bootstrap`; `device` is this rank's CUDA device.
  NcclCommunicator(const GroupPtr& bootstrap, int device);
  ~NcclCommunicator();
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  int device() const { return device_; }

  void all_reduce(void* buf, int64_t count, DType t, ReduceOp op, void* stream = nullptr);
  // out holds size() blocks of count elements, in rank order.
  void all_gather(const void* in, void* out, int64_t count, DType t, void* stream = nullptr);
  // Uneven all_gather: out holds counts[r] elements from rank r, in rank order (grouped sends and
  // receives of this rank's counts[rank()] elements).
  void all_gather_v(const void* in, void* out, const std::vector<int64_t>& counts, DType t,
                    void* stream = nullptr);
  // in holds size() blocks of count elements; out gets this rank's block, reduced.
  void reduce_scatter(const void* in, void* out, int64_t count, DType t, ReduceOp op,
                      void* stream = nullptr);
  // send_counts[r] elements to rank r, recv_counts[r] from it (grouped sends and receives).
  void all_to_all(const void* in, const std::vector<int64_t>& send_counts, void* out,
                  const std::vector<int64_t>& recv_counts, DType t, void* stream = nullptr);
  void broadcast(void* buf, int64_t count, DType t, int root, void* stream = nullptr);
  void send(const void* buf, int64_t count, DType t, int peer, void* stream = nullptr);
  void recv(void* buf, int64_t count, DType t, int peer, void* stream = nullptr);
  // The members passing the same color, ranked by key (ncclCommSplit). Collective.
  std::unique_ptr<NcclCommunicator> split(int color, int key);
  void synchronize(void* stream = nullptr);

 private:
  NcclCommunicator() = default;
  void* comm_ = nullptr;  // ncclComm_t
  int rank_ = 0, size_ = 1, device_ = 0;
};

}  // namespace coil::dist
