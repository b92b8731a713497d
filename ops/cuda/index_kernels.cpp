// Host side of the CUDA indexing, cumulative and random kernels (device code in index.cu):
// geometry in, launch, then the index check. Semantics are ops/cpu/index.cpp's,
// ops/cpu/cumulative.cpp's and ops/cpu/random.cpp's, except that index_add and scatter_add sum
// duplicates in an unspecified order (atomics).
#include "host.h"

namespace coil::cuda {
namespace {

IndexDims dims(const IndexGeom& g) { return {g.outer, g.n, g.m, g.inner}; }

void index_select_kernel(const Tensor& out, const Tensor& x, const Tensor& index,
                         const IndexGeom& g) {
  check_on_gpu(g.op, {&out, &x, &index});
  DeviceGuard dg(out.device());
  BadIndexFlag bad(out.device());
  launch_index_select(dims(g), static_cast<int>(x.element_size()), out.raw_data(), x.raw_data(),
                      index.data_ptr<int64_t>(), bad.ptr(), stream());
  after_launch(g.op);
  bad.check(g);
}

void index_add_kernel(const Tensor& out, const Tensor& src, const Tensor& index, const IndexGeom& g,
                      double alpha) {
  check_on_gpu(g.op, {&out, &src, &index});
  COIL_CHECK(!is_half(out.dtype()), g.op, ": the kernel does not accumulate ", out.dtype());
  DeviceGuard dg(out.device());
  BadIndexFlag bad(out.device());
  launch_index_add(ty(out.dtype()), dims(g), out.raw_data(), src.raw_data(),
                   index.data_ptr<int64_t>(), alpha, bad.ptr(), stream());
  after_launch(g.op);
  bad.check(g);
}

void gather_kernel(const Tensor& out, const Tensor& x, const Tensor& index, const IndexGeom& g) {
  check_on_gpu(g.op, {&out, &x, &index});
  DeviceGuard dg(out.device());
  BadIndexFlag bad(out.device());
  launch_gather(dims(g), static_cast<int>(x.element_size()), out.raw_data(), x.raw_data(),
                index.data_ptr<int64_t>(), bad.ptr(), stream());
  after_launch(g.op);
  bad.check(g);
}

void scatter_add_kernel(const Tensor& out, const Tensor& src, const Tensor& index,
                        const IndexGeom& g) {
  check_on_gpu(g.op, {&out, &src, &index});
  COIL_CHECK(!is_half(out.dtype()), g.op, ": the kernel does not accumulate ", out.dtype());
  DeviceGuard dg(out.device());
  BadIndexFlag bad(out.device());
  launch_scatter_add(ty(out.dtype()), dims(g), out.raw_data(), src.raw_data(),
                     index.data_ptr<int64_t>(), bad.ptr(), stream());
  after_launch(g.op);
  bad.check(g);
}

void one_hot_kernel(const Tensor& out, const Tensor& ids, int64_t num_classes) {
  check_on_gpu("one_hot", {&out, &ids});
  DeviceGuard dg(out.device());
  BadIndexFlag bad(out.device());
  launch_one_hot(out.data_ptr<int64_t>(), ids.data_ptr<int64_t>(), ids.numel(), num_classes,
                 bad.ptr(), stream());
  after_launch("one_hot");
  int64_t v = 0;
  COIL_CHECK(!bad.raised(&v), "one_hot: class value ", v, " is out of range for num_classes ",
             num_classes);
}

void scan_kernel(ScanOp op, const Tensor& out, const Tensor& in, const Tensor& aux, int64_t outer,
                 int64_t n, int64_t inner, bool reverse) {
  check_on_gpu("cumsum", {&out, &in, &aux});
  COIL_CHECK(!is_half(in.dtype()) && in.dtype() != kBool, "scan kernel: unsupported dtype ",
             in.dtype());
  DeviceGuard dg(out.device());
  launch_cumulative(static_cast<int>(op), ty(in.dtype()), out.raw_data(), in.raw_data(),
                    aux.defined() ? aux.raw_data() : nullptr, outer, n, inner, reverse, stream());
  after_launch("cumulative kernel");
}

void random_kernel(RandomKind kind, const Tensor& out, double a, double b, uint64_t seed,
                   uint64_t offset, uint64_t first) {
  check_on_gpu("random", {&out});
  DeviceGuard dg(out.device());
  launch_random(static_cast<int>(kind), ty(out.dtype()), out.raw_data(), out.numel(), a, b, seed,
                offset, first, stream());
  after_launch("random kernel");
}

void dropout_kernel(const Tensor& out, const Tensor& mask, const Tensor& in, double p, double scale,
                    uint64_t seed, uint64_t offset, uint64_t first) {
  check_on_gpu("dropout", {&out, &mask, &in});
  COIL_CHECK(is_floating(in.dtype()), "dropout kernel: expected a floating dtype, got ",
             in.dtype());
  DeviceGuard dg(out.device());
  launch_dropout(ty(in.dtype()), out.raw_data(), reinterpret_cast<uint8_t*>(mask.data_ptr<bool>()),
                 in.raw_data(), in.numel(), p, scale, seed, offset, first, stream());
  after_launch("dropout kernel");
}

void sort_kernel(const Tensor& values, const Tensor& indices, const Tensor& scratch,
                 const Tensor& in, int64_t outer, int64_t n, int64_t k, bool descending) {
  (void)scratch;  // ranks need no scratch
  check_on_gpu("sort", {&values, &indices, &in});
  COIL_CHECK(!is_half(in.dtype()), "sort: the kernel does not compare ", in.dtype(),
             "; widen it to f32 first");
  DeviceGuard dg(in.device());
  launch_sort(ty(in.dtype()), values.raw_data(), indices.data_ptr<int64_t>(), in.raw_data(), outer,
              n, k, descending, stream());
  after_launch("sort kernel");
}

void register_kernels() {
  set_cuda({"sort", "argsort", "topk"}, &sort_kernel);
  set_cuda({"embedding", "index_select"}, &index_select_kernel);
  set_cuda({"index_add"}, &index_add_kernel);
  set_cuda({"gather"}, &gather_kernel);
  set_cuda({"scatter_add"}, &scatter_add_kernel);
  set_cuda({"one_hot"}, &one_hot_kernel);
  set_cuda({"cumsum", "cumprod"}, &scan_kernel);
  set_cuda({"rand", "randn", "randint", "uniform_", "normal_", "bernoulli_"}, &random_kernel);
  set_cuda({"dropout"}, &dropout_kernel);
}
const OpRegistrar g_registrar(&register_kernels);

}  // namespace
}  // namespace coil::cuda
