// Collectives of a coil ProcessGroup (MPI backend) against the raw MPI call on the same buffers,
// interleaved call by call, like nccl-tests. Run under mpirun:
//   mpirun -np 2 ./build/bench/bench_collectives      (and -np 4)
// One line per (collective, message size):
//   bench=<collective> ranks= bytes= median_ms= algbw_gbs= busbw_gbs= vs_mpi=
// bytes is the whole message: the reduced buffer (all_reduce), the gathered output (all_gather),
// the input that is reduced and scattered (reduce_scatter), each rank's send buffer
// (all_to_all). algbw = bytes / time; busbw scales it by nccl-tests' factor for the collective
// (2 (n-1) / n for all_reduce, (n-1) / n for the others). vs_mpi = raw MPI time / coil time (1.0:
// no overhead), for the blocking call (dist::blocking(): it runs on the caller's thread when the
// group's communication thread is idle). async_* time the asynchronous form, Work and wait(),
// which hands the call to the communication thread and back. A call's time is the slowest
// rank's, each repetition starting after a barrier.
#include <mpi.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <coil/coil.h>

#include "bench_common.h"

namespace {

namespace dist = coil::dist;
using coil::Tensor;

double slowest(double ms) {
  double m = 0;
  MPI_Allreduce(&ms, &m, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return m;
}

// Times the calls in turn, `reps` times each, every call after a barrier; returns the medians.
std::vector<double> time_calls(const std::vector<std::function<void()>>& fns, int reps) {
  for (const auto& f : fns) f();
  std::vector<std::vector<double>> t(fns.size());
  for (int r = 0; r < reps; ++r)
    for (size_t i = 0; i < fns.size(); ++i) {
      MPI_Barrier(MPI_COMM_WORLD);
      const double t0 = bench::now_ms();
      fns[i]();
      t[i].push_back(slowest(bench::now_ms() - t0));
    }
  std::vector<double> med;
  for (auto& v : t) med.push_back(bench::median(v));
  return med;
}

}  // namespace

int main(int argc, char** argv) {
  dist::init();
  auto w = dist::world();
  if (w->backend() != "mpi") {
    std::printf("bench_collectives: run it under mpirun, e.g. mpirun -np 2 %s\n", argv[0]);
    return 0;
  }
  const int n = w->size(), me = w->rank();
  const int64_t max_bytes = argc > 1 ? std::atoll(argv[1]) : (int64_t(256) << 20);
  for (const std::string op : {"all_reduce", "all_gather", "reduce_scatter", "all_to_all"}) {
    for (int64_t bytes = 4096; bytes <= max_bytes; bytes *= 4) {
      const int64_t elems = bytes / 4;  // float32
      const int64_t rows = elems / n;   // per-rank block (bytes is a multiple of 4 * n)
      const int reps = static_cast<int>(std::clamp<int64_t>((int64_t(1) << 28) / bytes, 5, 200));
      std::function<void()> mpi_call;
      std::function<void(const dist::CallOptions&)> coil_call;
      Tensor buf, in, out;
      if (op == "all_reduce") {
        buf = coil::ones({elems});
        coil_call = [&](const dist::CallOptions& o) {
          w->all_reduce(buf, dist::ReduceOp::kSum, o)->wait();
        };
        mpi_call = [&] {
          MPI_Allreduce(MPI_IN_PLACE, buf.raw_data(), static_cast<int>(elems), MPI_FLOAT, MPI_SUM,
                        MPI_COMM_WORLD);
        };
      } else if (op == "all_gather") {
        in = coil::ones({rows});
        out = coil::zeros({rows * n});
        coil_call = [&](const dist::CallOptions& o) { w->all_gather(out, in, {}, o)->wait(); };
        mpi_call = [&] {
          MPI_Allgather(in.raw_data(), static_cast<int>(rows), MPI_FLOAT, out.raw_data(),
                        static_cast<int>(rows), MPI_FLOAT, MPI_COMM_WORLD);
        };
      } else if (op == "reduce_scatter") {
        in = coil::ones({rows * n});
        out = coil::zeros({rows});
        coil_call = [&](const dist::CallOptions& o) {
          w->reduce_scatter(out, in, dist::ReduceOp::kSum, {}, o)->wait();
        };
        mpi_call = [&] {
          MPI_Reduce_scatter_block(in.raw_data(), out.raw_data(), static_cast<int>(rows), MPI_FLOAT,
                                   MPI_SUM, MPI_COMM_WORLD);
        };
      } else {
        in = coil::ones({rows * n});
        out = coil::zeros({rows * n});
        coil_call = [&](const dist::CallOptions& o) { w->all_to_all(out, in, {}, {}, o)->wait(); };
        mpi_call = [&] {
          MPI_Alltoall(in.raw_data(), static_cast<int>(rows), MPI_FLOAT, out.raw_data(),
                       static_cast<int>(rows), MPI_FLOAT, MPI_COMM_WORLD);
        };
      }
      const std::vector<double> med = time_calls(
          {[&] { coil_call(dist::blocking()); }, [&] { coil_call({}); }, mpi_call}, reps);
      const double coil_ms = med[0], async_ms = med[1], mpi_ms = med[2];
      const double factor = op == "all_reduce" ? 2.0 * (n - 1) / n : double(n - 1) / n;
      const double algbw = bytes / (coil_ms * 1e-3) / 1e9;
      if (me == 0) {
        std::printf(
            "bench=%s ranks=%d bytes=%lld median_ms=%.4f algbw_gbs=%.3f busbw_gbs=%.3f "
            "mpi_median_ms=%.4f vs_mpi=%.3f async_median_ms=%.4f async_vs_mpi=%.3f\n",
            op.c_str(), n, static_cast<long long>(bytes), coil_ms, algbw, algbw * factor, mpi_ms,
            mpi_ms / coil_ms, async_ms, mpi_ms / async_ms);
        std::fflush(stdout);
      }
    }
  }
  return 0;
}
