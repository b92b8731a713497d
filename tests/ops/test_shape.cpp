#include "test_util.h"

using namespace coil;

namespace {

// Reference for cat: walk the output and find the piece each position along d falls in.
std::vector<double> ref_cat(const std::vector<std::vector<double>>& xs,
                            const std::vector<Shape>& ss, int64_t d) {
  Shape os = ss[0];
  os[d] = 0;
  for (const Shape& s : ss) os[d] += s[d];
  std::vector<double> out(static_cast<size_t>(shape_numel(os)));
  for (size_t i = 0; i < out.size(); ++i) {
    Shape oi = ct::unravel(static_cast<int64_t>(i), os);
    int64_t p = 0, pos = oi[d];
    while (pos >= ss[p][d]) pos -= ss[p++][d];
    Shape xi = oi;
    xi[d] = pos;
    out[i] = xs[p][ct::ravel(xi, ss[p])];
  }
  return out;
}

// The values of x[start : start + len] along d.
std::vector<double> ref_narrow(const std::vector<double>& xv, const Shape& xs, int64_t d,
                               int64_t start, int64_t len) {
  Shape os = xs;
  os[d] = len;
  std::vector<double> out(static_cast<size_t>(shape_numel(os)));
  for (size_t i = 0; i < out.size(); ++i) {
    Shape xi = ct::unravel(static_cast<int64_t>(i), os);
    xi[d] += start;
    out[i] = xv[ct::ravel(xi, xs)];
  }
  return out;
}

std::vector<double> ref_pad(const std::vector<double>& xv, const Shape& xs, const Shape& pads,
                            double value, Shape* out_shape) {
  const int64_t nd = static_cast<int64_t>(xs.size());
  Shape os = xs, lo(nd, 0);
  for (size_t j = 0; j < pads.size() / 2; ++j) {
    int64_t k = nd - 1 - static_cast<int64_t>(j);
    lo[k] = pads[2 * j];
    os[k] += pads[2 * j] + pads[2 * j + 1];
  }
  *out_shape = os;
  std::vector<double> out(static_cast<size_t>(shape_numel(os)), value);
  for (size_t i = 0; i < out.size(); ++i) {
    Shape oi = ct::unravel(static_cast<int64_t>(i), os), xi(nd);
    bool inside = true;
    for (int64_t k = 0; k < nd; ++k) {
      xi[k] = oi[k] - lo[k];
      inside = inside && xi[k] >= 0 && xi[k] < xs[k];
    }
    if (inside) out[i] = xv[ct::ravel(xi, xs)];
  }
  return out;
}

std::vector<double> ref_repeat(const std::vector<double>& xv, const Shape& xs, int64_t d,
                               const std::vector<int64_t>& reps) {
  std::vector<int64_t> src;  // output position along d -> input position
  for (size_t i = 0; i < reps.size(); ++i)
    for (int64_t r = 0; r < reps[i]; ++r) src.push_back(static_cast<int64_t>(i));
  Shape os = xs;
  os[d] = static_cast<int64_t>(src.size());
  std::vector<double> out(static_cast<size_t>(shape_numel(os)));
  for (size_t i = 0; i < out.size(); ++i) {
    Shape xi = ct::unravel(static_cast<int64_t>(i), os);
    xi[d] = src[xi[d]];
    out[i] = xv[ct::ravel(xi, xs)];
  }
  return out;
}

const std::vector<Shape> kShapes = {{7}, {3, 5}, {4, 1, 6}, {2, 5, 3}, {3, 2, 33}};

}  // namespace

TEST_SUITE("ops.shape") {
  TEST_CASE("cat matches a reference with uneven, empty and non-contiguous pieces") {
    manual_seed(31);
    for (const Shape& s : kShapes) {
      const int64_t nd = static_cast<int64_t>(s.size());
      for (int64_t dim = -nd; dim < nd; ++dim) {
        const int64_t d = dim < 0 ? dim + nd : dim;
        CAPTURE(shape_str(s));
        CAPTURE(dim);
        TensorList xs;
        std::vector<std::vector<double>> vs;
        std::vector<Shape> ss;
        for (int64_t len : {int64_t{3}, int64_t{0}, int64_t{1}, int64_t{5}}) {
          Shape p = s;
          p[d] = len;
          Tensor x = ct::rnd(p, kF64, -2, 2, len % 2 == 1);
          xs.push_back(x);
          vs.push_back(ct::vals(x));
          ss.push_back(p);
        }
        ct::check_close(cat(xs, dim), ref_cat(vs, ss, d), 0, 0, "cat f64");
        TensorList mixed = xs;
        mixed[0] = mixed[0].to(kF32);  // promotes to f64
        Tensor m = cat(mixed, dim);
        CHECK(m.dtype() == kF64);
        vs[0] = ct::vals(mixed[0]);
        ct::check_close(m, ref_cat(vs, ss, d), 0, 0, "cat mixed");
      }
    }
    CHECK(cat({ones({2, 3}, kI64)}, 0).dtype() == kI64);
  }

  TEST_CASE("stack matches a reference for every new dim") {
    manual_seed(32);
    for (const Shape& s : kShapes) {
      const int64_t nd = static_cast<int64_t>(s.size()) + 1;
      for (int64_t dim = -nd; dim < nd; ++dim) {
        const int64_t d = dim < 0 ? dim + nd : dim;
        CAPTURE(shape_str(s));
        CAPTURE(dim);
        TensorList xs;
        std::vector<std::vector<double>> vs;
        for (int i = 0; i < 3; ++i) {
          xs.push_back(ct::rnd(s, kF32, -2, 2, i == 1));
          vs.push_back(ct::vals(xs.back()));
        }
        Shape os = s;
        os.insert(os.begin() + d, 3);
        Tensor y = stack(xs, dim);
        REQUIRE(y.sizes() == os);
        std::vector<double> ref(static_cast<size_t>(shape_numel(os)));
        for (size_t i = 0; i < ref.size(); ++i) {
          Shape oi = ct::unravel(static_cast<int64_t>(i), os), xi = oi;
          xi.erase(xi.begin() + d);
          ref[i] = vs[oi[d]][ct::ravel(xi, s)];
        }
        ct::check_close(y, ref, 0, 0, "stack");
      }
    }
  }

  TEST_CASE("split, split with sizes and chunk follow torch semantics") {
    manual_seed(33);
    for (const Shape& s : kShapes) {
      const int64_t nd = static_cast<int64_t>(s.size());
      for (int64_t dim = -nd; dim < nd; ++dim) {
        const int64_t d = dim < 0 ? dim + nd : dim, n = s[d];
        CAPTURE(shape_str(s));
        CAPTURE(dim);
        Tensor x = ct::rnd(s, kF64, -2, 2, true);
        auto xv = ct::vals(x);
        for (int64_t size : {int64_t{1}, int64_t{2}, int64_t{3}, n, n + 4}) {
          TensorList p = split(x, size, dim);
          CHECK(static_cast<int64_t>(p.size()) == (n + size - 1) / size);
          int64_t off = 0;
          for (const Tensor& t : p) {
            int64_t len = std::min(size, n - off);
            CHECK(t.sizes()[d] == len);
            ct::check_close(t, ref_narrow(xv, s, d, off, len), 0, 0, "split");
            off += len;
          }
        }
        Shape sizes = {n / 2, 0, n - n / 2};
        TensorList q = split(x, sizes, dim);
        REQUIRE(q.size() == 3);
        ct::check_close(q[0], ref_narrow(xv, s, d, 0, n / 2), 0, 0, "split sizes 0");
        CHECK(q[1].sizes()[d] == 0);
        ct::check_close(q[2], ref_narrow(xv, s, d, n / 2, n - n / 2), 0, 0, "split sizes 2");
        for (int64_t chunks : {int64_t{1}, int64_t{2}, int64_t{3}, n + 2}) {
          TensorList c = chunk(x, chunks, dim);
          const int64_t each = (n + chunks - 1) / chunks;
          CHECK(static_cast<int64_t>(c.size()) == (n + each - 1) / each);
          int64_t off = 0;
          for (const Tensor& t : c) {
            ct::check_close(t, ref_narrow(xv, s, d, off, t.sizes()[d]), 0, 0, "chunk");
            off += t.sizes()[d];
          }
          CHECK(off == n);
        }
      }
    }
    // torch: 6 in 4 chunks gives 3 pieces of 2; an empty dim gives `chunks` empty pieces
    CHECK(chunk(zeros({6}), 4).size() == 3);
    TensorList e = chunk(zeros({0, 2}), 3);
    CHECK(e.size() == 3);
    CHECK(e[2].sizes() == Shape{0, 2});
    CHECK(split(zeros({0, 2}), 2).size() == 1);
    // the pieces are views of x
    Tensor x = zeros({4});
    split(x, 2)[1].fill_(1);
    ct::check_close(x, {0, 0, 1, 1}, 0, 0, "split views");
  }

  TEST_CASE("pad matches a reference with negative pads, values and dtypes") {
    manual_seed(34);
    const std::vector<Shape> pad_sets = {{}, {1, 2}, {0, -1}, {-2, 3, 1, 0}, {2, -1, -1, 2, 1, 1}};
    for (const Shape& s : kShapes) {
      for (const Shape& pads : pad_sets) {
        if (pads.size() / 2 > s.size()) continue;
        CAPTURE(shape_str(s));
        CAPTURE(shape_str(pads));
        Tensor x = ct::rnd(s, kF64, -2, 2, true);
        Shape os;
        auto ref = ref_pad(ct::vals(x), s, pads, 0.75, &os);
        Tensor y = pad(x, pads, 0.75);
        REQUIRE(y.sizes() == os);
        ct::check_close(y, ref, 0, 0, "pad f64");
        Tensor yi = pad(x.to(kI64), pads, -4);
        CHECK(yi.dtype() == kI64);
        ct::check_close(yi, ref_pad(ct::vals(x.to(kI64)), s, pads, -4, &os), 0, 0, "pad i64");
      }
    }
    // cropping everything away leaves only the padding
    ct::check_close(pad(ones({2}), {-3, 2}), {0}, 0, 0, "pad crop past the end");
  }

  TEST_CASE("repeat_interleave with a count or per-element repeats") {
    manual_seed(35);
    for (const Shape& s : kShapes) {
      const int64_t nd = static_cast<int64_t>(s.size());
      for (int64_t dim = -nd; dim < nd; ++dim) {
        const int64_t d = dim < 0 ? dim + nd : dim;
        CAPTURE(shape_str(s));
        CAPTURE(dim);
        Tensor x = ct::rnd(s, kF32, -2, 2, true);
        auto xv = ct::vals(x);
        for (int64_t r : {0, 1, 3}) {
          ct::check_close(repeat_interleave(x, r, dim),
                          ref_repeat(xv, s, d, std::vector<int64_t>(s[d], r)), 0, 0,
                          "repeat_interleave count");
        }
        Tensor reps = randint(0, 4, {s[d]});
        ct::check_close(repeat_interleave(x, reps, dim),
                        ref_repeat(xv, s, d, to_vector<int64_t>(reps)), 0, 0,
                        "repeat_interleave tensor");
        ct::check_close(repeat_interleave(x, reps.to(kI32), dim),
                        ref_repeat(xv, s, d, to_vector<int64_t>(reps)), 0, 0,
                        "repeat_interleave i32");
        ct::check_close(repeat_interleave(x, tensor(std::vector<int64_t>{2}), dim),
                        ref_repeat(xv, s, d, std::vector<int64_t>(s[d], 2)), 0, 0,
                        "one repeat broadcast");
      }
    }
  }

  TEST_CASE("gradcheck of every shape op") {
    for (const char* name : {"cat", "stack", "split", "chunk", "pad", "repeat_interleave"}) {
      CAPTURE(name);
      GradcheckCase c = op_info(name).gradcheck();
      ct::check_gradcheck(c.fn, c.inputs);
    }
    manual_seed(36);
    auto gi = [](const Shape& s) { return ct::rnd(s, kF64, -1, 1).requires_grad_(); };
    // cat on dim 0 of transposed inputs, one of which is held fixed
    ct::check_gradcheck(
        [](const TensorList& v) {
          return cat({v[0].t(), v[1], v[2].t()}, 0);
        },
        {gi({3, 2}), ct::rnd({1, 3}, kF64), gi({3, 4})});
    // stack along the last dim, scaled so misrouted gradients show
    ct::check_gradcheck(
        [](const TensorList& v) {
          return stack({v[0], v[1] * 2.0, v[0].t().t()}, -1);
        },
        {gi({2, 3}), gi({2, 3})});
    // split with sizes on a negative dim, pieces used unevenly
    ct::check_gradcheck(
        [](const TensorList& v) {
          TensorList p = split(v[0], Shape{1, 3, 2}, -1);
          return cat({p[2] * 5.0, p[0], p[1] * -1.0}, 1);
        },
        {gi({2, 6})});
    // chunk on dim 0 with fewer pieces than asked
    ct::check_gradcheck(
        [](const TensorList& v) {
          TensorList p = chunk(v[0], 4, 0);  // 6 rows -> 3 pieces of 2
          return cat({p[1] * 2.0, p[0], p[2] * 3.0}, 0);
        },
        {gi({6, 2})});
    // pad over three dims with a crop, on a view
    ct::check_gradcheck(
        [](const TensorList& v) {
          return pad(v[0].transpose(0, 2), {0, 2, -1, 1, 1, 0}, -3);
        },
        {gi({3, 3, 2})});
    // per-element repeats including a zero
    ct::check_gradcheck(
        [](const TensorList& v) {
          return repeat_interleave(v[0], tensor(std::vector<int64_t>{2, 0, 3}), -1);
        },
        {gi({2, 3})});
  }

  TEST_CASE("boxed forms and the distributed hook") {
    Tensor x = tensor(std::vector<float>{1, 2, 3, 4, 5, 6}, {2, 3});
    TensorList p = op_info("split").boxed({x}, {{"split_sizes", Shape{1, 2}}, {"dim", int64_t{1}}});
    REQUIRE(p.size() == 2);
    ct::check_close(p[1], {2, 3, 5, 6}, 0, 0, "boxed split");
    TensorList r = op_info("repeat_interleave")
                       .boxed({x, tensor(std::vector<int64_t>{0, 2})}, {{"dim", int64_t{0}}});
    ct::check_close(r[0], {4, 5, 6, 4, 5, 6}, 0, 0, "boxed repeat_interleave");
    ct::check_close(op_info("pad").boxed({x}, {{"pads", Shape{1, 0}}, {"value", 9.0}})[0],
                    {9, 1, 2, 3, 9, 4, 5, 6}, 0, 0, "boxed pad");
    struct FakeSpec : DistSpecBase {};
    std::string seen;
    set_dist_handler([&](const OpInfo& op, const TensorList& in, const Attrs&) {
      seen = op.name;
      return TensorList{in[0]};
    });
    Tensor d = ones({2});
    d.impl().dist = std::make_shared<FakeSpec>();
    cat({ones({2}), d});
    CHECK(seen == "cat");
    pad(d, {1, 1});
    CHECK(seen == "pad");
    chunk(d, 2);
    CHECK(seen == "chunk");
    set_dist_handler(nullptr);
  }

  TEST_CASE("bad inputs throw errors naming the op and the values") {
    Tensor a = zeros({2, 3}), b = zeros({3, 3}), c = zeros({2, 3, 1});
    ct::check_error([&] { cat({a, b}, 1); }, {"cat", "tensor 1", "[3, 3]", "[2, 3]", "dim 1"});
    ct::check_error([&] { cat({a, c}, 0); }, {"cat", "tensor 1", "3 dims", "2"});
    ct::check_error([&] { cat({}, 0); }, {"cat", "non-empty"});
    ct::check_error([&] { cat({a, a}, 2); }, {"cat", "dim 2"});
    ct::check_error([&] { cat({scalar_tensor(1, kF32)}, 0); }, {"cat", "0-d"});
    ct::check_error([&] { stack({a, b}, 0); }, {"stack", "tensor 1", "[3, 3]", "[2, 3]"});
    ct::check_error([&] { stack({a, a}, 3); }, {"stack", "dim 3"});
    ct::check_error([&] { split(a, 0, 1); }, {"split", "split_size", "0", "size 3"});
    ct::check_error([&] { split(a, Shape{1, 1}, 1); }, {"split", "[1, 1]", "sum to 2", "size 3"});
    ct::check_error([&] { split(a, Shape{4, -1}, 1); }, {"split", "[4, -1]", "negative"});
    ct::check_error([&] { chunk(a, 0, 1); }, {"chunk", "chunks", "0"});
    ct::check_error([&] { pad(a, {1, 2, 3}); }, {"pad", "[1, 2, 3]", "even"});
    ct::check_error([&] { pad(a, {1, 1, 1, 1, 1, 1}); }, {"pad", "3 dims", "[2, 3]"});
    ct::check_error([&] { pad(a, {-2, -2}); }, {"pad", "(-2, -2)", "dim 1", "size 3", "-1"});
    ct::check_error([&] { repeat_interleave(a, -1, 0); }, {"repeat_interleave", "-1"});
    ct::check_error(
        [&] {
          repeat_interleave(a, tensor(std::vector<int64_t>{1, 2}), 1);
        },
        {"repeat_interleave", "2 entries", "dim 1", "size 3"});
    ct::check_error(
        [&] {
          repeat_interleave(a, tensor(std::vector<int64_t>{1, -2, 0}), 1);
        },
        {"repeat_interleave", "-2", "position 1"});
    ct::check_error(
        [&] {
          repeat_interleave(a, tensor(std::vector<float>{1, 2}), 0);
        },
        {"repeat_interleave", "int64 or int32", "float32"});
  }
}
