// One rank of a data-parallel job fails in the middle of training: it throws a coil::Error or
// is killed with SIGKILL, before a step's gradient all_reduce, while the others wait inside it,
// or after it (during the next step's computation). tests/scripts/dist_faults.sh runs every
// combination under mpirun -np 4 and checks that the whole job ends promptly, with a message
// naming the failed rank, and leaves no process behind.
//
//   dist_fault throw|kill before|inside|after
#include <coil/coil.h>
#include <signal.h>

#include <chrono>
#include <cstdio>
#include <string>
#include <thread>

using namespace coil;

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: dist_fault throw|kill before|inside|after\n");
    return 2;
  }
  const std::string how = argv[1], when = argv[2];
  dist::init();
  const int rank = dist::rank();
  constexpr int kFailing = 2, kFailStep = 3;
  auto fault = [&] {
    std::fprintf(stderr, "rank %d fails (%s, %s the all_reduce of step %d)\n", rank, how.c_str(),
                 when.c_str(), kFailStep);
    std::fflush(stderr);
    if (how == "kill") ::raise(SIGKILL);
    throw Error("rank " + std::to_string(rank) + " hit a bad batch");
  };
  manual_seed(1);
  nn::Linear layer(64, 64);
  for (int step = 0; step < 8; ++step) {
    layer.zero_grad();
    layer.forward(randn({16, 64})).square().mean().backward();
    const bool failing = rank == kFailing && step == kFailStep;
    if (failing && when == "before") fault();
    if (failing && when == "inside")  // the others are already waiting in the all_reduce
      std::this_thread::sleep_for(std::chrono::milliseconds(300));
    if (failing && when == "inside") fault();
    for (const Tensor& p : layer.parameters()) {
      Tensor g = p.grad();
      dist::all_reduce(g, dist::ReduceOp::kAvg);
    }
    if (failing && when == "after") fault();
  }
  std::printf("rank %d finished all steps\n", rank);
  return 0;
}
