// Process groups at any world size: CTest runs this suite in a plain process (a world of one)
// and under mpirun -np 2 and -np 4. Every expected value is computed here from what each rank
// contributed (every rank can compute every other rank's input).
#include <chrono>
#include <thread>

#include "../test_util.h"

using namespace coil;
namespace dist = coil::dist;

namespace {

// Rank r's value at flat index i for a dtype: small integers, exact in every dtype.
double value(int r, int64_t i, DType t) {
  if (t == kBool) return ((r + i) % 3) == 0;
  return static_cast<double>((r + 1) * ((i % 7) - 3) + (i % 5));
}

Tensor filled(const Shape& shape, int r, DType t) {
  Tensor x = zeros(shape, Options(kF64));
  double* p = x.data_ptr<double>();
  for (int64_t i = 0; i < x.numel(); ++i) p[i] = value(r, i, t);
  return x.to(t);
}

double get(const Tensor& t, int64_t i) { return t.to(kF64).contiguous().data_ptr<double>()[i]; }

const DType kAll[] = {kF32, kF64, kBF16, kF16, kI32, kI64, kBool};

}  // namespace

TEST_SUITE("dist") {
  TEST_CASE("the world: ranks, size, backend") {
    auto w = dist::world();
    CHECK(dist::is_initialized());
    CHECK(w->size() >= 1);
    CHECK(w->rank() >= 0);
    CHECK(w->rank() < w->size());
    CHECK(dist::world_size() == w->size());
    CHECK(w->backend() ==
          (w->size() == 1 && !std::getenv("OMPI_COMM_WORLD_SIZE") ? "local" : "mpi"));
    CHECK(dist::shard_sizes(10, 4) == std::vector<int64_t>{3, 3, 3, 1});
    CHECK(dist::shard_sizes(2, 4) == std::vector<int64_t>{1, 1, 0, 0});
    CHECK(dist::shard_sizes(0, 2) == std::vector<int64_t>{0, 0});
  }

  TEST_CASE("all_reduce: every dtype and op against the ranks' values") {
    auto w = dist::world();
    const int n = w->size(), me = w->rank();
    for (DType t : kAll)
      for (dist::ReduceOp op : {dist::ReduceOp::kSum, dist::ReduceOp::kAvg, dist::ReduceOp::kMax,
                                dist::ReduceOp::kMin}) {
        if (op == dist::ReduceOp::kAvg && !is_floating(t)) continue;
        CAPTURE(t);
        CAPTURE(dist::reduce_op_name(op));
        Tensor x = filled({3, 5}, me, t);
        w->all_reduce(x, op)->wait();
        for (int64_t i = 0; i < 15; ++i) {
          double s = 0, mx = -1e300, mn = 1e300;
          for (int r = 0; r < n; ++r) {
            s += value(r, i, t);
            mx = std::max(mx, value(r, i, t));
            mn = std::min(mn, value(r, i, t));
          }
          double want = op == dist::ReduceOp::kSum   ? s
                        : op == dist::ReduceOp::kAvg ? s / n
                        : op == dist::ReduceOp::kMax ? mx
                                                     : mn;
          if (t == kBool) want = op == dist::ReduceOp::kMin ? mn : (mx != 0);
          // the reference rounded once to the dtype, as a reduction in f32 does
          Tensor ref = full({1}, want, Options(kF64)).to(t == kBool ? kF64 : t);
          CHECK(get(x, i) == get(ref, 0));
        }
      }
  }

  TEST_CASE("all_reduce: a non-contiguous view is reduced in place") {
    auto w = dist::world();
    Tensor base = filled({4, 6}, w->rank(), kF32);
    Tensor view = base.t();  // (6, 4), strided
    w->all_reduce(view)->wait();
    for (int64_t i = 0; i < 24; ++i) {
      double s = 0;
      for (int r = 0; r < w->size(); ++r) s += value(r, i, kF32);
      CHECK(get(base, i) == s);
    }
  }

  TEST_CASE("all_gather: even and uneven rows, empty shards included") {
    auto w = dist::world();
    const int n = w->size(), me = w->rank();
    for (DType t : kAll) {
      CAPTURE(t);
      // even: 2 rows each
      Tensor in = filled({2, 3}, me, t), out = zeros({2 * n, 3}, Options(t));
      w->all_gather(out, in)->wait();
      for (int r = 0; r < n; ++r)
        for (int64_t i = 0; i < 6; ++i) CHECK(get(out, r * 6 + i) == get(filled({2, 3}, r, t), i));
      // uneven: rank r has r rows (rank 0 none)
      std::vector<int64_t> counts(n);
      int64_t rows = 0;
      for (int r = 0; r < n; ++r) rows += counts[r] = r;
      Tensor uin = filled({me, 3}, me, t), uout = zeros({rows, 3}, Options(t));
      w->all_gather(uout, uin, counts)->wait();
      int64_t off = 0;
      for (int r = 0; r < n; ++r) {
        Tensor ref = filled({r, 3}, r, t);
        for (int64_t i = 0; i < r * 3; ++i) CHECK(get(uout, off + i) == get(ref, i));
        off += r * 3;
      }
    }
  }

  TEST_CASE("reduce_scatter: uneven blocks, sum and avg, halves in f32") {
    auto w = dist::world();
    const int n = w->size(), me = w->rank();
    std::vector<int64_t> counts(n);
    int64_t rows = 0;
    for (int r = 0; r < n; ++r) rows += counts[r] = (r % 2) + 1;
    std::vector<int64_t> start(n, 0);
    for (int r = 1; r < n; ++r) start[r] = start[r - 1] + counts[r - 1];
    for (DType t : {kF32, kF64, kBF16, kF16, kI64})
      for (dist::ReduceOp op : {dist::ReduceOp::kSum, dist::ReduceOp::kAvg, dist::ReduceOp::kMax}) {
        if (op == dist::ReduceOp::kAvg && !is_floating(t)) continue;
        CAPTURE(t);
        Tensor in = filled({rows, 2}, me, t), out = zeros({counts[me], 2}, Options(t));
        w->reduce_scatter(out, in, op, counts)->wait();
        for (int64_t i = 0; i < counts[me] * 2; ++i) {
          const int64_t g = start[me] * 2 + i;
          double s = 0, mx = -1e300;
          for (int r = 0; r < n; ++r) {
            s += value(r, g, t);
            mx = std::max(mx, value(r, g, t));
          }
          double want = op == dist::ReduceOp::kSum ? s : op == dist::ReduceOp::kAvg ? s / n : mx;
          CHECK(get(out, i) == get(full({1}, want, Options(kF64)).to(t), 0));
        }
      }
    // equal blocks by default; a block count that does not divide is an error naming it
    Tensor in = filled({3 * n, 2}, me, kF32), out = zeros({3, 2}, Options(kF32));
    w->reduce_scatter(out, in)->wait();
    if (n > 1) {
      Tensor bad = zeros({3 * n + 1, 2}, Options(kF32));
      CHECK_THROWS_WITH_AS(w->reduce_scatter(out, bad), doctest::Contains("do not split evenly"),
                           Error);
    }
  }

  TEST_CASE("all_to_all: per-rank counts") {
    auto w = dist::world();
    const int n = w->size(), me = w->rank();
    // rank s sends (s + d) % 3 rows to rank d; row values encode (s, d, row)
    auto cnt = [](int s, int d) { return int64_t((s + d) % 3); };
    std::vector<int64_t> sc(n), rc(n);
    int64_t srows = 0, rrows = 0;
    for (int d = 0; d < n; ++d) srows += sc[d] = cnt(me, d);
    for (int s = 0; s < n; ++s) rrows += rc[s] = cnt(s, me);
    for (DType t : {kF32, kI64, kBF16}) {
      Tensor in = zeros({srows, 2}, Options(kF64));
      int64_t row = 0;
      for (int d = 0; d < n; ++d)
        for (int64_t k = 0; k < sc[d]; ++k, ++row) {
          in.data_ptr<double>()[row * 2] = me * 10 + d;
          in.data_ptr<double>()[row * 2 + 1] = static_cast<double>(k);
        }
      Tensor out = zeros({rrows, 2}, Options(t));
      w->all_to_all(out, in.to(t), sc, rc)->wait();
      row = 0;
      for (int s = 0; s < n; ++s)
        for (int64_t k = 0; k < rc[s]; ++k, ++row) {
          CHECK(get(out, row * 2) == s * 10 + me);
          CHECK(get(out, row * 2 + 1) == k);
        }
    }
  }

  TEST_CASE("broadcast, barrier, send and recv around a ring") {
    auto w = dist::world();
    const int n = w->size(), me = w->rank();
    Tensor x = filled({5}, me, kF64);
    w->broadcast(x, n - 1)->wait();
    for (int64_t i = 0; i < 5; ++i) CHECK(get(x, i) == value(n - 1, i, kF64));
    w->barrier()->wait();
    if (n > 1) {
      Tensor mine = filled({4}, me, kF32), got = zeros({4}, Options(kF32));
      auto s = w->send(mine, (me + 1) % n, 7);
      auto r = w->recv(got, (me + n - 1) % n, 7);
      r->wait();
      s->wait();
      CHECK(r->is_completed());
      for (int64_t i = 0; i < 4; ++i) CHECK(get(got, i) == value((me + n - 1) % n, i, kF32));
    }
    CHECK_THROWS_WITH_AS(w->send(x, me), doctest::Contains("must be another rank"), Error);
    CHECK_THROWS_WITH_AS(w->broadcast(x, n), doctest::Contains("root"), Error);
  }

  TEST_CASE("async calls complete in order; the caller overlaps them") {
    auto w = dist::world();
    std::vector<Tensor> xs;
    std::vector<dist::WorkPtr> works;
    for (int k = 0; k < 8; ++k) {
      xs.push_back(full({1000}, double(k + w->rank()), Options(kF32)));
      works.push_back(w->all_reduce(xs.back()));
    }
    for (int k = 0; k < 8; ++k) {
      works[k]->wait();
      CHECK(works[k]->is_completed());
      double want = 0;
      for (int r = 0; r < w->size(); ++r) want += k + r;
      CHECK(get(xs[k], 999) == want);
    }
  }

  TEST_CASE("split and new_group: sub-groups by color") {
    auto w = dist::world();
    const int n = w->size(), me = w->rank();
    auto g = w->split(me % 2, me);
    std::vector<int> members;
    for (int r = me % 2; r < n; r += 2) members.push_back(r);
    CHECK(g->world_ranks() == members);
    CHECK(g->size() == static_cast<int>(members.size()));
    CHECK(g->world_ranks()[g->rank()] == me);
    Tensor x = full({2}, double(me), Options(kI64));
    g->all_reduce(x)->wait();
    int64_t want = 0;
    for (int r : members) want += r;
    CHECK(get(x, 0) == want);
    auto first = dist::new_group({0});
    CHECK((first != nullptr) == (me == 0));
    if (first) CHECK(first->size() == 1);
  }

  TEST_CASE("bad calls name the call and the values") {
    auto w = dist::world();
    Tensor a = zeros({2, 3}), b = zeros({2, 4});
    CHECK_THROWS_WITH_AS(w->all_gather(b, a), doctest::Contains("differ beyond dim 0"), Error);
    Tensor i = zeros({3}, Options(kI64));
    CHECK_THROWS_WITH_AS(w->all_reduce(i, dist::ReduceOp::kAvg),
                         doctest::Contains("avg needs a floating dtype"), Error);
    Tensor out = zeros({2 * w->size() + 1, 3});
    CHECK_THROWS_WITH_AS(w->all_gather(out, a), doctest::Contains("rows, counts sum to"), Error);
    CHECK_THROWS_WITH_AS(w->all_gather(out, a, {1}),
                         doctest::Contains(w->size() == 1 ? "counts[0] = 1" : "entries"), Error);
  }

  TEST_CASE("calls that differ across ranks are errors on every rank; nothing is sent") {
    auto w = dist::world();
    const int r = w->rank(), n = w->size();
    CHECK(w->check_calls());
    if (n < 2) return;
    auto expect_mismatch = [&](const std::function<void()>& call,
                               const std::vector<std::string>& parts) {
      std::string msg;
      try {
        call();
      } catch (const Error& e) {
        msg = e.what();
      }
      CHECK(msg.find("do not match") != std::string::npos);
      for (const auto& p : parts) CHECK_MESSAGE(msg.find(p) != std::string::npos, p, " in ", msg);
    };
    // Shapes: the last rank reduces one element more; its tensor must come back untouched.
    Tensor x = full({r == n - 1 ? 5 : 4}, 1.0);
    expect_mismatch(
        [&] { w->all_reduce(x)->wait(); },
        {"all_reduce (rank " + std::to_string(r), "rank 0: all_reduce of float32, 4 elements",
         "rank " + std::to_string(n - 1) + ": all_reduce of float32, 5 elements"});
    CHECK(ct::vals(x) == std::vector<double>(x.numel(), 1.0));
    // Dtypes, ops, roots and the collective itself.
    Tensor y = zeros({3}, Options(r == 1 ? kF64 : kF32));
    expect_mismatch([&] { w->all_reduce(y)->wait(); }, {"float64", "float32"});
    Tensor z = zeros({3});
    expect_mismatch(
        [&] { w->all_reduce(z, r == 0 ? dist::ReduceOp::kMax : dist::ReduceOp::kSum)->wait(); },
        {"max", "sum"});
    expect_mismatch([&] { w->broadcast(z, r == 1 ? 1 : 0)->wait(); }, {"root 0", "root 1"});
    expect_mismatch([&] { r == 0 ? w->broadcast(z, 0)->wait() : w->all_reduce(z)->wait(); },
                    {"rank 0: broadcast", "rank 1: all_reduce"});
    // all_to_all: rank 0 expects 2 rows from rank 1, which sends it 1.
    Tensor in = zeros({n, 2});
    Tensor out = zeros({r == 0 ? n + 1 : n, 2});
    std::vector<int64_t> send(n, 1), recv(n, 1);
    if (r == 0) recv[1] = 2;
    expect_mismatch([&] { w->all_to_all(out, in, send, recv)->wait(); },
                    {"rank 0: all_to_all", "receives 1 2"});
    // The group is still in step: a matching call gives the right answer.
    Tensor ok = full({2}, 1.0);
    w->all_reduce(ok)->wait();
    CHECK(ct::vals(ok) == std::vector<double>{double(n), double(n)});
  }

  TEST_CASE("a collective past its timeout fails with an error naming it") {
    auto w = dist::world();
    if (w->size() < 2) return;         // a world of one cannot wait for anyone
    auto g = dist::new_group({0, 1});  // broken after this test; the world stays usable
    if (g) g->set_check_calls(false);  // the timeout of the collective itself, not the check's
    Tensor x = ones({4});
    if (w->rank() == 1) {
      // late by far more than rank 0's timeout; rank 0's abandoned call still matches it
      std::this_thread::sleep_for(std::chrono::milliseconds(1500));
      dist::CallOptions o;
      o.timeout_s = 30;  // every rank passes a timeout: with one, MPI runs the non-blocking form
      g->all_reduce(x, dist::ReduceOp::kSum, o)->wait();
    } else if (w->rank() == 0) {
      dist::CallOptions o;
      o.timeout_s = 0.3;
      auto t0 = std::chrono::steady_clock::now();
      CHECK_THROWS_WITH_AS(g->all_reduce(x, dist::ReduceOp::kSum, o)->wait(),
                           doctest::Contains("timed out"), Error);
      CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(1));
      CHECK_THROWS_WITH_AS(g->barrier()->wait(), doctest::Contains("no longer be used"), Error);
    }
    w->barrier()->wait();
  }
}
