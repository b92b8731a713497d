// Data-parallel training steps of the demo Mamba LM (4 layers, d_model 256, byte vocabulary,
// global batch 8 x 256), run under mpirun:
//   mpirun -np 2 ./build/bench/bench_data_parallel
// One line per bucket setting:
//   bench=data_parallel ranks= buckets= bucket_mb= step_ms= backward_ms= exposed_comm_ms=
//   tokens_per_s=
// backward_ms is loss.backward() (during which the buckets' all_reduces start), exposed_comm_ms
// the wait after it for the all_reduces still running (what backward did not hide), step_ms
// the whole step with the optimizer. A bucket as large as the model (one all_reduce after
// backward) is the no-overlap baseline. exposed_comm_ms is the smallest wait over the ranks
// (the last rank to finish backward waits only for communication; the others also wait for it).
// Medians over the timed steps.
#include <cstdio>
#include <string>
#include <vector>

#include <coil/coil.h>

#include "bench_common.h"

namespace {

using namespace coil;

Tensor lm_loss(const nn::MambaLM& m, const Tensor& window) {
  const int64_t b = window.size(0), L = window.size(1) - 1;
  Tensor logits = m.forward(window.narrow(1, 0, L));
  return cross_entropy(logits.reshape({b * L, logits.size(2)}),
                       window.narrow(1, 1, L).reshape({b * L}));
}

}  // namespace

int main() {
  dist::init();
  auto w = dist::world();
  if (w->backend() != "mpi") {
    std::printf(
        "bench_data_parallel: run it under mpirun, e.g. mpirun -np 2 bench_data_parallel\n");
    return 0;
  }
  const int n = w->size();
  const int64_t batch = 8, L = 256, steps = 10, warmup = 2;
  if (batch % n) {
    std::printf("bench_data_parallel: %d ranks do not split a batch of %lld\n", n,
                static_cast<long long>(batch));
    return 0;
  }
  nn::MambaConfig c;
  c.vocab_size = 256;
  c.hidden_size = 256;
  c.num_hidden_layers = 4;
  for (double bucket_mb : {1.0, 4.0, 1e6}) {
    manual_seed(0);
    auto model = std::make_shared<nn::MambaLM>(c);
    nn::DataParallelOptions o;
    o.bucket_mb = bucket_mb;
    nn::DataParallel dp(*model, o);
    optim::AdamWOptions ao;
    ao.lr = 1e-3;
    optim::AdamW opt(model->parameters(), ao);
    std::vector<double> step_ms, bwd_ms, exposed_ms;
    for (int64_t s = 0; s < warmup + steps; ++s) {
      // this rank's rows of a fixed random global batch
      manual_seed(100 + s);
      Tensor ids = randint(0, 256, {batch, L + 1}).narrow(0, w->rank() * (batch / n), batch / n);
      w->barrier(dist::blocking())->wait();
      const double t0 = bench::now_ms();
      Tensor loss = lm_loss(*model, ids);
      opt.zero_grad();
      const double t1 = bench::now_ms();
      loss.backward();
      const double t2 = bench::now_ms();
      dp.finish_gradient_sync();
      opt.step();
      const double t3 = bench::now_ms();
      if (s < warmup) continue;
      step_ms.push_back(t3 - t0);
      bwd_ms.push_back(t2 - t1);
      // the slowest rank's wait: a rank that reaches the end of backward first waits for the
      // others inside the all_reduce, which is imbalance, not communication
      Tensor e = full({1}, dp.exposed_comm_ms(), Options(kF64));
      dist::all_reduce(e, dist::ReduceOp::kMin);
      exposed_ms.push_back(e.item<double>());
    }
    if (w->rank() == 0) {
      const double step = bench::median(step_ms);
      std::printf(
          "bench=data_parallel ranks=%d model=demo-mamba buckets=%d bucket_mb=%g step_ms=%.1f "
          "backward_ms=%.1f exposed_comm_ms=%.2f tokens_per_s=%.0f\n",
          n, dp.num_buckets(), bucket_mb, step, bench::median(bwd_ms), bench::median(exposed_ms),
          batch * L / (step * 1e-3));
      std::fflush(stdout);
    }
  }
  return 0;
}
