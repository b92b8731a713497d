// Process groups: the collectives every parallelism stands on.
//
//   coil::dist::init();                        // mpirun launch: MPI; otherwise a world of one
//   auto world = coil::dist::world();
//   world->all_reduce(grad, dist::ReduceOp::kSum)->wait();
//
// Every call returns a Work handle at once; the call runs in order on the group's communication
// thread, so a caller overlaps it with computation and waits later. Tensors of any coil dtype, on
// any device (a CUDA tensor in an MPI group is staged through the host; dist/nccl/nccl_group.h
// has the group that keeps them on the GPU); bf16 and f16 sums and averages are computed in
// float32 and rounded once.
// A process started without a launcher is a world of one and every call works unchanged.
#pragma once
#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "../core/tensor.h"

namespace coil::dist {

enum class ReduceOp { kSum, kAvg, kMax, kMin };
const char* reduce_op_name(ReduceOp op);

// Completion of one call. wait() rethrows the call's error (a coil::Error naming the call).
class Work {
 public:
  virtual ~Work() = default;
  // Blocks until the call is done; timeout_s > 0 bounds the wait (then a coil::Error).
  virtual void wait(double timeout_s = 0) = 0;
  virtual bool is_completed() = 0;
};
using WorkPtr = std::shared_ptr<Work>;

struct CallOptions {
  // Seconds the collective may take once it starts; 0 takes the group's default (set_timeout,
  // or the COIL_DIST_TIMEOUT environment variable; none when unset). A collective past its
  // deadline fails with a coil::Error and leaves the group unusable, as MPI cannot cancel it.
  // Like the counts, whether a call has a timeout must agree on every rank: with one, MPI runs
  // the non-blocking form of the collective, which never matches the blocking one.
  double timeout_s = 0;
  // false: the caller waits for the result at once, so when the group's communication thread
  // is idle the call runs on the caller's thread (no hand-off; the returned Work is complete).
  // The blocking forms (dist::all_reduce ...) and the differentiable collectives pass false.
  // true: MPI runs the non-blocking form, polled with the core yielded between polls, so the
  // communication thread leaves the core to the computation it overlaps (1 core per rank);
  // async_op must therefore agree on every rank too, as a timeout must.
  bool async_op = true;
};

class ProcessGroup;
using GroupPtr = std::shared_ptr<ProcessGroup>;

class ProcessGroup {
 public:
  virtual ~ProcessGroup() = default;
  int rank() const { return rank_; }
  int size() const { return static_cast<int>(world_ranks_.size()); }
  // World ranks of the members, in this group's rank order.
  const std::vector<int>& world_ranks() const { return world_ranks_; }
  virtual std::string backend() const = 0;
  // The device the backend moves buffers on: the CPU for MPI and the world of one, the GPU of an
  // NCCL group. Tensors on another device are staged there and copied back (slower; correct).
  virtual Device home_device() const { return Device(kCPU); }
  void set_timeout(double seconds) { timeout_s_ = seconds; }
  double timeout() const { return timeout_s_; }
  // Cross-rank check of every collective: before the data moves, the ranks exchange a few
  // integers describing their call (which collective, dtype, element counts, reduce op, root,
  // row counts) and, if any rank's call differs, every rank throws a coil::Error that lists
  // each rank's call, and nothing is sent. On by default; COIL_DIST_CHECK=0 turns it off (the
  // choice must agree on every rank). Costs one small all_gather per call.
  void set_check_calls(bool on) { check_calls_ = on; }
  bool check_calls() const { return check_calls_; }
  // Bytes this rank has handed to the group's calls so far (each call's input: the tensor of
  // all_reduce, the input of all_gather, reduce_scatter and all_to_all, a broadcast root's
  // tensor, a send's): a meter for tests and benchmarks of what a scheme communicates.
  int64_t bytes_sent() const { return bytes_sent_.load(); }

  // ---- collectives (every member calls them, in the same order) ----
  // In place: every rank ends with the reduction of all ranks' tensors.
  WorkPtr all_reduce(Tensor& t, ReduceOp op = ReduceOp::kSum, CallOptions o = {});
  // out = the members' inputs concatenated along dim 0, in rank order. counts[r] is rank r's
  // number of rows (uneven and empty shards allowed); empty counts means every rank sends
  // in.size(0) rows. out must be contiguous with sum(counts) rows.
  WorkPtr all_gather(Tensor& out, const Tensor& in, const std::vector<int64_t>& counts = {},
                     CallOptions o = {});
  // in holds one block of rows per rank along dim 0 (counts[r] rows for rank r; empty: equal
  // blocks); out gets this rank's block reduced over all ranks.
  WorkPtr reduce_scatter(Tensor& out, const Tensor& in, ReduceOp op = ReduceOp::kSum,
                         const std::vector<int64_t>& counts = {}, CallOptions o = {});
  // in: send_counts[r] rows for rank r, in rank order; out: recv_counts[r] rows from rank r.
  // Empty counts split dim 0 into equal blocks.
  WorkPtr all_to_all(Tensor& out, const Tensor& in, const std::vector<int64_t>& send_counts = {},
                     const std::vector<int64_t>& recv_counts = {}, CallOptions o = {});
  WorkPtr broadcast(Tensor& t, int root, CallOptions o = {});
  WorkPtr barrier(CallOptions o = {});
  // The members that pass the same color form a new group, ranked by (key, rank). Collective.
  GroupPtr split(int color, int key);

  // ---- point to point (the two ranks only; matched by tag) ----
  WorkPtr send(const Tensor& t, int dst, int tag = 0);
  WorkPtr recv(Tensor& t, int src, int tag = 0);

  // Backend transport, on contiguous buffers. `deadline` is a steady-clock time in seconds;
  // 0: none; negative: none, and the call is asynchronous (CallOptions::async_op): MPI runs its
  // non-blocking form and polls it, yielding the core between polls, so a communication thread
  // overlapping computation does not take a core from it. Reductions see f32/f64/i32/i64/bool only
  // (halves are widened first).
  struct Transport {
    virtual ~Transport() = default;
    virtual void all_reduce(void* buf, int64_t n, DType t, ReduceOp op, double deadline) = 0;
    virtual void all_gather(const void* in, void* out, const std::vector<int64_t>& bytes,
                            double deadline) = 0;
    virtual void reduce_scatter(const void* in, void* out, const std::vector<int64_t>& counts,
                                DType t, ReduceOp op, double deadline) = 0;
    // even: every rank passed no counts (equal blocks everywhere), so the plain all-to-all
    // matches on all ranks; per-rank counts must take the v-form on every rank.
    virtual void all_to_all(const void* in, const std::vector<int64_t>& send_bytes, void* out,
                            const std::vector<int64_t>& recv_bytes, bool even, double deadline) = 0;
    virtual void broadcast(void* buf, int64_t bytes, int root, double deadline) = 0;
    virtual void barrier(double deadline) = 0;
  };

 protected:
  ProcessGroup(int rank, std::vector<int> world_ranks);
  // Runs `job` in call order (on the communication thread, or inline when !async_op and the
  // thread is idle) and returns its Work.
  virtual WorkPtr submit(const std::string& what, std::function<void(Transport&)> job,
                         bool async_op) = 0;
  virtual WorkPtr send_bytes(const void* p, int64_t bytes, int dst, int tag,
                             std::function<void()> done) = 0;
  virtual WorkPtr recv_bytes(void* p, int64_t bytes, int src, int tag,
                             std::function<void()> done) = 0;
  virtual GroupPtr split_impl(int color, int key) = 0;
  std::string where(const std::string& op) const;  // "all_reduce (rank 1 of 2, mpi)"
  double deadline_for(const CallOptions& o) const;

 private:
  int rank_;
  std::vector<int> world_ranks_;
  double timeout_s_ = 0;
  bool check_calls_ = true;
  std::atomic<int64_t> bytes_sent_{0};
  // The description of a call that check_calls exchanges (empty when it is off or alone).
  std::vector<int64_t> call_meta(int kind, DType t, int64_t op, int64_t root, int64_t row_elems,
                                 int64_t rows, const std::vector<int64_t>& counts,
                                 const std::vector<int64_t>& send = {},
                                 const std::vector<int64_t>& recv = {}) const;
};

// ---- the world ----
// Starts the distributed runtime once: under mpirun (or another MPI launcher) an MPI world,
// otherwise a world of one. It also makes an uncaught exception on any rank stop the whole job
// with that rank's message instead of leaving the others waiting.
void init();
bool is_initialized();
GroupPtr world();  // init() first if needed
int rank();
int world_size();
// Ends the runtime (also run at exit): stops the communication threads, finalises MPI.
void finalize();
// The group of the given world ranks (a sorted subset); collective over the world.
GroupPtr new_group(const std::vector<int>& ranks);

// How a dimension of n elements is split over k shards: torch.chunk's rule (ceil(n / k) each,
// the last ones smaller or empty), the rule DTensor's Shard placement uses too.
std::vector<int64_t> shard_sizes(int64_t n, int64_t k);

// CallOptions for a call whose result is waited for at once (async_op = false).
CallOptions blocking();
// Blocking forms on the world (or `g`), for scripts: dist::all_reduce(loss).
void all_reduce(Tensor& t, ReduceOp op = ReduceOp::kSum, const GroupPtr& g = nullptr);
void broadcast(Tensor& t, int root, const GroupPtr& g = nullptr);
void barrier(const GroupPtr& g = nullptr);

}  // namespace coil::dist
