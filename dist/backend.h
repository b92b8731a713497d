// What the process-group backends share (internal to dist/): the Work that a communication
// thread completes, the thread itself, and the MPI entry points the world setup calls.
#pragma once
#include <condition_variable>
#include <deque>
#include <exception>
#include <mutex>
#include <thread>

#include "process_group.h"

namespace coil::dist::detail {

double now_s();  // steady clock, seconds
// A transport deadline (ProcessGroup::Transport) for a call: now + timeout with a timeout, else
// kBackground for an asynchronous call, else 0.
constexpr double kBackground = -1;
inline double deadline_from(double timeout) { return timeout > 0 ? now_s() + timeout : timeout; }

// Completed by whoever runs the call; wait() rethrows its error.
class CallWork final : public Work {
 public:
  explicit CallWork(std::string what) : what_(std::move(what)) {}
  void finish(std::exception_ptr error);
  void wait(double timeout_s = 0) override;
  bool is_completed() override;

 private:
  std::string what_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  std::exception_ptr error_;
};

// One thread running jobs in the order they were posted.
class Executor {
 public:
  Executor() = default;
  ~Executor() { stop(); }
  Executor(const Executor&) = delete;
  Executor& operator=(const Executor&) = delete;
  void post(std::function<void()> job);
  // Runs job on the caller's thread when nothing is queued or running (and keeps the thread
  // from starting another meanwhile); false, without running it, otherwise.
  bool run_inline_if_idle(const std::function<void()>& job);
  void stop();  // runs what is queued, then joins

 private:
  void loop();
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> jobs_;
  bool stopping_ = false;
  bool busy_ = false;  // a job is running (on the thread or inline)
  std::thread thread_;
};

// ---- MPI (dist/mpi.cpp) ----
bool mpi_launched();          // started by mpirun or another MPI launcher
GroupPtr mpi_init_world();    // MPI_Init_thread (thread multiple) and the world group
void mpi_finalize();          // stops the groups' threads, then MPI_Finalize
bool mpi_abort_if_running();  // MPI_Abort(world) when MPI runs; false otherwise

}  // namespace coil::dist::detail
