#include "test_util.h"

using namespace coil;

namespace {

std::vector<int64_t> ivals(const Tensor& t) { return to_vector<int64_t>(t); }

// Naive float64 references over explicit multi-indices.
std::vector<double> ref_index_select(const std::vector<double>& xv, const Shape& xs, int64_t d,
                                     const std::vector<int64_t>& idx) {
  Shape os = xs;
  os[d] = static_cast<int64_t>(idx.size());
  std::vector<double> out(static_cast<size_t>(shape_numel(os)));
  for (size_t i = 0; i < out.size(); ++i) {
    Shape oi = ct::unravel(static_cast<int64_t>(i), os), xi = oi;
    xi[d] = idx[oi[d]];
    out[i] = xv[ct::ravel(xi, xs)];
  }
  return out;
}

std::vector<double> ref_gather(const std::vector<double>& xv, const Shape& xs, int64_t d,
                               const std::vector<int64_t>& idx, const Shape& is) {
  std::vector<double> out(idx.size());
  for (size_t i = 0; i < idx.size(); ++i) {
    Shape xi = ct::unravel(static_cast<int64_t>(i), is);
    xi[d] = idx[i];
    out[i] = xv[ct::ravel(xi, xs)];
  }
  return out;
}

std::vector<double> ref_scatter_add(std::vector<double> out, const Shape& xs, int64_t d,
                                    const std::vector<int64_t>& idx, const Shape& is,
                                    const std::vector<double>& sv, const Shape& ss) {
  for (size_t i = 0; i < idx.size(); ++i) {
    Shape ii = ct::unravel(static_cast<int64_t>(i), is), oi = ii;
    oi[d] = idx[i];
    out[ct::ravel(oi, xs)] += sv[ct::ravel(ii, ss)];
  }
  return out;
}

std::vector<double> ref_index_add(std::vector<double> out, const Shape& xs, int64_t d,
                                  const std::vector<int64_t>& idx, const std::vector<double>& sv,
                                  double alpha) {
  Shape ss = xs;
  ss[d] = static_cast<int64_t>(idx.size());
  for (int64_t i = 0; i < shape_numel(ss); ++i) {
    Shape si = ct::unravel(i, ss), oi = si;
    oi[d] = idx[si[d]];
    out[ct::ravel(oi, xs)] += alpha * sv[i];
  }
  return out;
}

const std::vector<Shape> kShapes = {{7}, {3, 5}, {4, 1, 6}, {2, 3, 5}, {3, 2, 33}};

}  // namespace

TEST_SUITE("ops.index") {
  TEST_CASE("index_select matches a reference for every dim, strides, dtypes and int32 indices") {
    manual_seed(11);
    for (const Shape& s : kShapes) {
      const int64_t nd = static_cast<int64_t>(s.size());
      for (int64_t dim = -nd; dim < nd; ++dim) {
        const int64_t d = dim < 0 ? dim + nd : dim;
        for (bool nc : {false, true}) {
          CAPTURE(shape_str(s));
          CAPTURE(dim);
          CAPTURE(nc);
          Tensor x = ct::rnd(s, kF64, -2, 2, nc);
          Tensor idx = randint(0, s[d], {9});
          auto ref = ref_index_select(ct::vals(x), s, d, ivals(idx));
          ct::check_close(index_select(x, dim, idx), ref, 0, 0, "f64");
          ct::check_close(index_select(x.to(kF32), dim, idx.to(kI32)), ref, 1e-6, 1e-6, "f32 i32");
          Tensor xi = x.to(kI64);
          Tensor yi = index_select(xi, dim, idx);
          CHECK(yi.dtype() == kI64);
          ct::check_close(yi, ref_index_select(ct::vals(xi), s, d, ivals(idx)), 0, 0, "i64");
          Tensor yb = index_select(x.to(kBF16), dim, idx);
          CHECK(yb.dtype() == kBF16);
          ct::check_close(yb, ref, 1e-2, 1e-2, "bf16");
        }
      }
    }
    // an empty index and a transposed index view
    Tensor x = ct::rnd({4, 3}, kF64);
    CHECK(index_select(x, 1, tensor(std::vector<int64_t>{})).sizes() == Shape{4, 0});
    Tensor idx2 = tensor(std::vector<int64_t>{2, 0, 1, 3}, {2, 2}).t();  // values 2, 1, 0, 3
    Tensor flat = reshape(idx2, {4});
    ct::check_close(index_select(x, 0, flat),
                    ref_index_select(ct::vals(x), {4, 3}, 0, {2, 1, 0, 3}), 0, 0,
                    "index from a view");
  }

  TEST_CASE("embedding matches a reference and its gradient counts repeated ids") {
    manual_seed(12);
    for (Shape ids_shape : {Shape{}, Shape{5}, Shape{3, 7}, Shape{2, 1, 4}}) {
      CAPTURE(shape_str(ids_shape));
      Tensor w = ct::rnd({11, 5}, kF32, -1, 1, true);
      Tensor ids = randint(0, 11, ids_shape);
      Tensor y = embedding(w, ids);
      Shape want = ids_shape;
      want.push_back(5);
      CHECK(y.sizes() == want);
      auto iv = ivals(ids);
      auto ref = ref_index_select(ct::vals(w), {11, 5}, 0, iv);
      ct::check_close(y, ref, 0, 0, "embedding");
      ct::check_close(embedding(w, ids.to(kI32)), ref, 0, 0, "embedding i32 ids");
    }
    // dweight[v] = sum of the output gradient rows whose id is v
    Tensor w = ct::rnd({6, 3}, kF64).requires_grad_();
    Tensor ids = tensor(std::vector<int64_t>{1, 4, 1, 1, 0, 4}, {2, 3});
    Tensor g = ct::rnd({2, 3, 3}, kF64);
    (embedding(w, ids) * g).sum().backward();
    std::vector<double> ref(18, 0.0), gv = ct::vals(g);
    auto iv = ivals(ids);
    for (size_t i = 0; i < iv.size(); ++i)
      for (int64_t c = 0; c < 3; ++c) ref[iv[i] * 3 + c] += gv[i * 3 + c];
    ct::check_close(w.grad(), ref, 1e-12, 1e-12, "embedding grad");
    // padding_idx: the same values, and that row alone gets no gradient
    Tensor wp = w.detach().requires_grad_();
    Tensor yp = embedding(wp, ids, 4);
    ct::check_close(yp, ct::vals(embedding(w.detach(), ids)), 0, 0, "embedding padding_idx");
    (yp * g).sum().backward();
    for (int64_t c = 0; c < 3; ++c) ref[4 * 3 + c] = 0;
    ct::check_close(wp.grad(), ref, 1e-12, 1e-12, "embedding padding_idx grad");
    ct::check_error([&] { embedding(w, ids, 6); }, {"embedding", "padding_idx 6", "6 embeddings"});
  }

  TEST_CASE("embedding backward with many repeated ids takes the parallel path exactly") {
    manual_seed(13);
    const int64_t V = 37, D = 9, N = 20011;
    Tensor w = ct::rnd({V, D}, kF64).requires_grad_();
    Tensor ids = randint(0, V, {N});
    Tensor g = ct::rnd({N, D}, kF64);
    (embedding(w, ids) * g).sum().backward();
    std::vector<double> ref(V * D, 0.0), gv = ct::vals(g);
    auto iv = ivals(ids);
    for (int64_t i = 0; i < N; ++i)
      for (int64_t c = 0; c < D; ++c) ref[iv[i] * D + c] += gv[i * D + c];
    ct::check_close(w.grad(), ref, 1e-12, 1e-12, "large embedding grad");
  }

  TEST_CASE("gather matches a reference with smaller indices, views and negative dims") {
    manual_seed(14);
    for (const Shape& s : kShapes) {
      const int64_t nd = static_cast<int64_t>(s.size());
      for (int64_t dim = -nd; dim < nd; ++dim) {
        const int64_t d = dim < 0 ? dim + nd : dim;
        for (bool nc : {false, true}) {
          CAPTURE(shape_str(s));
          CAPTURE(dim);
          Tensor x = ct::rnd(s, kF64, -2, 2, nc);
          // the index may be longer along dim and shorter elsewhere
          Shape is = s;
          for (int64_t k = 0; k < nd; ++k)
            is[k] = k == d ? s[k] + 2 : std::max<int64_t>(1, s[k] - 1);
          Tensor idx = randint(0, s[d], is);
          if (nc && nd >= 2) idx = idx.transpose(0, 1).contiguous().transpose(0, 1);
          auto ref = ref_gather(ct::vals(x), s, d, ivals(idx), is);
          ct::check_close(gather(x, dim, idx), ref, 0, 0, "gather f64");
          ct::check_close(gather(x.to(kF32), dim, idx.to(kI32)), ref, 1e-6, 1e-6, "gather f32");
          Tensor yb = gather(x.to(kBF16), dim, idx);
          CHECK(yb.dtype() == kBF16);
          ct::check_close(yb, ref, 1e-2, 1e-2, "gather bf16");
        }
      }
    }
  }

  TEST_CASE("scatter_add matches a reference with duplicates, larger src and dtypes") {
    manual_seed(15);
    for (const Shape& s : kShapes) {
      const int64_t nd = static_cast<int64_t>(s.size());
      for (int64_t dim = -nd; dim < nd; ++dim) {
        const int64_t d = dim < 0 ? dim + nd : dim;
        for (bool nc : {false, true}) {
          CAPTURE(shape_str(s));
          CAPTURE(dim);
          Tensor x = ct::rnd(s, kF64, -2, 2, nc);
          Shape is = s, ss = s;
          for (int64_t k = 0; k < nd; ++k) {
            is[k] = k == d ? 2 * s[k] + 1 : std::max<int64_t>(1, s[k] - 1);
            ss[k] = is[k] + (k % 2);  // src may exceed the index
          }
          Tensor idx = randint(0, s[d], is);
          Tensor src = ct::rnd(ss, kF64, -2, 2, nc);
          auto ref = ref_scatter_add(ct::vals(x), s, d, ivals(idx), is, ct::vals(src), ss);
          ct::check_close(scatter_add(x, dim, idx, src), ref, 1e-12, 1e-12, "scatter_add f64");
          ct::check_close(scatter_add(x.to(kF32), dim, idx.to(kI32), src.to(kF32)), ref, 1e-5, 1e-5,
                          "scatter_add f32");
          Tensor yb = scatter_add(x.to(kBF16), dim, idx, src.to(kBF16));
          CHECK(yb.dtype() == kBF16);
          auto refb = ref_scatter_add(ct::vals(x.to(kBF16)), s, d, ivals(idx), is,
                                      ct::vals(src.to(kBF16)), ss);
          ct::check_close(yb, refb, 2e-2, 5e-2, "scatter_add bf16");
          Tensor xi = x.to(kI64);
          ct::check_close(
              scatter_add(xi, dim, idx, src.to(kI64)),
              ref_scatter_add(ct::vals(xi), s, d, ivals(idx), is, ct::vals(src.to(kI64)), ss), 0, 0,
              "scatter_add i64");
        }
      }
    }
    // a large problem that runs the tiled parallel path
    Tensor x = zeros({50, 300}, kF64), src = ct::rnd({400, 300}, kF64);
    Tensor idx = randint(0, 50, {400, 300});
    ct::check_close(scatter_add(x, 0, idx, src),
                    ref_scatter_add(ct::vals(x), {50, 300}, 0, ivals(idx), {400, 300},
                                    ct::vals(src), {400, 300}),
                    1e-12, 1e-12, "large scatter_add");
  }

  TEST_CASE("index_add matches a reference with duplicates, alpha and dtypes") {
    manual_seed(16);
    for (const Shape& s : kShapes) {
      const int64_t nd = static_cast<int64_t>(s.size());
      for (int64_t dim = -nd; dim < nd; ++dim) {
        const int64_t d = dim < 0 ? dim + nd : dim;
        for (bool nc : {false, true}) {
          CAPTURE(shape_str(s));
          CAPTURE(dim);
          Tensor x = ct::rnd(s, kF64, -2, 2, nc);
          Tensor idx = randint(0, s[d], {2 * s[d] + 3});
          Shape ss = s;
          ss[d] = idx.numel();
          Tensor src = ct::rnd(ss, kF64, -2, 2, nc);
          for (double alpha : {1.0, -0.5}) {
            auto ref = ref_index_add(ct::vals(x), s, d, ivals(idx), ct::vals(src), alpha);
            ct::check_close(index_add(x, dim, idx, src, alpha), ref, 1e-12, 1e-12, "index_add f64");
            ct::check_close(index_add(x.to(kF32), dim, idx.to(kI32), src.to(kF32), alpha), ref,
                            1e-5, 1e-5, "index_add f32");
          }
          Tensor xi = x.to(kI32);
          Tensor yi = index_add(xi, dim, idx, src.to(kI32), 3);
          CHECK(yi.dtype() == kI32);
          ct::check_close(yi,
                          ref_index_add(ct::vals(xi), s, d, ivals(idx), ct::vals(src.to(kI32)), 3),
                          0, 0, "index_add i32");
          Tensor yb = index_add(x.to(kBF16), dim, idx, src.to(kBF16));
          CHECK(yb.dtype() == kBF16);
          ct::check_close(
              yb,
              ref_index_add(ct::vals(x.to(kBF16)), s, d, ivals(idx), ct::vals(src.to(kBF16)), 1),
              2e-2, 5e-2, "index_add bf16");
        }
      }
    }
    // the input is not modified (out-of-place)
    Tensor x = zeros({3}, kF64);
    index_add(x, 0, tensor(std::vector<int64_t>{1}), ones({1}, kF64));
    ct::check_close(x, {0, 0, 0}, 0, 0, "x untouched");
    // large, so the destination-partitioned parallel path runs
    Tensor big = ct::rnd({64, 700}, kF64), bidx = randint(0, 64, {500}),
           bsrc = ct::rnd({500, 700}, kF64);
    ct::check_close(index_add(big, 0, bidx, bsrc, 2.0),
                    ref_index_add(ct::vals(big), {64, 700}, 0, ivals(bidx), ct::vals(bsrc), 2.0),
                    1e-12, 1e-12, "large index_add");
  }

  TEST_CASE("one_hot infers or takes num_classes") {
    Tensor ids = tensor(std::vector<int64_t>{2, 0, 3, 2, 1, 0}, {2, 3});
    Tensor y = one_hot(ids);
    CHECK(y.dtype() == kI64);
    CHECK(y.sizes() == Shape{2, 3, 4});
    std::vector<double> ref(24, 0.0);
    auto iv = ivals(ids);
    for (size_t i = 0; i < iv.size(); ++i) ref[i * 4 + iv[i]] = 1;
    ct::check_close(y, ref, 0, 0, "one_hot inferred");
    Tensor y6 = one_hot(ids.t().to(kI32), 6);  // transposed int32 ids
    CHECK(y6.sizes() == Shape{3, 2, 6});
    std::vector<double> ref6(36, 0.0);
    auto it = ivals(ids.t());
    for (size_t i = 0; i < it.size(); ++i) ref6[i * 6 + it[i]] = 1;
    ct::check_close(y6, ref6, 0, 0, "one_hot 6 classes");
    CHECK(one_hot(tensor(std::vector<int64_t>{}), 3).sizes() == Shape{0, 3});
    CHECK(!op_info("one_hot").differentiable);
  }

  TEST_CASE("gradcheck of every differentiable index op") {
    for (const char* name : {"embedding", "index_select", "gather", "scatter_add", "index_add"}) {
      CAPTURE(name);
      GradcheckCase c = op_info(name).gradcheck();
      ct::check_gradcheck(c.fn, c.inputs);
    }
    manual_seed(17);
    auto grad_input = [](const Shape& s) { return ct::rnd(s, kF64, -1, 1).requires_grad_(); };
    // embedding with int32 ids through a non-contiguous weight
    ct::check_gradcheck([](const TensorList& v) { return embedding(v[0].t(), v[1]); },
                        {grad_input({4, 6}), tensor(std::vector<int32_t>{5, 0, 5, 2}, {2, 2})});
    // index_select on a transposed input along a negative dim, repeated indices
    ct::check_gradcheck([](const TensorList& v) { return index_select(v[0].t(), -1, v[1]); },
                        {grad_input({5, 3}), tensor(std::vector<int64_t>{4, 4, 0, 2, 4})});
    // gather along dim 0 with an index smaller than the input off dim
    ct::check_gradcheck(
        [](const TensorList& v) { return gather(v[0], 0, v[1]); },
        {grad_input({3, 4}), tensor(std::vector<int64_t>{2, 2, 0, 1, 1, 2, 2, 0}, {4, 2})});
    // scatter_add along the last dim, both x and src differentiable
    ct::check_gradcheck(
        [](const TensorList& v) { return scatter_add(v[0], -1, v[1], v[2]); },
        {grad_input({2, 3}), tensor(std::vector<int64_t>{0, 0, 2, 1, 1, 1, 0, 2}, {2, 4}),
         grad_input({2, 5})});
    // index_add along dim 0 with alpha 1 and a transposed src
    ct::check_gradcheck(
        [](const TensorList& v) { return index_add(v[0], 0, v[1], v[2].t()); },
        {grad_input({3, 2}), tensor(std::vector<int64_t>{1, 1, 0, 2}), grad_input({2, 4})});
  }

  TEST_CASE("boxed forms and the distributed hook") {
    Tensor x = zeros({2, 3}, kF64);
    Tensor idx = tensor(std::vector<int64_t>{2, 2});
    Tensor src = ones({2, 2}, kF64);
    Tensor y = op_info("index_add").boxed({x, idx, src}, {{"dim", int64_t{1}}, {"alpha", 2.0}})[0];
    ct::check_close(y, {0, 0, 4, 0, 0, 4}, 0, 0, "boxed index_add");
    ct::check_close(op_info("one_hot").boxed({idx}, {})[0], {0, 0, 1, 0, 0, 1}, 0, 0,
                    "boxed one_hot");
    struct FakeSpec : DistSpecBase {};
    std::string seen;
    set_dist_handler([&](const OpInfo& op, const TensorList& in, const Attrs&) {
      seen = op.name;
      return TensorList{in[0]};
    });
    Tensor d = ones({2, 3});
    d.impl().dist = std::make_shared<FakeSpec>();
    gather(d, 1, zeros({2, 1}, kI64));
    CHECK(seen == "gather");
    embedding(d, idx);
    CHECK(seen == "embedding");
    set_dist_handler(nullptr);
  }

  TEST_CASE("bad inputs throw errors naming the op and the values") {
    Tensor x = zeros({3, 4});
    Tensor i64 = tensor(std::vector<int64_t>{0, 4});
    ct::check_error([&] { index_select(x, 1, i64); },
                    {"index_select", "index 4", "dim 1", "size 4"});
    ct::check_error([&] { index_select(x, 0, tensor(std::vector<int64_t>{-1})); },
                    {"index_select", "index -1", "size 3"});
    ct::check_error([&] { index_select(x, 2, i64); }, {"index_select", "dim 2"});
    ct::check_error([&] { index_select(x, 0, tensor(std::vector<float>{0})); },
                    {"index_select", "int64 or int32", "float32"});
    ct::check_error(
        [&] {
          index_select(x, 0, zeros({2, 2}, kI64));
        },
        {"index_select", "1-d", "[2, 2]"});
    ct::check_error(
        [&] {
          embedding(zeros({5, 2}), tensor(std::vector<int64_t>{1, 5}));
        },
        {"embedding", "index 5", "size 5"});
    ct::check_error([&] { embedding(zeros({5}), tensor(std::vector<int64_t>{1})); },
                    {"embedding", "2-d", "[5]"});
    ct::check_error(
        [&] {
          gather(x, 1, tensor(std::vector<int64_t>{0, 7}, {1, 2}));
        },
        {"gather", "index 7", "dim 1", "size 4"});
    ct::check_error(
        [&] {
          gather(x, 1, zeros({4, 1}, kI64));
        },
        {"gather", "[4, 1]", "[3, 4]", "dim 0"});
    ct::check_error([&] { gather(x, 0, zeros({3}, kI64)); }, {"gather", "[3]", "as many dims"});
    ct::check_error(
        [&] {
          scatter_add(x, 0, tensor(std::vector<int64_t>{3}, {1, 1}), ones({1, 1}));
        },
        {"scatter_add", "index 3", "dim 0", "size 3"});
    ct::check_error(
        [&] {
          scatter_add(x, 0, zeros({2, 2}, kI64), ones({1, 2}));
        },
        {"scatter_add", "src", "[1, 2]", "[2, 2]"});
    ct::check_error(
        [&] {
          scatter_add(x, 0, zeros({1, 1}, kI64), ones({1, 1}, kF64));
        },
        {"scatter_add", "float64", "float32"});
    ct::check_error(
        [&] {
          index_add(x, 1, tensor(std::vector<int64_t>{0, -2}), ones({3, 2}));
        },
        {"index_add", "index -2", "dim 1", "size 4"});
    ct::check_error(
        [&] {
          index_add(x, 1, tensor(std::vector<int64_t>{0, 1}), ones({3, 3}));
        },
        {"index_add", "[3, 3]", "[3, 2]"});
    ct::check_error(
        [&] {
          index_add(zeros({3}, kI64), 0, tensor(std::vector<int64_t>{0}), ones({1}, kI64), 0.5);
        },
        {"index_add", "alpha 0.5", "int64"});
    ct::check_error(
        [&] {
          one_hot(tensor(std::vector<int64_t>{0, 3}), 3);
        },
        {"one_hot", "class value 3", "num_classes 3"});
    ct::check_error(
        [&] {
          one_hot(tensor(std::vector<int64_t>{-1, 0}));
        },
        {"one_hot", "class value -1"});
    ct::check_error([&] { one_hot(tensor(std::vector<int64_t>{})); }, {"one_hot", "empty"});
    ct::check_error([&] { one_hot(zeros({2}), 3); }, {"one_hot", "float32"});
  }
}
