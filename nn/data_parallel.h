// Data parallelism: each rank runs the whole model on its part of the batch; the gradients are
// averaged over the ranks in buckets, each bucket's all_reduce started on the group's
// communication thread as soon as the backward pass has produced all its gradients, so it
// overlaps the rest of the backward pass.
//
//   nn::DataParallel dp(*model);                // broadcasts rank 0's parameters and buffers
//   loss.backward();
//   dp.finish_gradient_sync();                  // waits for the buckets, writes the averages
//   optimizer.step();
//
// With equal per-rank batches the averaged gradient is the gradient of the mean loss over the
// global batch, so training matches one process on the whole batch.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "../dist/process_group.h"
#include "module.h"

namespace coil::nn {

struct DataParallelOptions {
  dist::GroupPtr group;        // the data-parallel group; default: the world
  double bucket_mb = 25;       // gradient bytes per bucket (PyTorch DDP's default)
  bool broadcast_init = true;  // start every replica from rank 0's parameters and buffers
  // Parameters that are DTensors (expert weights sharded over an "ep" group) stay out of the
  // buckets: each rank holds its own piece, whose gradient already gathers every token that
  // reached it. finish_gradient_sync sums that piece's gradient over shard_replicas (the ranks
  // holding the same piece, the "dp" group of a dp x ep mesh; null: no replicas) and divides it
  // by the group's size, so it too becomes the gradient of the mean loss over the global batch.
  dist::GroupPtr shard_replicas;
};

class DataParallel {
 public:
  explicit DataParallel(Module& module, DataParallelOptions o = {});
  ~DataParallel();
  DataParallel(const DataParallel&) = delete;
  DataParallel& operator=(const DataParallel&) = delete;

  // After backward: launches the buckets still waiting (parameters that got no gradient count
  // as ready), waits for every all_reduce and writes the averaged gradients into .grad.
  void finish_gradient_sync();
  int num_buckets() const;
  // Milliseconds finish_gradient_sync spent waiting for communication (what backward did not
  // hide), last call.
  double exposed_comm_ms() const;
  // What happened in the current (or last) step, in order: "launch <bucket>" as each all_reduce
  // starts, and the marks the caller adds ("backward done"). For tests and profiling.
  std::vector<std::string> events() const;
  void mark(const std::string& event);

  struct State;

 private:
  std::shared_ptr<State> state_;
};

}  // namespace coil::nn
