#include "process_group.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>

#include "../autograd/grad_mode.h"
#include "../ops/creation.h"
#include "backend.h"

namespace coil::dist {

const char* reduce_op_name(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
      return "sum";
    case ReduceOp::kAvg:
      return "avg";
    case ReduceOp::kMax:
      return "max";
    case ReduceOp::kMin:
      return "min";
  }
  return "?";
}

std::vector<int64_t> shard_sizes(int64_t n, int64_t k) {
  COIL_CHECK(k > 0 && n >= 0, "shard_sizes: need n >= 0 and k > 0, got n = ", n, ", k = ", k);
  const int64_t chunk = (n + k - 1) / k;
  std::vector<int64_t> s(k);
  for (int64_t i = 0; i < k; ++i) s[i] = std::clamp<int64_t>(n - i * chunk, 0, chunk);
  return s;
}

namespace detail {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

void CallWork::finish(std::exception_ptr error) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    done_ = true;
    error_ = error;
  }
  cv_.notify_all();
}

void CallWork::wait(double timeout_s) {
  std::unique_lock<std::mutex> lk(mu_);
  if (timeout_s > 0) {
    if (!cv_.wait_for(lk, std::chrono::duration<double>(timeout_s), [&] { return done_; }))
      fail(what_, ": wait timed out after ", timeout_s, " s");
  } else {
    cv_.wait(lk, [&] { return done_; });
  }
  if (error_) std::rethrow_exception(error_);
}

bool CallWork::is_completed() {
  std::lock_guard<std::mutex> lk(mu_);
  return done_;
}

void Executor::post(std::function<void()> job) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    COIL_CHECK(!stopping_, "dist: the communication thread has stopped (after finalize?)");
    jobs_.push_back(std::move(job));
    if (!thread_.joinable()) thread_ = std::thread([this] { loop(); });
  }
  cv_.notify_one();
}

bool Executor::run_inline_if_idle(const std::function<void()>& job) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (busy_ || !jobs_.empty() || stopping_) return false;
    busy_ = true;
  }
  job();
  bool queued;
  {
    std::lock_guard<std::mutex> lk(mu_);
    busy_ = false;
    queued = !jobs_.empty() || stopping_;
  }
  if (queued) cv_.notify_one();  // waking the idle thread for nothing costs a context switch
  return true;
}

void Executor::stop() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stopping_ = true;
  }
  cv_.notify_one();
  if (thread_.joinable()) thread_.join();
}

void Executor::loop() {
  NoGradGuard no_grad;  // the copies a call makes are never part of a graph
  for (;;) {
    std::function<void()> job;
    {
      std::unique_lock<std::mutex> lk(mu_);
      cv_.wait(lk, [&] { return (stopping_ && !busy_) || (!jobs_.empty() && !busy_); });
      if (jobs_.empty()) return;
      job = std::move(jobs_.front());
      jobs_.pop_front();
      busy_ = true;
    }
    job();
    {
      std::lock_guard<std::mutex> lk(mu_);
      busy_ = false;
    }
  }
}

}  // namespace detail

// ---- validation, shared by every backend ----
namespace {

void check_tensor(const std::string& where, const Tensor& t, const char* arg) {
  COIL_CHECK(t.defined(), where, ": ", arg, " is undefined");
  COIL_CHECK(!t.is_distributed(), where, ": ", arg,
             " is a DTensor; pass its local tensor (to_local())");
}

void check_reduce(const std::string& where, DType t, ReduceOp op) {
  COIL_CHECK(op != ReduceOp::kAvg || is_floating(t), where, ": avg needs a floating dtype, got ",
             t);
}

// Rows of dim 0 and the elements in one row.
int64_t row_elems(const Tensor& t) {
  int64_t n = 1;
  for (int64_t d = 1; d < t.dim(); ++d) n *= t.size(d);
  return n;
}

void check_rows_like(const std::string& where, const Tensor& out, const Tensor& in) {
  COIL_CHECK(in.dim() >= 1, where, ": input needs at least one dimension, got shape ",
             in.shape_str());
  COIL_CHECK(out.dtype() == in.dtype(), where, ": output is ", out.dtype(), ", input is ",
             in.dtype());
  bool same = out.dim() == in.dim();
  for (int64_t d = 1; same && d < in.dim(); ++d) same = out.size(d) == in.size(d);
  COIL_CHECK(same, where, ": output shape ", out.shape_str(), " and input shape ", in.shape_str(),
             " differ beyond dim 0");
}

std::vector<int64_t> even_counts(const std::string& where, int64_t rows, int size,
                                 const char* what) {
  COIL_CHECK(rows % size == 0, where, ": ", what, " has ", rows, " rows, which do not split ",
             "evenly over ", size, " ranks; pass counts");
  return std::vector<int64_t>(size, rows / size);
}

void check_counts(const std::string& where, const std::vector<int64_t>& c, int size,
                  const char* name) {
  COIL_CHECK(static_cast<int>(c.size()) == size, where, ": ", name, " has ", c.size(),
             " entries for a group of ", size);
  for (size_t r = 0; r < c.size(); ++r)
    COIL_CHECK(c[r] >= 0, where, ": ", name, "[", r, "] = ", c[r], " is negative");
}

int64_t total(const std::vector<int64_t>& c) { return std::accumulate(c.begin(), c.end(), 0LL); }

std::vector<int64_t> scaled(const std::vector<int64_t>& c, int64_t f) {
  std::vector<int64_t> r(c.size());
  for (size_t i = 0; i < c.size(); ++i) r[i] = c[i] * f;
  return r;
}

// The buffer a call works on, on the backend's device (home): the tensor itself when it is there,
// contiguous (and not a half type that is reduced); else a contiguous copy there (widened to f32
// for reductions of halves): a CUDA tensor in an MPI group is staged through the host, a CPU
// tensor in an NCCL group through the GPU. write_back() copies the result into the caller's
// tensor when they differ.
struct Buffer {
  Tensor user, buf;
  Buffer(const Tensor& t, bool widen, bool read, Device home) : user(t) {
    NoGradGuard ng;
    if (t.device() != home) {
      buf = read ? t.to(home) : zeros(t.sizes(), Options(t.dtype(), home));
      if (widen && is_half(t.dtype())) buf = buf.to(kF32);
    } else if (widen && is_half(t.dtype())) {
      buf = t.to(kF32);
    } else if (!t.is_contiguous()) {
      buf = read ? t.contiguous() : zeros(t.sizes(), Options(t.dtype(), home));
    } else {
      buf = t;
    }
  }
  void* data() const { return buf.raw_data(); }
  void write_back() {
    if (buf.is_same(user)) return;
    NoGradGuard ng;
    user.copy_(buf.device() == user.device() ? buf : buf.to(user.device()));
  }
};

void divide(Tensor& buf, int size) {
  if (size > 1) buf.div_(full({}, static_cast<double>(size), Options(buf.dtype(), buf.device())));
}

}  // namespace

ProcessGroup::ProcessGroup(int rank, std::vector<int> world_ranks)
    : rank_(rank), world_ranks_(std::move(world_ranks)) {
  if (const char* env = std::getenv("COIL_DIST_TIMEOUT")) timeout_s_ = std::atof(env);
  if (const char* env = std::getenv("COIL_DIST_CHECK")) check_calls_ = std::string(env) != "0";
}

// ---- the cross-rank call check ----
namespace {
enum CallKind : int64_t {
  kAllReduce = 1,
  kAllGather,
  kReduceScatter,
  kAllToAll,
  kBroadcast,
  kBarrier
};
// Words of a call's description: kind, dtype, reduce op, root, elements per row (all of them
// for all_reduce and broadcast), this rank's rows, a hash of the row counts; then the send and
// the receive counts of an all_to_all (zeros otherwise), one per rank.
constexpr size_t kMetaHead = 7;

int64_t hash_counts(const std::vector<int64_t>& c) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a over the values
  for (int64_t v : c) h = (h ^ static_cast<uint64_t>(v)) * 1099511628211ull;
  return static_cast<int64_t>(h >> 1);
}

std::string describe_call(const int64_t* m) {
  static const char* kinds[] = {"?",          "all_reduce", "all_gather", "reduce_scatter",
                                "all_to_all", "broadcast",  "barrier"};
  const int64_t k = m[0] >= 1 && m[0] <= 6 ? m[0] : 0;
  if (k == kBarrier) return "barrier";
  std::string s = std::string(kinds[k]) + " of " +
                  (m[1] >= 0 && m[1] < kNumDTypes ? dtype_name(static_cast<DType>(m[1])) : "?");
  if (k == kAllReduce || k == kBroadcast)
    s += ", " + std::to_string(m[4]) + " elements";
  else
    s += ", " + std::to_string(m[5]) + " rows of " + std::to_string(m[4]) + " elements";
  if (m[2] >= 0) s += std::string(", ") + reduce_op_name(static_cast<ReduceOp>(m[2]));
  if (m[3] >= 0) s += ", root " + std::to_string(m[3]);
  return s;
}

// Exchanges the ranks' descriptions and throws on every rank if they disagree.
void verify_call(ProcessGroup::Transport& tr, const std::string& what,
                 const std::vector<int64_t>& meta, int n, double deadline) {
  if (meta.empty()) return;
  const size_t len = meta.size();
  std::vector<int64_t> all(len * static_cast<size_t>(n));
  tr.all_gather(meta.data(), all.data(),
                std::vector<int64_t>(static_cast<size_t>(n), static_cast<int64_t>(len * 8)),
                deadline);
  auto at = [&](int r) { return all.data() + static_cast<size_t>(r) * len; };
  bool same = true;
  for (int r = 1; r < n && same; ++r)
    for (size_t i = 0; i < kMetaHead && same; ++i) {
      // all_gather's rows differ by design (the shared counts are compared through the hash)
      if (i == 5 && at(0)[0] == kAllGather) continue;
      same = at(r)[i] == at(0)[i];
    }
  if (same && at(0)[0] == kAllToAll)  // what r sends to j is what j expects from r
    for (int r = 0; r < n && same; ++r)
      for (int j = 0; j < n && same; ++j) same = at(r)[kMetaHead + j] == at(j)[kMetaHead + n + r];
  if (same) return;
  std::string calls;
  for (int r = 0; r < n; ++r) {
    calls += "\n  rank " + std::to_string(r) + ": " + describe_call(at(r));
    if (at(r)[0] == kAllToAll) {
      calls += ", sends";
      for (int j = 0; j < n; ++j) calls += " " + std::to_string(at(r)[kMetaHead + j]);
      calls += " rows, receives";
      for (int j = 0; j < n; ++j) calls += " " + std::to_string(at(r)[kMetaHead + n + j]);
    }
  }
  fail(what, ": the ranks' calls do not match, so nothing was sent (COIL_DIST_CHECK):", calls);
}
}  // namespace

std::vector<int64_t> ProcessGroup::call_meta(int kind, DType t, int64_t op, int64_t root,
                                             int64_t row_elems, int64_t rows,
                                             const std::vector<int64_t>& counts,
                                             const std::vector<int64_t>& send,
                                             const std::vector<int64_t>& recv) const {
  if (!check_calls_ || size() == 1) return {};
  const size_t n = static_cast<size_t>(size());
  std::vector<int64_t> m(kMetaHead + 2 * n, 0);
  m[0] = kind;
  m[1] = static_cast<int64_t>(t);
  m[2] = op;
  m[3] = root;
  m[4] = row_elems;
  m[5] = rows;
  m[6] = hash_counts(counts);
  for (size_t i = 0; i < send.size() && i < n; ++i) m[kMetaHead + i] = send[i];
  for (size_t i = 0; i < recv.size() && i < n; ++i) m[kMetaHead + n + i] = recv[i];
  return m;
}

std::string ProcessGroup::where(const std::string& op) const {
  return op + " (rank " + std::to_string(rank_) + " of " + std::to_string(size()) + ", " +
         backend() + ")";
}

double ProcessGroup::deadline_for(const CallOptions& o) const {
  const double t = o.timeout_s > 0 ? o.timeout_s : timeout_s_;
  // a duration here; the job turns it into a deadline when it starts (detail::deadline_from)
  return t > 0 ? t : (o.async_op ? detail::kBackground : 0);
}

WorkPtr ProcessGroup::all_reduce(Tensor& t, ReduceOp op, CallOptions o) {
  const std::string w = where("all_reduce");
  check_tensor(w, t, "tensor");
  check_reduce(w, t.dtype(), op);
  auto b = std::make_shared<Buffer>(t, true, true, home_device());
  const double timeout = deadline_for(o);
  const int n = size();
  bytes_sent_ += static_cast<int64_t>(t.nbytes());
  auto meta = call_meta(kAllReduce, t.dtype(), static_cast<int64_t>(op), -1, t.numel(), 1, {});
  return submit(
      w,
      [b, op, timeout, n, w, meta](Transport& tr) {
        const double dl = detail::deadline_from(timeout);
        verify_call(tr, w, meta, n, dl);
        tr.all_reduce(b->data(), b->buf.numel(), b->buf.dtype(),
                      op == ReduceOp::kAvg ? ReduceOp::kSum : op, dl);
        if (op == ReduceOp::kAvg) divide(b->buf, n);
        b->write_back();
      },
      o.async_op);
}

WorkPtr ProcessGroup::all_gather(Tensor& out, const Tensor& in, const std::vector<int64_t>& counts,
                                 CallOptions o) {
  const std::string w = where("all_gather");
  check_tensor(w, in, "input");
  check_tensor(w, out, "output");
  check_rows_like(w, out, in);
  std::vector<int64_t> c = counts.empty() ? std::vector<int64_t>(size(), in.size(0)) : counts;
  check_counts(w, c, size(), "counts");
  COIL_CHECK(c[rank()] == in.size(0), w, ": this rank's input has ", in.size(0),
             " rows but counts[", rank(), "] = ", c[rank()]);
  COIL_CHECK(out.size(0) == total(c), w, ": output has ", out.size(0), " rows, counts sum to ",
             total(c));
  auto src = std::make_shared<Buffer>(in, false, true, home_device());
  auto dst = std::make_shared<Buffer>(out, false, false, home_device());
  const auto bytes = scaled(c, row_elems(in) * static_cast<int64_t>(in.element_size()));
  const double timeout = deadline_for(o);
  bytes_sent_ += static_cast<int64_t>(in.nbytes());
  auto meta = call_meta(kAllGather, in.dtype(), -1, -1, row_elems(in), in.size(0), c);
  const int n = size();
  return submit(
      w,
      [src, dst, bytes, timeout, w, meta, n](Transport& tr) {
        const double dl = detail::deadline_from(timeout);
        verify_call(tr, w, meta, n, dl);
        tr.all_gather(src->data(), dst->data(), bytes, dl);
        dst->write_back();
      },
      o.async_op);
}

WorkPtr ProcessGroup::reduce_scatter(Tensor& out, const Tensor& in, ReduceOp op,
                                     const std::vector<int64_t>& counts, CallOptions o) {
  const std::string w = where("reduce_scatter");
  check_tensor(w, in, "input");
  check_tensor(w, out, "output");
  check_rows_like(w, out, in);
  check_reduce(w, in.dtype(), op);
  std::vector<int64_t> c = counts.empty() ? even_counts(w, in.size(0), size(), "input") : counts;
  check_counts(w, c, size(), "counts");
  COIL_CHECK(total(c) == in.size(0), w, ": counts sum to ", total(c), ", input has ", in.size(0),
             " rows");
  COIL_CHECK(out.size(0) == c[rank()], w, ": output has ", out.size(0), " rows, counts[", rank(),
             "] = ", c[rank()]);
  auto src = std::make_shared<Buffer>(in, true, true, home_device());
  auto dst = std::make_shared<Buffer>(out, true, false, home_device());
  const auto elems = scaled(c, row_elems(in));
  const double timeout = deadline_for(o);
  bytes_sent_ += static_cast<int64_t>(in.nbytes());
  const int n = size();
  auto meta = call_meta(kReduceScatter, in.dtype(), static_cast<int64_t>(op), -1, row_elems(in),
                        in.size(0), c);
  return submit(
      w,
      [src, dst, elems, op, timeout, n, w, meta](Transport& tr) {
        const double dl = detail::deadline_from(timeout);
        verify_call(tr, w, meta, n, dl);
        tr.reduce_scatter(src->data(), dst->data(), elems, src->buf.dtype(),
                          op == ReduceOp::kAvg ? ReduceOp::kSum : op, dl);
        if (op == ReduceOp::kAvg) divide(dst->buf, n);
        dst->write_back();
      },
      o.async_op);
}

WorkPtr ProcessGroup::all_to_all(Tensor& out, const Tensor& in,
                                 const std::vector<int64_t>& send_counts,
                                 const std::vector<int64_t>& recv_counts, CallOptions o) {
  const std::string w = where("all_to_all");
  check_tensor(w, in, "input");
  check_tensor(w, out, "output");
  check_rows_like(w, out, in);
  auto sc = send_counts.empty() ? even_counts(w, in.size(0), size(), "input") : send_counts;
  auto rc = recv_counts.empty() ? even_counts(w, out.size(0), size(), "output") : recv_counts;
  check_counts(w, sc, size(), "send_counts");
  check_counts(w, rc, size(), "recv_counts");
  COIL_CHECK(total(sc) == in.size(0), w, ": send_counts sum to ", total(sc), ", input has ",
             in.size(0), " rows");
  COIL_CHECK(total(rc) == out.size(0), w, ": recv_counts sum to ", total(rc), ", output has ",
             out.size(0), " rows");
  auto src = std::make_shared<Buffer>(in, false, true, home_device());
  auto dst = std::make_shared<Buffer>(out, false, false, home_device());
  const int64_t rb = row_elems(in) * static_cast<int64_t>(in.element_size());
  const auto sb = scaled(sc, rb), rbytes = scaled(rc, rb);
  const double timeout = deadline_for(o);
  const bool even = send_counts.empty() && recv_counts.empty();
  bytes_sent_ += static_cast<int64_t>(in.nbytes());
  auto meta = call_meta(kAllToAll, in.dtype(), -1, -1, row_elems(in), even ? 0 : 1, {}, sc, rc);
  const int n = size();
  return submit(
      w,
      [src, dst, sb, rbytes, even, timeout, w, meta, n](Transport& tr) {
        const double dl = detail::deadline_from(timeout);
        verify_call(tr, w, meta, n, dl);
        tr.all_to_all(src->data(), sb, dst->data(), rbytes, even, dl);
        dst->write_back();
      },
      o.async_op);
}

WorkPtr ProcessGroup::broadcast(Tensor& t, int root, CallOptions o) {
  const std::string w = where("broadcast");
  check_tensor(w, t, "tensor");
  COIL_CHECK(root >= 0 && root < size(), w, ": root ", root, " is not a rank of a group of ",
             size());
  auto b = std::make_shared<Buffer>(t, false, rank() == root, home_device());
  const double timeout = deadline_for(o);
  if (rank() == root) bytes_sent_ += static_cast<int64_t>(t.nbytes());
  auto meta = call_meta(kBroadcast, t.dtype(), -1, root, t.numel(), 1, {});
  const int n = size();
  return submit(
      w,
      [b, root, timeout, w, meta, n](Transport& tr) {
        const double dl = detail::deadline_from(timeout);
        verify_call(tr, w, meta, n, dl);
        tr.broadcast(b->data(), static_cast<int64_t>(b->buf.nbytes()), root, dl);
        b->write_back();
      },
      o.async_op);
}

WorkPtr ProcessGroup::barrier(CallOptions o) {
  const double timeout = deadline_for(o);
  const std::string w = where("barrier");
  auto meta = call_meta(kBarrier, kF32, -1, -1, 0, 0, {});
  const int n = size();
  return submit(
      w,
      [timeout, w, meta, n](Transport& tr) {
        const double dl = detail::deadline_from(timeout);
        verify_call(tr, w, meta, n, dl);
        tr.barrier(dl);
      },
      o.async_op);
}

GroupPtr ProcessGroup::split(int color, int key) {
  COIL_CHECK(color >= 0, where("split"), ": color must be >= 0, got ", color);
  return split_impl(color, key);
}

WorkPtr ProcessGroup::send(const Tensor& t, int dst, int tag) {
  const std::string w = where("send");
  check_tensor(w, t, "tensor");
  COIL_CHECK(dst >= 0 && dst < size() && dst != rank(), w, ": dst ", dst,
             " must be another rank of the group (size ", size(), ")");
  COIL_CHECK(tag >= 0, w, ": tag must be >= 0, got ", tag);
  Tensor c = t.device() == home_device() ? t.contiguous() : t.detach().to(home_device());
  bytes_sent_ += static_cast<int64_t>(c.nbytes());
  return send_bytes(c.raw_data(), static_cast<int64_t>(c.nbytes()), dst, tag, [c] {});
}

WorkPtr ProcessGroup::recv(Tensor& t, int src, int tag) {
  const std::string w = where("recv");
  check_tensor(w, t, "tensor");
  COIL_CHECK(src >= 0 && src < size() && src != rank(), w, ": src ", src,
             " must be another rank of the group (size ", size(), ")");
  COIL_CHECK(tag >= 0, w, ": tag must be >= 0, got ", tag);
  auto b = std::make_shared<Buffer>(t, false, false, home_device());
  return recv_bytes(b->data(), static_cast<int64_t>(b->buf.nbytes()), src, tag,
                    [b] { b->write_back(); });
}

// ---- the world of one ----
namespace {

class LocalTransport final : public ProcessGroup::Transport {
 public:
  void all_reduce(void*, int64_t, DType, ReduceOp, double) override {}
  void all_gather(const void* in, void* out, const std::vector<int64_t>& bytes, double) override {
    copy(out, in, bytes[0]);
  }
  void reduce_scatter(const void* in, void* out, const std::vector<int64_t>& counts, DType t,
                      ReduceOp, double) override {
    copy(out, in, counts[0] * static_cast<int64_t>(dtype_size(t)));
  }
  void all_to_all(const void* in, const std::vector<int64_t>& send_bytes, void* out,
                  const std::vector<int64_t>&, bool, double) override {
    copy(out, in, send_bytes[0]);
  }
  void broadcast(void*, int64_t, int, double) override {}
  void barrier(double) override {}

 private:
  static void copy(void* dst, const void* src, int64_t n) {
    if (n > 0 && dst != src) std::memcpy(dst, src, static_cast<size_t>(n));
  }
};

class LocalGroup final : public ProcessGroup {
 public:
  LocalGroup() : ProcessGroup(0, {0}) {}
  std::string backend() const override { return "local"; }

 protected:
  WorkPtr submit(const std::string& what, std::function<void(Transport&)> job, bool) override {
    auto work = std::make_shared<detail::CallWork>(what);
    std::exception_ptr err;
    try {
      job(transport_);
    } catch (...) {
      err = std::current_exception();
    }
    work->finish(err);
    return work;
  }
  WorkPtr send_bytes(const void*, int64_t, int, int, std::function<void()>) override {
    fail("send: a world of one has no other rank");
  }
  WorkPtr recv_bytes(void*, int64_t, int, int, std::function<void()>) override {
    fail("recv: a world of one has no other rank");
  }
  GroupPtr split_impl(int, int) override { return std::make_shared<LocalGroup>(); }

 private:
  LocalTransport transport_;
};

std::mutex g_world_mu;
GroupPtr g_world;
bool g_mpi = false;

[[noreturn]] void on_terminate() {
  std::string msg = "unknown exception";
  if (std::exception_ptr e = std::current_exception()) {
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& ex) {
      msg = ex.what();
    } catch (...) {
    }
  } else {
    msg = "std::terminate called without an exception";
  }
  const GroupPtr w = g_world;
  std::fprintf(stderr, "coil.dist: rank %d of %d stops the job: %s\n", w ? w->rank() : 0,
               w ? w->size() : 1, msg.c_str());
  std::fflush(stderr);
  detail::mpi_abort_if_running();
  std::abort();
}

void finalize_at_exit() { finalize(); }

}  // namespace

void init() {
  std::lock_guard<std::mutex> lk(g_world_mu);
  if (g_world) return;
  if (detail::mpi_launched()) {
    g_world = detail::mpi_init_world();
    g_mpi = true;
  } else {
    g_world = std::make_shared<LocalGroup>();
  }
  std::set_terminate(on_terminate);
  static bool registered = false;
  if (!registered) {
    std::atexit(finalize_at_exit);
    registered = true;
  }
}

bool is_initialized() {
  std::lock_guard<std::mutex> lk(g_world_mu);
  return g_world != nullptr;
}

GroupPtr world() {
  init();
  return g_world;
}
int rank() { return world()->rank(); }
int world_size() { return world()->size(); }

void finalize() {
  std::lock_guard<std::mutex> lk(g_world_mu);
  if (!g_world) return;
  g_world.reset();
  if (g_mpi) detail::mpi_finalize();
  g_mpi = false;
}

GroupPtr new_group(const std::vector<int>& ranks) {
  GroupPtr w = world();
  COIL_CHECK(!ranks.empty(), "new_group: no ranks given");
  for (size_t i = 0; i < ranks.size(); ++i) {
    COIL_CHECK(ranks[i] >= 0 && ranks[i] < w->size(), "new_group: rank ", ranks[i],
               " is not in the world of ", w->size());
    COIL_CHECK(i == 0 || ranks[i] > ranks[i - 1], "new_group: ranks must be sorted and distinct");
  }
  const bool member = std::find(ranks.begin(), ranks.end(), w->rank()) != ranks.end();
  GroupPtr g = w->split(member ? 0 : 1, w->rank());
  return member ? g : nullptr;
}

CallOptions blocking() {
  CallOptions o;
  o.async_op = false;
  return o;
}

void all_reduce(Tensor& t, ReduceOp op, const GroupPtr& g) {
  (g ? g : world())->all_reduce(t, op, blocking())->wait();
}
void broadcast(Tensor& t, int root, const GroupPtr& g) {
  (g ? g : world())->broadcast(t, root, blocking())->wait();
}
void barrier(const GroupPtr& g) { (g ? g : world())->barrier(blocking())->wait(); }

}  // namespace coil::dist
