// Training a byte-level language model: the data (a memory-mapped text file split into train
// and validation), the loop (AdamW with the papers' recipe, warmup + cosine, gradient clipping)
// and resumable checkpoints. examples/train_lm is a command line around these.
#pragma once
#include <memory>
#include <string>

#include "mamba.h"
#include "optim/optim.h"

namespace coil::nn {

// Bytes of a text file (mapped read-only) or of every file of a directory (read and joined, in
// name order, skipping symlinks and fortune's *.dat indexes). The first (1 - val_fraction) of the
// bytes train, the rest validate.
class ByteCorpus {
 public:
  static ByteCorpus open(const std::string& path, double val_fraction = 0.05);
  int64_t size() const { return size_; }
  int64_t train_size() const { return train_size_; }
  int64_t val_size() const { return size_ - train_size_; }
  const uint8_t* data() const { return data_; }
  const std::string& path() const { return path_; }
  // Batch number `index` of random windows of L + 1 bytes from one split: (batch, L + 1) int64.
  // Window starts come from Philox(seed, counter), so a batch depends only on (seed, index):
  // the data position of a run is the index of its next batch.
  Tensor batch(bool validation, int64_t batch, int64_t L, uint64_t seed, int64_t index) const;

 private:
  std::shared_ptr<void> keep_;  // the mapping or the joined bytes
  const uint8_t* data_ = nullptr;
  int64_t size_ = 0, train_size_ = 0;
  std::string path_;
};

struct TrainOptions {
  int64_t batch = 16;
  int64_t seq_len = 256;
  int64_t total_steps = 1000;  // the schedule's length
  int64_t warmup_steps = 50;
  double lr = 3e-3;
  double min_lr_ratio = 0.1;
  double weight_decay = 0.1;
  double beta1 = 0.9, beta2 = 0.95;
  double grad_clip = 1.0;
  // A step whose gradients hold NaN or Inf is skipped (no update, counted in skipped_steps())
  // instead of spreading the NaN into every parameter; the data and the schedule move on.
  bool skip_nonfinite = true;
  // Mixed precision: the forward and the loss under AutocastGuard(kBF16) (core/autocast.h);
  // parameters, gradients and AdamW's state stay float32.
  bool autocast_bf16 = false;
  uint64_t data_seed = 1234;
  // Under mpirun: every rank trains on its equal slice of each batch (batch / world size rows)
  // and gradients are averaged over the world (nn::DataParallel), so the run computes what one
  // process computes on the whole batch. Only rank 0 writes checkpoints.
  bool data_parallel = false;
  // Under mpirun: the sequence of every batch split over this many ranks (context
  // parallelism, dist/context_parallel.h), the world being a (dp, cp) mesh with the cp ranks
  // adjacent; the remaining world_size / cp ranks split the batch (data parallelism). Gradients
  // are summed over cp and averaged over dp, so the run computes what one process computes on
  // the whole batch.
  int64_t context_parallel = 1;
  dist::StatePassing state_passing = dist::StatePassing::kAllGather;
};

class DataParallel;

class LMTrainer {
 public:
  LMTrainer(std::shared_ptr<MambaLM> model, ByteCorpus data, TrainOptions options);
  ~LMTrainer();
  // One optimizer step on the next training batch; returns its loss in nats per byte (the
  // whole batch's, averaged over the ranks under data parallelism).
  double train_step();
  // Mean validation loss (nats per byte) over `batches` fixed validation batches.
  double evaluate(int64_t batches) const;
  int64_t step() const { return step_; }
  // Steps skipped by the non-finite guard so far (saved in checkpoints).
  int64_t skipped_steps() const { return skipped_; }
  // The gradients' norm of the last step (before clipping; NaN or Inf when it was skipped).
  double last_grad_norm() const { return last_norm_; }
  double lr() const { return opt_->lr(); }
  int64_t tokens_per_step() const { return o_.batch * o_.seq_len; }
  MambaLM& model() const { return *model_; }
  const TrainOptions& options() const { return o_; }

  // Model, optimizer, RNG, data position, step and options in one safetensors file with a
  // format version, written to a temporary name, flushed and renamed.
  void save_checkpoint(const std::string& path) const;
  // Restores everything save_checkpoint wrote: the following steps give bit-identical losses
  // to a run that was never interrupted.
  void load_checkpoint(const std::string& path);
  static constexpr int64_t kCheckpointVersion = 1;

 private:
  std::shared_ptr<MambaLM> model_;
  ByteCorpus data_;
  TrainOptions o_;
  std::unique_ptr<optim::AdamW> opt_;
  std::unique_ptr<optim::LRScheduler> sched_;
  std::unique_ptr<DataParallel> dp_;  // set when gradients are reduced over more than one rank
  dist::GroupPtr cp_group_;           // set under context parallelism over more than one rank
  int64_t dp_size_ = 1, dp_rank_ = 0;
  // This rank's loss (sum over its tokens / tokens of the global batch) on a window (rows,
  // L + 1); under context parallelism on this rank's piece of the sequence.
  Tensor local_loss(const Tensor& window, int64_t global_rows) const;
  int64_t step_ = 0, skipped_ = 0;
  double last_norm_ = 0;
};

}  // namespace coil::nn
