#include "lm_trainer.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "../core/autocast.h"
#include "../autograd/autograd.h"
#include "../dist/device_mesh.h"
#include "../core/error.h"
#include "../core/rng.h"
#include "../ops/ops.h"
#include "../dist/dtensor.h"
#include "data_parallel.h"
#include "io/file.h"
#include "train_state.h"
#include "io/json.h"
#include "io/safetensors.h"

namespace coil::nn {

// ---- data ----

ByteCorpus ByteCorpus::open(const std::string& path, double val_fraction) {
  namespace fs = std::filesystem;
  COIL_CHECK(val_fraction > 0 && val_fraction < 1,
             "ByteCorpus: val_fraction must be in (0, 1), got ", val_fraction);
  ByteCorpus c;
  c.path_ = path;
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    std::vector<fs::path> files;
    for (auto& e : fs::directory_iterator(path, ec))
      if (e.is_regular_file() && !e.is_symlink() && e.path().extension() != ".dat")
        files.push_back(e.path());
    std::sort(files.begin(), files.end());
    auto text = std::make_shared<std::string>();
    for (auto& f : files) *text += io::read_file(f.string());
    c.data_ = reinterpret_cast<const uint8_t*>(text->data());
    c.size_ = static_cast<int64_t>(text->size());
    c.keep_ = text;
  } else {
    int fd = ::open(path.c_str(), O_RDONLY);
    COIL_CHECK(fd >= 0, "ByteCorpus: cannot open '", path, "'");
    struct stat st {};
    if (fstat(fd, &st) != 0 || st.st_size <= 0) {
      ::close(fd);
      fail("ByteCorpus: '", path, "' is empty or unreadable");
    }
    void* p = mmap(nullptr, static_cast<size_t>(st.st_size), PROT_READ, MAP_PRIVATE, fd, 0);
    ::close(fd);
    COIL_CHECK(p != MAP_FAILED, "ByteCorpus: cannot map '", path, "'");
    const size_t n = static_cast<size_t>(st.st_size);
    c.keep_ = std::shared_ptr<void>(p, [n](void* q) { munmap(q, n); });
    c.data_ = static_cast<const uint8_t*>(p);
    c.size_ = static_cast<int64_t>(n);
  }
  c.train_size_ = static_cast<int64_t>(std::llround(c.size_ * (1 - val_fraction)));
  return c;
}

Tensor ByteCorpus::batch(bool validation, int64_t batch, int64_t L, uint64_t seed,
                         int64_t index) const {
  const int64_t base = validation ? train_size_ : 0;
  const int64_t n = validation ? val_size() : train_size_;
  COIL_CHECK(batch > 0 && L > 0 && index >= 0, "ByteCorpus::batch: batch ", batch, " and L ", L,
             " must be positive, index ", index, " non-negative");
  COIL_CHECK(n - 1 > L, "ByteCorpus::batch: the ", validation ? "validation" : "training",
             " split of '", path_, "' has ", n, " bytes, too few for windows of ",
             static_cast<uint64_t>(L) + 1);
  Tensor out = empty({batch, L + 1}, kI64);
  int64_t* o = out.data_ptr<int64_t>();
  const uint64_t span = static_cast<uint64_t>(n - L - 1) + 1;
  for (int64_t b = 0; b < batch; ++b) {
    // unsigned: a large index (a checkpoint's step) wraps the counter instead of overflowing
    auto r = philox4x32(seed, static_cast<uint64_t>(index) * static_cast<uint64_t>(batch) +
                                  static_cast<uint64_t>(b));
    uint64_t start = ((static_cast<uint64_t>(r[0]) << 32) | r[1]) % span;
    const uint8_t* src = data_ + base + start;
    for (int64_t t = 0; t <= L; ++t) o[b * (L + 1) + t] = src[t];
  }
  return out;
}

// ---- training ----

LMTrainer::LMTrainer(std::shared_ptr<MambaLM> model, ByteCorpus data, TrainOptions options)
    : model_(std::move(model)), data_(std::move(data)), o_(options) {
  COIL_CHECK(model_ != nullptr, "LMTrainer: model is null");
  auto groups = model_->weight_decay_groups();
  optim::AdamWOptions ao;
  ao.lr = o_.lr;
  ao.beta1 = o_.beta1;
  ao.beta2 = o_.beta2;
  ao.weight_decay = o_.weight_decay;
  std::vector<optim::ParamGroup> pg(2);
  pg[0].params = groups.decay;
  pg[1].params = groups.no_decay;
  pg[1].weight_decay = 0;
  opt_ = std::make_unique<optim::AdamW>(pg, ao);
  sched_ = std::make_unique<optim::LRScheduler>(
      *opt_, optim::LRSchedule::cosine(o_.warmup_steps, o_.total_steps, o_.min_lr_ratio));
  const int64_t world = dist::world_size(), cp = o_.context_parallel;
  COIL_CHECK(cp >= 1 && world % cp == 0, "LMTrainer: context_parallel ", cp,
             " must divide the world size ", world);
  if (cp > 1) {
    dist::DeviceMesh mesh({world / cp, cp}, {"dp", "cp"});
    cp_group_ = mesh.group("cp");
    dp_size_ = world / cp;
    dp_rank_ = mesh.coordinate(0);
    model_->set_context_parallel(dist::ContextParallel{cp_group_, o_.state_passing});
  } else if (o_.data_parallel) {
    dp_size_ = world;
    dp_rank_ = dist::rank();
  }
  COIL_CHECK(o_.batch % dp_size_ == 0, "LMTrainer: batch ", o_.batch,
             " does not split evenly over ", dp_size_, " data-parallel ranks");
  if (world > 1 && (o_.data_parallel || cp > 1)) dp_ = std::make_unique<DataParallel>(*model_);
}

LMTrainer::~LMTrainer() = default;

Tensor LMTrainer::local_loss(const Tensor& window, int64_t global_rows) const {
  AutocastGuard autocast(kBF16, o_.autocast_bf16);
  const int64_t b = window.size(0), L = window.size(1) - 1;
  int64_t start = 0, len = L;
  if (cp_group_) {  // this rank's piece of the sequence (torch.chunk's split)
    const auto sizes = dist::shard_sizes(L, cp_group_->size());
    for (int r = 0; r < cp_group_->rank(); ++r) start += sizes[r];
    len = sizes[cp_group_->rank()];
  }
  Tensor logits = model_->forward(window.narrow(1, start, len));
  Tensor targets = window.narrow(1, start + 1, len).reshape({b * len});
  if (!cp_group_) {
    Tensor mean = cross_entropy(logits.reshape({b * len, logits.size(2)}), targets);
    return global_rows == b ? mean : mean * (static_cast<double>(b) / global_rows);
  }
  Tensor sum = cross_entropy(logits.reshape({b * len, logits.size(2)}), targets, -100, 0.0, "sum");
  return sum / static_cast<double>(global_rows * L);
}

double LMTrainer::train_step() {
  model_->train();
  Tensor w = data_.batch(false, o_.batch, o_.seq_len, o_.data_seed, step_);
  const int64_t rows = o_.batch / dp_size_;
  if (dp_size_ > 1) w = w.narrow(0, dp_rank_ * rows, rows);  // this rank's rows
  // loss: this rank's share of the global batch's mean; the ranks' shares sum to it
  Tensor loss = local_loss(w, o_.batch);
  opt_->zero_grad();
  // DataParallel averages gradients over the world: scaled by the world size, the average is
  // the sum of the ranks' shares
  const double world = dp_ ? static_cast<double>(dist::world_size()) : 1.0;
  (world == 1 ? loss : loss * world).backward();
  double value = (dist::is_dtensor(loss) ? dist::full_tensor(loss) : loss).item<double>();
  if (dp_) {
    dp_->finish_gradient_sync();
    Tensor v = full({1}, value, Options(kF64));
    dist::all_reduce(v, dist::ReduceOp::kSum);
    value = v.item<double>();
  }
  if (o_.skip_nonfinite) {
    const optim::GuardedStep g = optim::step_if_finite(*opt_, model_->parameters(), o_.grad_clip);
    last_norm_ = g.grad_norm;
    skipped_ += g.skipped;
  } else {
    last_norm_ = o_.grad_clip > 0 ? optim::clip_grad_norm_(model_->parameters(), o_.grad_clip) : 0;
    opt_->step();
  }
  sched_->step();
  ++step_;
  return value;
}

double LMTrainer::evaluate(int64_t batches) const {
  NoGradGuard no_grad;
  model_->eval();
  double total = 0;
  for (int64_t i = 0; i < batches; ++i) {
    Tensor l = local_loss(data_.batch(true, o_.batch, o_.seq_len, o_.data_seed + 1, i), o_.batch);
    double v = (dist::is_dtensor(l) ? dist::full_tensor(l) : l).item<double>();
    if (cp_group_) {  // every dp replica evaluates the whole batch; the cp ranks add their pieces
      Tensor t = full({1}, v, Options(kF64));
      dist::all_reduce(t, dist::ReduceOp::kSum, cp_group_);
      v = t.item<double>();
    }
    total += v;
  }
  model_->train();
  return total / static_cast<double>(std::max<int64_t>(1, batches));
}

void LMTrainer::save_checkpoint(const std::string& path) const {
  if (dp_ && dist::rank() != 0) return;  // the replicas are identical: rank 0 writes
  const io::NamedTensors tensors = checkpoint_tensors(*model_, *opt_);
  RngState rng = get_rng_state();
  io::Metadata meta = {{"format", "coil.lm_checkpoint"},
                       {"format_version", std::to_string(kCheckpointVersion)},
                       {"step", std::to_string(step_)},
                       {"data_position", std::to_string(step_)},
                       {"data_seed", std::to_string(o_.data_seed)},
                       {"rng_seed", std::to_string(rng.seed)},
                       {"rng_offset", std::to_string(rng.offset)},
                       {"scheduler_step", std::to_string(sched_->last_step())},
                       {"skipped_steps", std::to_string(skipped_)},
                       {"config", model_->config().to_json()}};
  io::save_safetensors(path, tensors, meta);
}

void LMTrainer::load_checkpoint(const std::string& path) {
  io::SafetensorsFile f = io::load_safetensors(path);
  const CheckpointMeta m{f.metadata, "LMTrainer::load_checkpoint", path};
  COIL_CHECK(m.str("format") == "coil.lm_checkpoint", "LMTrainer::load_checkpoint: '", path,
             "' is not a coil training checkpoint (format '", m.str("format"), "')");
  const uint64_t version = m.u64("format_version");
  COIL_CHECK(version == kCheckpointVersion, "LMTrainer::load_checkpoint: '", path,
             "' has format_version ", version, ", this coil reads ", kCheckpointVersion);
  // Every number is read before anything changes: a bad one leaves the trainer as it was.
  const int64_t step = m.step("step"), scheduler_step = m.step("scheduler_step");
  const uint64_t data_seed = m.u64("data_seed");
  const RngState rng{m.u64("rng_seed"), m.u64("rng_offset")};
  // absent from checkpoints written before the non-finite guard existed
  const int64_t skipped = m.has("skipped_steps") ? m.step("skipped_steps") : 0;
  NamedTensors model_state;
  optim::StateDict optim_state;
  split_checkpoint_tensors(f, "LMTrainer::load_checkpoint", path, model_state, optim_state);
  try {
    model_->load_state_dict(model_state, /*strict=*/true);
    opt_->load_state_dict(optim_state);
  } catch (const Error& e) {
    fail("LMTrainer::load_checkpoint: '", path, "': ", e.what());
  }
  step_ = step;
  o_.data_seed = data_seed;
  sched_->set_step(scheduler_step);
  skipped_ = skipped;
  set_rng_state(rng);
}

}  // namespace coil::nn
