#include "test_util.h"

#include <algorithm>
#include <utility>

using namespace coil;

namespace {

struct RefSort {
  std::vector<double> values;
  std::vector<double> indices;
};

// Reference: each line along d sorted with std::stable_sort on (is_nan, value), so NaN is the
// largest value and ties keep their order; the first k of each line are kept.
RefSort ref_sort(const std::vector<double>& xv, const Shape& xs, int64_t d, int64_t k,
                 bool descending) {
  Shape os = xs;
  os[d] = k;
  RefSort r;
  r.values.assign(static_cast<size_t>(shape_numel(os)), 0.0);
  r.indices.assign(r.values.size(), 0.0);
  const int64_t n = xs[d];
  Shape line_shape = xs;
  line_shape[d] = 1;
  for (int64_t l = 0; l < shape_numel(line_shape); ++l) {
    Shape base = ct::unravel(l, line_shape);
    std::vector<std::pair<double, int64_t>> line;
    for (int64_t j = 0; j < n; ++j) {
      Shape xi = base;
      xi[d] = j;
      line.push_back({xv[ct::ravel(xi, xs)], j});
    }
    auto key = [](double v) {
      return std::make_pair(std::isnan(v) ? 1 : 0, std::isnan(v) ? 0.0 : v);
    };
    std::stable_sort(line.begin(), line.end(), [&](const auto& a, const auto& b) {
      return descending ? key(b.first) < key(a.first) : key(a.first) < key(b.first);
    });
    for (int64_t j = 0; j < k; ++j) {
      Shape oi = base;
      oi[d] = j;
      r.values[ct::ravel(oi, os)] = line[j].first;
      r.indices[ct::ravel(oi, os)] = static_cast<double>(line[j].second);
    }
  }
  return r;
}

const std::vector<Shape> kShapes = {{1}, {9}, {3, 7}, {4, 1, 6}, {2, 5, 3}, {3, 2, 129}};

}  // namespace

TEST_SUITE("ops.sort") {
  TEST_CASE("sort and argsort match a stable reference on odd shapes, views and dtypes") {
    manual_seed(21);
    for (const Shape& s : kShapes) {
      const int64_t nd = static_cast<int64_t>(s.size());
      for (int64_t dim = -nd; dim < nd; ++dim) {
        const int64_t d = dim < 0 ? dim + nd : dim;
        for (bool nc : {false, true}) {
          for (bool desc : {false, true}) {
            CAPTURE(shape_str(s));
            CAPTURE(dim);
            CAPTURE(nc);
            CAPTURE(desc);
            Tensor x = ct::rnd(s, kF64, -3, 3, nc);
            RefSort ref = ref_sort(ct::vals(x), s, d, s[d], desc);
            auto [v, i] = sort(x, dim, desc);
            CHECK(i.dtype() == kI64);
            ct::check_close(v, ref.values, 0, 0, "sort values f64");
            ct::check_close(i, ref.indices, 0, 0, "sort indices f64");
            ct::check_close(argsort(x, dim, desc), ref.indices, 0, 0, "argsort");
            // f32, bf16 and int64 keep their dtype; bf16/int values are compared as rounded
            Tensor xf = x.to(kF32);
            RefSort rf = ref_sort(ct::vals(xf), s, d, s[d], desc);
            auto [vf, jf] = sort(xf, dim, desc);
            CHECK(vf.dtype() == kF32);
            ct::check_close(vf, rf.values, 0, 0, "sort f32");
            ct::check_close(jf, rf.indices, 0, 0, "sort f32 indices");
            Tensor xb = x.to(kBF16);
            RefSort rb = ref_sort(ct::vals(xb), s, d, s[d], desc);
            auto [vb, jb] = sort(xb, dim, desc);
            CHECK(vb.dtype() == kBF16);
            ct::check_close(vb, rb.values, 0, 0, "sort bf16");
            ct::check_close(jb, rb.indices, 0, 0, "sort bf16 indices (ties after rounding)");
            Tensor xi = x.to(kI64);
            RefSort ri = ref_sort(ct::vals(xi), s, d, s[d], desc);
            auto [vi, ji] = sort(xi, dim, desc);
            CHECK(vi.dtype() == kI64);
            ct::check_close(vi, ri.values, 0, 0, "sort i64");
            ct::check_close(ji, ri.indices, 0, 0, "sort i64 indices (many ties)");
          }
        }
      }
    }
  }

  TEST_CASE("ties keep the lower index first and NaN sorts as the largest value") {
    Tensor x = tensor(std::vector<float>{2, NAN, 1, 2, -INFINITY, NAN, 1, INFINITY, 2});
    auto [va, ia] = sort(x);
    ct::check_close(va, {-INFINITY, 1, 1, 2, 2, 2, INFINITY, NAN, NAN}, 0, 0, "ascending values");
    ct::check_close(ia, {4, 2, 6, 0, 3, 8, 7, 1, 5}, 0, 0, "ascending indices");
    auto [vd, id] = sort(x, 0, true);
    ct::check_close(vd, {NAN, NAN, INFINITY, 2, 2, 2, 1, 1, -INFINITY}, 0, 0, "descending values");
    ct::check_close(id, {1, 5, 7, 0, 3, 8, 2, 6, 4}, 0, 0, "descending indices");
    auto [tv, ti] = topk(x, 4);
    ct::check_close(tv, {NAN, NAN, INFINITY, 2}, 0, 0, "topk largest with NaN");
    ct::check_close(ti, {1, 5, 7, 0}, 0, 0, "topk largest indices");
    auto [sv, si] = topk(x, 3, 0, false);
    ct::check_close(sv, {-INFINITY, 1, 1}, 0, 0, "topk smallest");
    ct::check_close(si, {4, 2, 6}, 0, 0, "topk smallest indices");
    // bool sorts false before true
    Tensor b = tensor(std::vector<int64_t>{1, 0, 1, 0}).to(kBool);
    ct::check_close(sort(b).second, {1, 3, 0, 2}, 0, 0, "bool");
    // a 0-d tensor sorts to itself
    auto [v0, i0] = sort(scalar_tensor(3.5, kF64));
    CHECK(v0.dim() == 0);
    CHECK(i0.item<int64_t>() == 0);
    CHECK(v0.item<double>() == 3.5);
  }

  TEST_CASE("topk matches the reference's first k for every k, dim and direction") {
    manual_seed(22);
    for (const Shape& s : kShapes) {
      const int64_t nd = static_cast<int64_t>(s.size());
      for (int64_t dim = -nd; dim < nd; ++dim) {
        const int64_t d = dim < 0 ? dim + nd : dim;
        for (int64_t k : {int64_t{0}, int64_t{1}, s[d] / 2, s[d]}) {
          for (bool largest : {true, false}) {
            CAPTURE(shape_str(s));
            CAPTURE(dim);
            CAPTURE(k);
            CAPTURE(largest);
            // small integers as floats: plenty of ties
            Tensor x = randint(-3, 4, s).to(kF32);
            if (nd >= 2) x = x.transpose(0, 1).contiguous().transpose(0, 1);
            RefSort ref = ref_sort(ct::vals(x), s, d, k, largest);
            auto [v, i] = topk(x, k, dim, largest);
            Shape want = s;
            want[d] = k;
            CHECK(v.sizes() == want);
            ct::check_close(v, ref.values, 0, 0, "topk values");
            ct::check_close(i, ref.indices, 0, 0, "topk indices");
          }
        }
      }
    }
    // long rows (partial sort) and many rows (parallel loop)
    for (Shape s : {Shape{3, 5001}, Shape{4000, 17}}) {
      Tensor x = ct::rnd(s, kF64);
      RefSort ref = ref_sort(ct::vals(x), s, 1, 7, true);
      auto [v, i] = topk(x, 7);
      ct::check_close(v, ref.values, 0, 0, "large topk");
      ct::check_close(i, ref.indices, 0, 0, "large topk indices");
      RefSort full = ref_sort(ct::vals(x), s, 1, s[1], false);
      ct::check_close(sort(x).first, full.values, 0, 0, "large sort");
    }
  }

  TEST_CASE("gradients go back to the sorted positions") {
    for (const char* name : {"sort", "topk"}) {
      CAPTURE(name);
      GradcheckCase c = op_info(name).gradcheck();
      ct::check_gradcheck(c.fn, c.inputs);
    }
    CHECK(!op_info("argsort").differentiable);
    manual_seed(23);
    Tensor x = ct::rnd({5, 4}, kF64).requires_grad_();
    ct::check_gradcheck([](const TensorList& v) { return sort(v[0].t(), 0).first; }, {x});
    ct::check_gradcheck([](const TensorList& v) { return topk(v[0].t(), 2, -1).first * 3.0; }, {x});
    ct::check_gradcheck([](const TensorList& v) { return topk(v[0], 5, 0, false).first; }, {x});
    // with ties every element still gets exactly its own gradient
    Tensor t = tensor(std::vector<double>{1, 1, 0, 1}).requires_grad_();
    auto [v, i] = sort(t, 0, true);
    (v * tensor(std::vector<double>{10, 20, 30, 40})).sum().backward();
    ct::check_close(t.grad(), {10, 20, 40, 30}, 0, 0, "sort grad with ties");
  }

  TEST_CASE("boxed forms and the distributed hook") {
    Tensor x = tensor(std::vector<float>{3, 1, 2});
    TensorList r = op_info("topk").boxed({x}, {{"k", int64_t{2}}, {"largest", false}});
    ct::check_close(r[0], {1, 2}, 0, 0, "boxed topk");
    ct::check_close(r[1], {1, 2}, 0, 0, "boxed topk indices");
    ct::check_close(op_info("argsort").boxed({x}, {{"descending", true}})[0], {0, 2, 1}, 0, 0,
                    "boxed argsort");
    struct FakeSpec : DistSpecBase {};
    std::string seen;
    set_dist_handler([&](const OpInfo& op, const TensorList& in, const Attrs&) {
      seen = op.name;
      return TensorList{in[0], in[0]};
    });
    Tensor d = ones({2});
    d.impl().dist = std::make_shared<FakeSpec>();
    sort(d);
    CHECK(seen == "sort");
    topk(d, 1);
    CHECK(seen == "topk");
    set_dist_handler(nullptr);
  }

  TEST_CASE("bad inputs throw errors naming the op and the values") {
    Tensor x = zeros({3, 5});
    ct::check_error([&] { topk(x, 6, 1); }, {"topk", "k 6", "dim 1", "size 5"});
    ct::check_error([&] { topk(x, 4, 0); }, {"topk", "k 4", "dim 0", "size 3"});
    ct::check_error([&] { topk(x, -1); }, {"topk", "-1"});
    ct::check_error([&] { sort(x, 2); }, {"sort", "dim 2"});
    ct::check_error([&] { argsort(x, -3); }, {"argsort", "dim -3"});
  }
}
