// The MoE layer (top-2 routing, SwiGLU experts of hidden 512, d_model 768, 4096 tokens),
// forward + backward, against a dense SwiGLU MLP with the same active parameters (hidden
// 2 x 512: two experts' worth):
//   ./build/bench/bench_moe
//   bench=moe experts= k= tokens= median_ms= dense_ms= vs_dense= tokens_per_s=
// vs_dense = MoE time over dense time. Under mpirun the experts spread over the ranks (expert
// parallelism), each rank routing its own 4096 tokens:
//   mpirun -np 2 ./build/bench/bench_moe
//   bench=moe_ep experts= k= tokens= ranks= median_ms= all_to_all_ms= all_to_all_share=
// all_to_all_ms: the four all_to_alls of a step (rows there and back, forward and backward)
// timed on their own with the step's counts; all_to_all_share = all_to_all_ms / median_ms.
#include <cstdio>
#include <vector>

#include <coil/coil.h>

#include "bench_common.h"

using namespace coil;

int main() {
  dist::init();
  auto world = dist::world();
  const int P = world->size();
  const int64_t T = 4096, D = 768, F = 512, k = 2;
  for (int64_t E : {8, 32}) {
    manual_seed(1);
    nn::MoEOptions o;
    o.router.num_experts = E;
    o.router.top_k = k;
    o.ffn_hidden = F;
    nn::MoE moe(D, o);
    nn::GatedMLP dense(D, k * F);
    Tensor x = randn({T, D}).requires_grad_(true);
    Tensor gy = randn({T, D});
    auto moe_step = [&] {
      Tensor y = moe.forward(x);
      (y * gy).sum().backward();
    };
    auto dense_step = [&] {
      Tensor y = dense.forward(x);
      (y * gy).sum().backward();
    };
    if (P == 1) {
      auto t = bench::time_interleaved({moe_step, dense_step}, 4000, 5, 40);
      const double ms = bench::median(t[0]), dms = bench::median(t[1]);
      std::printf(
          "bench=moe experts=%lld k=%lld tokens=%lld median_ms=%.2f dense_ms=%.2f vs_dense=%.3f "
          "tokens_per_s=%.0f\n",
          static_cast<long long>(E), static_cast<long long>(k), static_cast<long long>(T), ms, dms,
          ms / dms, T / (ms / 1000.0));
      continue;
    }
    moe.set_expert_parallel(dist::ExpertParallel{world});
    std::vector<double> steps;
    for (int r = 0; r < 6; ++r) {
      dist::barrier();
      const double t0 = bench::now_ms();
      moe_step();
      Tensor t = full({1}, bench::now_ms() - t0, Options(kF64));
      dist::all_reduce(t, dist::ReduceOp::kMax);
      if (r > 0) steps.push_back(t.item<double>());
    }
    // the step's all_to_alls on their own: this rank's rows per destination from its routing
    const std::vector<int64_t> ids = to_vector<int64_t>(moe.router->forward(x.detach()).experts);
    std::vector<int64_t> send(P, 0);
    for (int64_t e : ids) send[e / (E / P)] += 1;
    Tensor sc = tensor(send, {P}), rc = zeros({P}, Options(kI64));
    world->all_to_all(rc, sc, {}, {}, dist::blocking())->wait();
    const std::vector<int64_t> recv = to_vector<int64_t>(rc);
    int64_t nrecv = 0;
    for (int64_t v : recv) nrecv += v;
    Tensor rows = randn({T * k, D}), got = empty({nrecv, D});
    std::vector<double> comm;
    for (int r = 0; r < 6; ++r) {
      dist::barrier();
      const double t0 = bench::now_ms();
      for (int pass = 0; pass < 2; ++pass) {  // forward and backward each go there and back
        world->all_to_all(got, rows, send, recv, dist::blocking())->wait();
        world->all_to_all(rows, got, recv, send, dist::blocking())->wait();
      }
      Tensor t = full({1}, bench::now_ms() - t0, Options(kF64));
      dist::all_reduce(t, dist::ReduceOp::kMax);
      if (r > 0) comm.push_back(t.item<double>());
    }
    if (dist::rank() == 0) {
      const double ms = bench::median(steps), cms = bench::median(comm);
      std::printf(
          "bench=moe_ep experts=%lld k=%lld tokens=%lld ranks=%d median_ms=%.2f "
          "all_to_all_ms=%.2f all_to_all_share=%.3f tokens_per_s=%.0f\n",
          static_cast<long long>(E), static_cast<long long>(k), static_cast<long long>(T), P, ms,
          cms, cms / ms, P * T / (ms / 1000.0));
    }
  }
  return 0;
}
