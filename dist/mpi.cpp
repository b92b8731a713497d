// The MPI backend for CPU tensors. Collectives run on one communication thread per group
// (MPI_THREAD_MULTIPLE), in the order they were called, as blocking MPI calls; with a deadline
// they are the non-blocking forms polled until it passes. Point-to-point calls are posted from
// the caller's thread and completed by Work::wait.
#include <mpi.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdlib>
#include <set>

#include "backend.h"

namespace coil::dist::detail {
namespace {

void check_mpi(int rc, const char* call) {
  if (rc == MPI_SUCCESS) return;
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  fail("mpi: ", call, " failed: ", std::string(msg, len));
}

int as_int(int64_t v, const char* what) {
  COIL_CHECK(v >= 0 && v <= INT_MAX, "mpi: ", what, " of ", v, " exceeds MPI's int counts");
  return static_cast<int>(v);
}

MPI_Datatype mpi_type(DType t) {
  switch (t) {
    case kF32:
      return MPI_FLOAT;
    case kF64:
      return MPI_DOUBLE;
    case kI32:
      return MPI_INT32_T;
    case kI64:
      return MPI_INT64_T;
    case kBool:
      return MPI_C_BOOL;
    default:
      return MPI_UINT16_T;  // halves only move; reductions widen them first
  }
}

MPI_Op mpi_op(ReduceOp op, DType t) {
  if (t == kBool) return op == ReduceOp::kMin ? MPI_LAND : MPI_LOR;
  switch (op) {
    case ReduceOp::kMax:
      return MPI_MAX;
    case ReduceOp::kMin:
      return MPI_MIN;
    default:
      return MPI_SUM;
  }
}

// Polls a non-blocking call until it completes or the deadline passes (a negative deadline: none;
// the call runs in the background and yields the core between polls).
void complete_by(MPI_Request& req, double deadline) {
  const int spin = deadline < 0 ? 4 : 64;
  for (int spins = 0;; ++spins) {
    int done = 0;
    check_mpi(MPI_Test(&req, &done, MPI_STATUS_IGNORE), "MPI_Test");
    if (done) return;
    if (deadline > 0 && now_s() > deadline)
      fail("timed out: the call did not complete before its deadline; the group can no ",
           "longer be used (MPI cannot cancel a collective)");
    if (spins > spin) sched_yield();
  }
}

std::vector<int> ints(const std::vector<int64_t>& v, const char* what) {
  std::vector<int> r(v.size());
  for (size_t i = 0; i < v.size(); ++i) r[i] = as_int(v[i], what);
  return r;
}
std::vector<int> displacements(const std::vector<int>& counts) {
  std::vector<int> d(counts.size());
  int64_t off = 0;
  for (size_t i = 0; i < counts.size(); ++i) {
    d[i] = as_int(off, "displacement");
    off += counts[i];
  }
  return d;
}
bool all_equal(const std::vector<int>& v) {
  return std::all_of(v.begin(), v.end(), [&](int x) { return x == v[0]; });
}

class MpiGroup;
std::mutex g_groups_mu;
std::set<MpiGroup*> g_groups;  // live groups, stopped by finalize

class P2PWork final : public Work {
 public:
  P2PWork(std::string what, MPI_Request req, double timeout, std::function<void()> done)
      : what_(std::move(what)), req_(req), timeout_(timeout), done_fn_(std::move(done)) {}
  void wait(double timeout_s) override {
    std::lock_guard<std::mutex> lk(mu_);
    if (done_) return;
    const double t = timeout_s > 0 ? timeout_s : timeout_;
    try {
      if (t > 0)
        complete_by(req_, now_s() + t);
      else
        check_mpi(MPI_Wait(&req_, MPI_STATUS_IGNORE), "MPI_Wait");
    } catch (const Error& e) {
      fail(what_, ": ", e.what());
    }
    done_ = true;
    done_fn_();
    done_fn_ = nullptr;
  }
  bool is_completed() override {
    std::lock_guard<std::mutex> lk(mu_);
    if (done_) return true;
    int flag = 0;
    check_mpi(MPI_Test(&req_, &flag, MPI_STATUS_IGNORE), "MPI_Test");
    if (flag) {
      done_ = true;
      done_fn_();
      done_fn_ = nullptr;
    }
    return done_;
  }

 private:
  std::string what_;
  MPI_Request req_;
  double timeout_;
  std::function<void()> done_fn_;
  std::mutex mu_;
  bool done_ = false;
};

class MpiGroup final : public ProcessGroup, ProcessGroup::Transport {
 public:
  MpiGroup(MPI_Comm comm, int rank, std::vector<int> world_ranks)
      : ProcessGroup(rank, std::move(world_ranks)), comm_(comm) {
    std::lock_guard<std::mutex> lk(g_groups_mu);
    g_groups.insert(this);
  }
  ~MpiGroup() override {
    {
      std::lock_guard<std::mutex> lk(g_groups_mu);
      g_groups.erase(this);
    }
    shutdown();
  }
  // Runs what is queued, then frees the communicator (before MPI_Finalize).
  void shutdown() {
    exec_.stop();
    int fin = 0;
    MPI_Finalized(&fin);
    if (!fin && comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
    comm_ = MPI_COMM_NULL;
  }
  std::string backend() const override { return "mpi"; }

  // ---- Transport ----
  void all_reduce(void* buf, int64_t n, DType t, ReduceOp op, double deadline) override {
    const int64_t step = INT_MAX / 2;  // MPI counts are ints: long buffers go in pieces
    char* p = static_cast<char*>(buf);
    for (int64_t i = 0; i < n; i += step) {
      const int cnt = static_cast<int>(std::min(step, n - i));
      void* at = p + i * static_cast<int64_t>(dtype_size(t));
      if (deadline != 0) {
        MPI_Request r;
        check_mpi(MPI_Iallreduce(MPI_IN_PLACE, at, cnt, mpi_type(t), mpi_op(op, t), comm_, &r),
                  "MPI_Iallreduce");
        complete_by(r, deadline);
      } else {
        check_mpi(MPI_Allreduce(MPI_IN_PLACE, at, cnt, mpi_type(t), mpi_op(op, t), comm_),
                  "MPI_Allreduce");
      }
    }
  }
  void all_gather(const void* in, void* out, const std::vector<int64_t>& bytes,
                  double deadline) override {
    const std::vector<int> c = ints(bytes, "bytes per rank");
    const int mine = c[rank()];
    MPI_Request r;
    if (all_equal(c)) {
      if (deadline != 0) {
        check_mpi(MPI_Iallgather(in, mine, MPI_BYTE, out, mine, MPI_BYTE, comm_, &r),
                  "MPI_Iallgather");
        return complete_by(r, deadline);
      }
      return check_mpi(MPI_Allgather(in, mine, MPI_BYTE, out, mine, MPI_BYTE, comm_),
                       "MPI_Allgather");
    }
    const std::vector<int> d = displacements(c);
    if (deadline != 0) {
      check_mpi(MPI_Iallgatherv(in, mine, MPI_BYTE, out, c.data(), d.data(), MPI_BYTE, comm_, &r),
                "MPI_Iallgatherv");
      return complete_by(r, deadline);
    }
    check_mpi(MPI_Allgatherv(in, mine, MPI_BYTE, out, c.data(), d.data(), MPI_BYTE, comm_),
              "MPI_Allgatherv");
  }
  void reduce_scatter(const void* in, void* out, const std::vector<int64_t>& counts, DType t,
                      ReduceOp op, double deadline) override {
    const std::vector<int> c = ints(counts, "elements per rank");
    MPI_Request r;
    if (all_equal(c)) {
      if (deadline != 0) {
        check_mpi(MPI_Ireduce_scatter_block(in, out, c[0], mpi_type(t), mpi_op(op, t), comm_, &r),
                  "MPI_Ireduce_scatter_block");
        return complete_by(r, deadline);
      }
      return check_mpi(MPI_Reduce_scatter_block(in, out, c[0], mpi_type(t), mpi_op(op, t), comm_),
                       "MPI_Reduce_scatter_block");
    }
    if (deadline != 0) {
      check_mpi(MPI_Ireduce_scatter(in, out, c.data(), mpi_type(t), mpi_op(op, t), comm_, &r),
                "MPI_Ireduce_scatter");
      return complete_by(r, deadline);
    }
    check_mpi(MPI_Reduce_scatter(in, out, c.data(), mpi_type(t), mpi_op(op, t), comm_),
              "MPI_Reduce_scatter");
  }
  void all_to_all(const void* in, const std::vector<int64_t>& send_bytes, void* out,
                  const std::vector<int64_t>& recv_bytes, bool even, double deadline) override {
    const std::vector<int> sc = ints(send_bytes, "bytes to a rank");
    const std::vector<int> rc = ints(recv_bytes, "bytes from a rank");
    MPI_Request r;
    if (even) {
      if (deadline != 0) {
        check_mpi(MPI_Ialltoall(in, sc[0], MPI_BYTE, out, sc[0], MPI_BYTE, comm_, &r),
                  "MPI_Ialltoall");
        return complete_by(r, deadline);
      }
      return check_mpi(MPI_Alltoall(in, sc[0], MPI_BYTE, out, sc[0], MPI_BYTE, comm_),
                       "MPI_Alltoall");
    }
    const std::vector<int> sd = displacements(sc), rd = displacements(rc);
    if (deadline != 0) {
      check_mpi(MPI_Ialltoallv(in, sc.data(), sd.data(), MPI_BYTE, out, rc.data(), rd.data(),
                               MPI_BYTE, comm_, &r),
                "MPI_Ialltoallv");
      return complete_by(r, deadline);
    }
    check_mpi(MPI_Alltoallv(in, sc.data(), sd.data(), MPI_BYTE, out, rc.data(), rd.data(), MPI_BYTE,
                            comm_),
              "MPI_Alltoallv");
  }
  void broadcast(void* buf, int64_t bytes, int root, double deadline) override {
    const int n = as_int(bytes, "broadcast bytes");
    if (deadline != 0) {
      MPI_Request r;
      check_mpi(MPI_Ibcast(buf, n, MPI_BYTE, root, comm_, &r), "MPI_Ibcast");
      return complete_by(r, deadline);
    }
    check_mpi(MPI_Bcast(buf, n, MPI_BYTE, root, comm_), "MPI_Bcast");
  }
  void barrier(double deadline) override {
    if (deadline != 0) {
      MPI_Request r;
      check_mpi(MPI_Ibarrier(comm_, &r), "MPI_Ibarrier");
      return complete_by(r, deadline);
    }
    check_mpi(MPI_Barrier(comm_), "MPI_Barrier");
  }

 protected:
  WorkPtr submit(const std::string& what, std::function<void(ProcessGroup::Transport&)> job,
                 bool async_op) override {
    COIL_CHECK(!broken_, what, ": the group can no longer be used after an earlier call timed ",
               "out");
    auto work = std::make_shared<CallWork>(what);
    std::function<void()> run = [this, work, what, job = std::move(job)] {
      std::exception_ptr err;
      try {
        COIL_CHECK(!broken_, what, ": the group can no longer be used after an earlier call ",
                   "timed out");
        job(*this);
      } catch (const Error& e) {
        if (std::string(e.what()).find("timed out") != std::string::npos) broken_ = true;
        try {
          fail(what, ": ", e.what());
        } catch (...) {
          err = std::current_exception();
        }
      } catch (...) {
        err = std::current_exception();
      }
      work->finish(err);
    };
    if (async_op || !exec_.run_inline_if_idle(run)) exec_.post(std::move(run));
    return work;
  }
  WorkPtr send_bytes(const void* p, int64_t bytes, int dst, int tag,
                     std::function<void()> done) override {
    MPI_Request r;
    check_mpi(MPI_Isend(p, as_int(bytes, "send bytes"), MPI_BYTE, dst, tag, comm_, &r),
              "MPI_Isend");
    return std::make_shared<P2PWork>(where("send"), r, timeout(), std::move(done));
  }
  WorkPtr recv_bytes(void* p, int64_t bytes, int src, int tag,
                     std::function<void()> done) override {
    MPI_Request r;
    check_mpi(MPI_Irecv(p, as_int(bytes, "recv bytes"), MPI_BYTE, src, tag, comm_, &r),
              "MPI_Irecv");
    return std::make_shared<P2PWork>(where("recv"), r, timeout(), std::move(done));
  }
  GroupPtr split_impl(int color, int key) override {
    // On the communication thread: a split is a collective, ordered with the queued ones.
    GroupPtr result;
    submit(
        where("split"),
        [&](ProcessGroup::Transport&) {
          MPI_Comm nc;
          check_mpi(MPI_Comm_split(comm_, color, key, &nc), "MPI_Comm_split");
          int r = 0, n = 0;
          MPI_Comm_rank(nc, &r);
          MPI_Comm_size(nc, &n);
          MPI_Group wg, ng;
          MPI_Comm_group(MPI_COMM_WORLD, &wg);
          MPI_Comm_group(nc, &ng);
          std::vector<int> mine(n), theirs(n);
          for (int i = 0; i < n; ++i) mine[i] = i;
          MPI_Group_translate_ranks(ng, n, mine.data(), wg, theirs.data());
          MPI_Group_free(&wg);
          MPI_Group_free(&ng);
          result = std::make_shared<MpiGroup>(nc, r, theirs);
        },
        false)
        ->wait();
    return result;
  }

 private:
  MPI_Comm comm_;
  Executor exec_;
  std::atomic<bool> broken_{false};
};

}  // namespace

bool mpi_launched() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE"})
    if (std::getenv(v)) return true;
  return false;
}

GroupPtr mpi_init_world() {
  int inited = 0;
  MPI_Initialized(&inited);
  if (!inited) {
    int provided = 0;
    check_mpi(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_MULTIPLE, &provided), "MPI_Init_thread");
    COIL_CHECK(provided >= MPI_THREAD_MULTIPLE,
               "dist::init: this MPI library does not support MPI_THREAD_MULTIPLE (gave level ",
               provided, ")");
  }
  MPI_Comm comm;
  check_mpi(MPI_Comm_dup(MPI_COMM_WORLD, &comm), "MPI_Comm_dup");
  int r = 0, n = 0;
  MPI_Comm_rank(comm, &r);
  MPI_Comm_size(comm, &n);
  std::vector<int> ranks(n);
  for (int i = 0; i < n; ++i) ranks[i] = i;
  return std::make_shared<MpiGroup>(comm, r, ranks);
}

void mpi_finalize() {
  {
    std::lock_guard<std::mutex> lk(g_groups_mu);
    for (MpiGroup* g : g_groups) g->shutdown();
  }
  int fin = 0;
  MPI_Finalized(&fin);
  if (!fin) MPI_Finalize();
}

bool mpi_abort_if_running() {
  int inited = 0, fin = 0;
  MPI_Initialized(&inited);
  MPI_Finalized(&fin);
  if (!inited || fin) return false;
  MPI_Abort(MPI_COMM_WORLD, 1);
  return true;
}

}  // namespace coil::dist::detail
