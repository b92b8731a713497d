#include "communicator.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <cstring>

#include "../../ops/creation.h"

namespace coil::dist {
namespace {

void check_cuda(cudaError_t e, const char* call) {
  COIL_CHECK(e == cudaSuccess, "nccl: ", call, " failed: ", cudaGetErrorString(e));
}
void check_nccl(ncclResult_t r, const char* call) {
  COIL_CHECK(r == ncclSuccess, "nccl: ", call, " failed: ", ncclGetErrorString(r));
}

ncclDataType_t nccl_type(DType t) {
  switch (t) {
    case kF32:
      return ncclFloat32;
    case kF64:
      return ncclFloat64;
    case kBF16:
      return ncclBfloat16;
    case kF16:
      return ncclFloat16;
    case kI32:
      return ncclInt32;
    case kI64:
      return ncclInt64;
    default:
      return ncclUint8;  // bool: one byte
  }
}

ncclRedOp_t nccl_op(ReduceOp op, DType t) {
  COIL_CHECK(t != kBool || op == ReduceOp::kMax || op == ReduceOp::kMin,
             "nccl: bool tensors reduce with max (or) and min (and) only");
  COIL_CHECK(op != ReduceOp::kAvg || is_floating(t), "nccl: avg needs a floating dtype, got ", t);
  switch (op) {
    case ReduceOp::kSum:
      return ncclSum;
    case ReduceOp::kAvg:
      return ncclAvg;
    case ReduceOp::kMax:
      return ncclMax;
    default:
      return ncclMin;
  }
}

ncclComm_t as_comm(void* c) { return static_cast<ncclComm_t>(c); }
cudaStream_t as_stream(void* s) { return static_cast<cudaStream_t>(s); }
size_t count_of(int64_t n) {
  COIL_CHECK(n >= 0, "nccl: negative element count ", n);
  return static_cast<size_t>(n);
}

}  // namespace

NcclCommunicator::NcclCommunicator(const GroupPtr& bootstrap, int device) : device_(device) {
  COIL_CHECK(bootstrap, "NcclCommunicator: no bootstrap group");
  int devices = 0;
  const cudaError_t e = cudaGetDeviceCount(&devices);
  COIL_CHECK(e == cudaSuccess && devices > 0, "NcclCommunicator: no CUDA device on rank ",
             bootstrap->rank(), " (", cudaGetErrorString(e), ")");
  COIL_CHECK(device >= 0 && device < devices, "NcclCommunicator: device ", device,
             " is not one of the ", devices, " CUDA devices");
  check_cuda(cudaSetDevice(device), "cudaSetDevice");
  ncclUniqueId id;
  std::memset(&id, 0, sizeof(id));
  if (bootstrap->rank() == 0) check_nccl(ncclGetUniqueId(&id), "ncclGetUniqueId");
  Tensor bytes = zeros({static_cast<int64_t>(sizeof(id) / sizeof(int32_t))}, Options(kI32));
  std::memcpy(bytes.raw_data(), &id, sizeof(id));
  bootstrap->broadcast(bytes, 0, blocking())->wait();
  std::memcpy(&id, bytes.raw_data(), sizeof(id));
  ncclComm_t comm;
  check_nccl(ncclCommInitRank(&comm, bootstrap->size(), id, bootstrap->rank()), "ncclCommInitRank");
  comm_ = comm;
  rank_ = bootstrap->rank();
  size_ = bootstrap->size();
}

NcclCommunicator::~NcclCommunicator() {
  if (comm_) ncclCommDestroy(as_comm(comm_));
}

void NcclCommunicator::all_reduce(void* buf, int64_t count, DType t, ReduceOp op, void* stream) {
  check_nccl(ncclAllReduce(buf, buf, count_of(count), nccl_type(t), nccl_op(op, t), as_comm(comm_),
                           as_stream(stream)),
             "ncclAllReduce");
}

void NcclCommunicator::all_gather(const void* in, void* out, int64_t count, DType t, void* stream) {
  check_nccl(
      ncclAllGather(in, out, count_of(count), nccl_type(t), as_comm(comm_), as_stream(stream)),
      "ncclAllGather");
}

void NcclCommunicator::all_gather_v(const void* in, void* out, const std::vector<int64_t>& counts,
                                    DType t, void* stream) {
  COIL_CHECK(static_cast<int>(counts.size()) == size_, "nccl all_gather_v: counts need ", size_,
             " entries");
  const size_t es = dtype_size(t);
  char* dst = static_cast<char*>(out);
  check_nccl(ncclGroupStart(), "ncclGroupStart");
  for (int r = 0; r < size_; ++r) {
    if (counts[rank_] > 0)
      check_nccl(
          ncclSend(in, count_of(counts[rank_]), nccl_type(t), r, as_comm(comm_), as_stream(stream)),
          "ncclSend");
    if (counts[r] > 0)
      check_nccl(
          ncclRecv(dst, count_of(counts[r]), nccl_type(t), r, as_comm(comm_), as_stream(stream)),
          "ncclRecv");
    dst += counts[r] * es;
  }
  check_nccl(ncclGroupEnd(), "ncclGroupEnd");
}

void NcclCommunicator::reduce_scatter(const void* in, void* out, int64_t count, DType t,
                                      ReduceOp op, void* stream) {
  check_nccl(ncclReduceScatter(in, out, count_of(count), nccl_type(t), nccl_op(op, t),
                               as_comm(comm_), as_stream(stream)),
             "ncclReduceScatter");
}

void NcclCommunicator::all_to_all(const void* in, const std::vector<int64_t>& send_counts,
                                  void* out, const std::vector<int64_t>& recv_counts, DType t,
                                  void* stream) {
  COIL_CHECK(static_cast<int>(send_counts.size()) == size_ &&
                 static_cast<int>(recv_counts.size()) == size_,
             "nccl all_to_all: counts need ", size_, " entries");
  const size_t es = dtype_size(t);
  const char* src = static_cast<const char*>(in);
  char* dst = static_cast<char*>(out);
  check_nccl(ncclGroupStart(), "ncclGroupStart");
  for (int r = 0; r < size_; ++r) {
    if (send_counts[r] > 0)
      check_nccl(ncclSend(src, count_of(send_counts[r]), nccl_type(t), r, as_comm(comm_),
                          as_stream(stream)),
                 "ncclSend");
    if (recv_counts[r] > 0)
      check_nccl(ncclRecv(dst, count_of(recv_counts[r]), nccl_type(t), r, as_comm(comm_),
                          as_stream(stream)),
                 "ncclRecv");
    src += send_counts[r] * es;
    dst += recv_counts[r] * es;
  }
  check_nccl(ncclGroupEnd(), "ncclGroupEnd");
}

void NcclCommunicator::broadcast(void* buf, int64_t count, DType t, int root, void* stream) {
  COIL_CHECK(root >= 0 && root < size_, "nccl broadcast: root ", root, " out of range");
  check_nccl(ncclBroadcast(buf, buf, count_of(count), nccl_type(t), root, as_comm(comm_),
                           as_stream(stream)),
             "ncclBroadcast");
}

void NcclCommunicator::send(const void* buf, int64_t count, DType t, int peer, void* stream) {
  check_nccl(ncclSend(buf, count_of(count), nccl_type(t), peer, as_comm(comm_), as_stream(stream)),
             "ncclSend");
}

void NcclCommunicator::recv(void* buf, int64_t count, DType t, int peer, void* stream) {
  check_nccl(ncclRecv(buf, count_of(count), nccl_type(t), peer, as_comm(comm_), as_stream(stream)),
             "ncclRecv");
}

std::unique_ptr<NcclCommunicator> NcclCommunicator::split(int color, int key) {
  ncclComm_t nc = nullptr;
  check_nccl(ncclCommSplit(as_comm(comm_), color, key, &nc, nullptr), "ncclCommSplit");
  std::unique_ptr<NcclCommunicator> c(new NcclCommunicator());
  c->comm_ = nc;
  c->device_ = device_;
  check_nccl(ncclCommUserRank(nc, &c->rank_), "ncclCommUserRank");
  check_nccl(ncclCommCount(nc, &c->size_), "ncclCommCount");
  return c;
}

void NcclCommunicator::synchronize(void* stream) {
  check_cuda(cudaStreamSynchronize(as_stream(stream)), "cudaStreamSynchronize");
}

}  // namespace coil::dist
