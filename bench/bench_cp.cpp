// Context-parallel training steps of a 4-layer Mamba-2 model (d_model 512, byte vocabulary,
// batch 1): the sequence of L tokens split over the ranks of an mpirun job, one thread each,
// against one process on the same cores (one rank, as many threads as the cp run has ranks).
//   ./build/bench/bench_cp --L 32768 --threads 2                    # cp = 1, the baseline
//   mpirun -np 2 ./build/bench/bench_cp --L 32768 --baseline-ms X --baseline-mb Y
// bench/run_cp.sh runs both and passes the baseline's figures. One line per run:
//   bench=cp mixer=mamba2 L= cp= threads= peak_activation_mb= fixed_mb= forward_ms=
//   backward_ms= sync_ms= step_ms= mem_ratio= time_ratio= longest_L_16gib= tokens_per_s=
// peak_activation_mb: the allocator's peak during forward + backward over what was in use
// before (parameters, optimizer state, communication buffers), less the parameters' gradients
// (allocated during backward; not activations), the largest over the ranks. fixed_mb: what is
// in use between steps. step_ms: forward, backward, the gradient all_reduce over the ranks and
// AdamW, median of the timed steps, the slowest rank's; forward_ms, backward_ms and sync_ms
// (the wait for the gradient all_reduce after backward) are its parts, the slowest rank's each.
// longest_L_16gib: the longest sequence that ranks with 16 GiB each could train at this cp,
// from this run's activation bytes per token (they grow linearly with a piece's length).
// Options: --steps N (timed steps after one warm-up), --passing serial, --bucket-mb X (the
// gradient all_reduce's buckets; 0: no all_reduce, for experiments).
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <coil/coil.h>

#include "bench_common.h"

using namespace coil;

int main(int argc, char** argv) {
  int64_t L = 32768, steps = 3;
  double base_ms = 0, base_mb = 0;
  int threads = 1;
  double bucket_mb = 25;
  dist::StatePassing passing = dist::StatePassing::kAllGather;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--L") L = std::stoll(v);
    if (k == "--steps") steps = std::stoll(v);
    if (k == "--threads") threads = std::stoi(v);
    if (k == "--baseline-ms") base_ms = std::stod(v);
    if (k == "--baseline-mb") base_mb = std::stod(v);
    if (k == "--bucket-mb") bucket_mb = std::stod(v);
    if (k == "--passing") passing = v == "serial" ? dist::StatePassing::kSerial : passing;
  }
  dist::init();
  set_num_threads(threads);
  auto world = dist::world();
  const int cp = world->size(), rank = world->rank();
  nn::MambaConfig c;
  c.model_type = "mamba2";
  c.vocab_size = 256;
  c.hidden_size = 512;
  c.num_hidden_layers = 4;
  c.state_size = 128;
  c.head_dim = 64;
  c.num_heads = 2 * 512 / 64;
  c.n_groups = 1;
  c.chunk_size = 256;
  manual_seed(0);
  auto model = std::make_shared<nn::MambaLM>(c);
  model->set_context_parallel(dist::ContextParallel{world, passing});
  std::unique_ptr<nn::DataParallel> dp;
  nn::DataParallelOptions dpo;
  dpo.bucket_mb = bucket_mb;
  if (cp > 1 && bucket_mb > 0)
    dp = std::make_unique<nn::DataParallel>(*model, dpo);  // sums the cp ranks' shares
  optim::AdamWOptions ao;
  ao.lr = 1e-4;
  optim::AdamW opt(model->parameters(), ao);
  const auto sizes = dist::shard_sizes(L, cp);
  int64_t start = 0;
  for (int r = 0; r < rank; ++r) start += sizes[r];
  const int64_t len = sizes[rank];

  std::vector<double> times, fwd, bwd, sync;
  double peak_mb = 0, fixed_mb = 0;
  for (int64_t s = 0; s < steps + 1; ++s) {    // the first step warms up (and allocates AdamW)
    Tensor ids = randint(0, 256, {1, L + 1});  // the same on every rank (same seed)
    dist::barrier();
    const double t0 = bench::now_ms();
    const int64_t before = memory_stats().bytes_in_use;
    reset_peak_memory();
    Tensor logits = model->forward(ids.narrow(1, start, len));
    Tensor loss = cross_entropy(logits.reshape({len, 256}),
                                ids.narrow(1, start + 1, len).reshape({len}), -100, 0.0, "sum") *
                  (static_cast<double>(cp) / static_cast<double>(L));
    logits = Tensor();
    opt.zero_grad();
    const double t1 = bench::now_ms();
    loss.backward();
    const double t2 = bench::now_ms();
    int64_t grad_bytes = 0;
    for (const Tensor& p : model->parameters()) grad_bytes += static_cast<int64_t>(p.nbytes());
    const double act = (memory_stats().peak_bytes_in_use - before - grad_bytes) / 1048576.0;
    if (dp) dp->finish_gradient_sync();
    const double t3 = bench::now_ms();
    opt.step();
    Tensor t = full({5}, 0.0, Options(kF64));
    t.data_ptr<double>()[0] = bench::now_ms() - t0;
    t.data_ptr<double>()[1] = act;
    t.data_ptr<double>()[2] = t1 - t0;
    t.data_ptr<double>()[3] = t2 - t1;
    t.data_ptr<double>()[4] = t3 - t2;
    dist::all_reduce(t, dist::ReduceOp::kMax);
    if (s > 0) {
      times.push_back(t.data_ptr<double>()[0]);
      fwd.push_back(t.data_ptr<double>()[2]);
      bwd.push_back(t.data_ptr<double>()[3]);
      sync.push_back(t.data_ptr<double>()[4]);
      peak_mb = std::max(peak_mb, t.data_ptr<double>()[1]);
      fixed_mb = memory_stats().bytes_in_use / 1048576.0;
    }
  }
  if (rank == 0) {
    const double ms = bench::median(times);
    std::printf(
        "bench=cp mixer=mamba2 L=%lld cp=%d threads=%d peak_activation_mb=%.1f fixed_mb=%.1f "
        "forward_ms=%.1f backward_ms=%.1f sync_ms=%.1f step_ms=%.1f",
        static_cast<long long>(L), cp, threads, peak_mb, fixed_mb, bench::median(fwd),
        bench::median(bwd), bench::median(sync), ms);
    if (base_ms > 0)
      std::printf(" mem_ratio=%.3f time_ratio=%.3f", peak_mb / base_mb, ms / base_ms);
    // 16 GiB per rank = fixed_mb + gradients + activations, these growing with the length
    double grad_mb = 0;
    for (const Tensor& p : model->parameters()) grad_mb += p.nbytes() / 1048576.0;
    std::printf(" longest_L_16gib=%.0f",
                static_cast<double>(L) * (16384.0 - fixed_mb - grad_mb) / peak_mb);
    std::printf(" tokens_per_s=%.0f\n", static_cast<double>(L) / (ms / 1000.0));
  }
  return 0;
}
