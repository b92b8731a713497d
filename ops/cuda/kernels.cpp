// The CUDA kernels of coil's op families, host side: each reads the tensors' geometry, hands
// plain pointers and strides to the device code (launch.h, *.cu) or to cuBLAS, and registers
// itself in the op table's CUDA column. Signatures and semantics are those of ops/cpu/kernels.h;
// the CUDA results are tested against the CPU kernels (tests/cuda/).
#include <cublas_v2.h>

#include <algorithm>

#include "../../core/autocast.h"
#include "../elementwise_math.h"
#include "../cpu/loops.h"
#include "host.h"

namespace coil::cuda {
namespace {

// The CPU's loop geometry (ops/cpu/loops.cpp: broadcast dims get stride 0, size-1 dims go,
// dims every operand walks contiguously merge), with strides in elements.
ElemGeom elem_geom(const TensorList& ops) {
  const cpu::ElemLoop L = cpu::make_loop(ops);
  const int nd = static_cast<int>(L.shape.size());
  COIL_CHECK(nd <= kMaxDims, "cuda: an elementwise loop over ", nd, " non-mergeable dims; at most ",
             kMaxDims, " are supported");
  ElemGeom g;
  g.ndim = nd;
  g.numel = L.numel;
  for (int d = 0; d < nd; ++d) {
    g.sizes[d] = L.shape[d];
    for (size_t k = 0; k < ops.size(); ++k)
      g.strides[k][d] = L.strides[d][k] / static_cast<int64_t>(ops[k].element_size());
  }
  return g;
}

void unary_kernel(UnaryOp op, const Tensor& out, const Tensor& in, double p0, double p1) {
  check_on_gpu("unary", {&out, &in});
  if ((out.dtype() == kI32 || out.dtype() == kI64) && !math::integer_unary(op))
    fail("unary: op not defined for integer tensors");
  DeviceGuard g(out.device());
  launch_unary(static_cast<int>(op), ty(in.dtype()), ty(out.dtype()), elem_geom({out, in}),
               out.raw_data(), in.raw_data(), p0, p1, stream());
  after_launch("unary kernel");
}

void binary_kernel(BinaryOp op, const Tensor& out, const Tensor& a, const Tensor& b, double alpha) {
  check_on_gpu("binary", {&out, &a, &b});
  COIL_CHECK(!(op == BinaryOp::div && !is_floating(out.dtype())),
             "div: integer division is not supported; convert to float first");
  DeviceGuard g(out.device());
  launch_binary(static_cast<int>(op), ty(a.dtype()), elem_geom({out, a, b}), out.raw_data(),
                a.raw_data(), b.raw_data(), alpha, stream());
  after_launch("binary kernel");
}

void where_kernel(const Tensor& out, const Tensor& cond, const Tensor& a, const Tensor& b) {
  check_on_gpu("where", {&out, &cond, &a, &b});
  DeviceGuard g(out.device());
  launch_where(ty(out.dtype()), elem_geom({out, cond, a, b}), out.raw_data(), cond.raw_data(),
               a.raw_data(), b.raw_data(), stream());
  after_launch("where kernel");
}

void copy_kernel(const Tensor& dst, const Tensor& src) {
  COIL_CHECK(dst.device() == src.device(), "copy_: ", src.device(), " to ", dst.device(),
             " goes through Tensor::to");
  check_on_gpu("copy", {&dst, &src});
  DeviceGuard g(dst.device());
  if (dst.dtype() == src.dtype() && dst.is_contiguous() && src.is_contiguous()) {
    if (dst.nbytes() > 0 && dst.raw_data() != src.raw_data())
      check(cudaMemcpyAsync(dst.raw_data(), src.raw_data(), dst.nbytes(), cudaMemcpyDeviceToDevice,
                            stream()),
            "cudaMemcpyAsync");
    return;
  }
  launch_copy(ty(dst.dtype()), ty(src.dtype()), elem_geom({dst, src}), dst.raw_data(),
              src.raw_data(), stream());
  after_launch("copy kernel");
}

void fill_kernel(const Tensor& out, double value) {
  check_on_gpu("fill_", {&out});
  DeviceGuard g(out.device());
  launch_fill(ty(out.dtype()), elem_geom({out}), out.raw_data(), value, stream());
  after_launch("fill kernel");
}

void reduce_kernel(ReduceOp op, const Tensor& out, const Tensor& idx, const Tensor& in,
                   int64_t outer, int64_t r) {
  check_on_gpu("reduce", {&out, &idx, &in});
  COIL_CHECK(!is_half(in.dtype()), "reduce kernel: 16-bit inputs are converted by the op layer");
  DeviceGuard g(in.device());
  const bool index_only = op == ReduceOp::argmax || op == ReduceOp::argmin;
  const int64_t sb = reduce_scratch_bytes(static_cast<int>(op), outer, r);
  Tensor scratch = sb > 0 ? empty({sb / 8}, Options(kI64, in.device())) : Tensor();
  launch_reduce(static_cast<int>(op), ty(in.dtype()), index_only ? nullptr : out.raw_data(),
                idx.defined() ? idx.data_ptr<int64_t>() : nullptr, in.raw_data(), outer, r,
                scratch.defined() ? scratch.raw_data() : nullptr, stream());
  after_launch("reduce kernel");
}

void softmax_kernel(const Tensor& out, const Tensor& in, int64_t outer, int64_t n, int64_t inner,
                    bool log) {
  check_on_gpu("softmax", {&out, &in});
  DeviceGuard g(in.device());
  launch_softmax(ty(in.dtype()), out.raw_data(), in.raw_data(), outer, n, inner, log, stream());
  after_launch("softmax kernel");
}

// A matrix operand of cuBLAS (column-major): rows x cols with element (i, j) at
// i * s_row + j * s_col, as op N (s_row == 1) or op T (s_col == 1) over its storage.
struct ColMajor {
  cublasOperation_t op = CUBLAS_OP_N;
  int64_t ld = 1;
  bool ok = false;
};
ColMajor col_major(int64_t rows, int64_t cols, int64_t s_row, int64_t s_col) {
  if (rows == 1) s_row = 1;  // the stride of a size-1 dim is free
  if (cols == 1) s_col = std::max<int64_t>(rows, 1);
  if (s_row == 1 && s_col >= std::max<int64_t>(rows, 1)) return {CUBLAS_OP_N, s_col, true};
  if (s_col == 1 && s_row >= std::max<int64_t>(cols, 1)) return {CUBLAS_OP_T, s_row, true};
  return {};
}

// out (B, n, m) = a (B, n, k) @ b (B, k, m), row-major out: cuBLAS computes the column-major
// out^T (m x n) = b^T (m x k) @ a^T (k x n), each operand read in place when one of its strides
// is 1 (else from a contiguous copy).
void gemm_kernel(const Tensor& out, const Tensor& a_in, const Tensor& b_in) {
  check_on_gpu("bmm", {&out, &a_in, &b_in});
  const DType t = out.dtype();
  COIL_CHECK(t == kF32 || t == kF64 || t == kBF16 || t == kF16, "bmm (cuda): ", t,
             " matrices are not supported on cuda (cuBLAS: f32, f64, bf16, f16)");
  DeviceGuard g(out.device());
  const int64_t B = out.size(0), n = out.size(1), m = out.size(2), k = a_in.size(2);
  if (B == 0 || n == 0 || m == 0) return;
  if (k == 0) {
    fill_kernel(out, 0);
    return;
  }
  Tensor a = a_in, b = b_in;
  ColMajor bt = col_major(m, k, b.strides()[2], b.strides()[1]);
  if (!bt.ok) {
    b = b.contiguous();
    bt = col_major(m, k, b.strides()[2], b.strides()[1]);
  }
  ColMajor at = col_major(k, n, a.strides()[2], a.strides()[1]);
  if (!at.ok) {
    a = a.contiguous();
    at = col_major(k, n, a.strides()[2], a.strides()[1]);
  }
  const int64_t sa = a.size(0) == 1 ? 0 : a.strides()[0], sb = b.size(0) == 1 ? 0 : b.strides()[0];
  cublasHandle_t h = cublas();
  if (t == kBF16 || t == kF16 || (t == kF32 && allow_tf32())) {
    // 16-bit inputs on the tensor cores with float32 accumulation (and output rounded once);
    // float32 on TF32 tensor cores when set_allow_tf32(true)
    const cudaDataType_t dt = t == kBF16 ? CUDA_R_16BF : t == kF16 ? CUDA_R_16F : CUDA_R_32F;
    const cublasComputeType_t ct = t == kF32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    const float one = 1, zero = 0;
    check_cublas(cublasGemmStridedBatchedEx(h, bt.op, at.op, m, n, k, &one, b.raw_data(), dt, bt.ld,
                                            sb, a.raw_data(), dt, at.ld, sa, &zero, out.raw_data(),
                                            dt, m, n * m, B, ct, CUBLAS_GEMM_DEFAULT),
                 "cublasGemmStridedBatchedEx");
  } else if (t == kF32) {
    const float one = 1, zero = 0;
    check_cublas(cublasSgemmStridedBatched(h, bt.op, at.op, m, n, k, &one, b.data_ptr<float>(),
                                           bt.ld, sb, a.data_ptr<float>(), at.ld, sa, &zero,
                                           out.data_ptr<float>(), m, n * m, B),
                 "cublasSgemmStridedBatched");
  } else {
    const double one = 1, zero = 0;
    check_cublas(cublasDgemmStridedBatched(h, bt.op, at.op, m, n, k, &one, b.data_ptr<double>(),
                                           bt.ld, sb, a.data_ptr<double>(), at.ld, sa, &zero,
                                           out.data_ptr<double>(), m, n * m, B),
                 "cublasDgemmStridedBatched");
  }
}

// Grouped GEMM as the CPU runs it (ops/cpu/gemm.cpp): one cuBLAS GEMM per non-empty group on
// views of the operands, all queued on the device's stream.
void grouped_gemm_kernel(bool outer, const Tensor& out, const Tensor& a, const Tensor& b,
                         const std::vector<int64_t>& offsets) {
  check_on_gpu("grouped_mm", {&out, &a, &b});
  DeviceGuard g(out.device());
  const int64_t groups = static_cast<int64_t>(offsets.size()) - 1;
  for (int64_t e = 0; e < groups; ++e) {
    const int64_t lo = offsets[e], rows = offsets[e + 1] - lo;
    if (outer) {
      Tensor oe = out.select(0, e).unsqueeze(0);  // (1, k, m)
      if (rows == 0)
        fill_kernel(oe, 0);
      else
        gemm_kernel(oe, a.narrow(0, lo, rows).t().unsqueeze(0), b.narrow(0, lo, rows).unsqueeze(0));
    } else if (rows > 0) {
      gemm_kernel(out.narrow(0, lo, rows).unsqueeze(0), a.narrow(0, lo, rows).unsqueeze(0),
                  b.select(0, e).unsqueeze(0));
    }
  }
}

void register_kernels() {
  set_cuda({"abs",     "clamp",       "erf",  "exp",        "gelu",       "isfinite", "log",
            "log1p",   "logical_not", "neg",  "pow_scalar", "reciprocal", "relu",     "rsqrt",
            "sigmoid", "sign",        "silu", "softplus",   "sqrt",       "square",   "tanh"},
           &unary_kernel);
  set_cuda({"add", "add_", "div", "eq", "ge", "gt", "le", "logical_and", "logical_or", "lt",
            "maximum", "minimum", "mul", "ne", "pow", "sub"},
           &binary_kernel);
  set_cuda({"where"}, &where_kernel);
  set_cuda({"clone", "copy_", "to_dtype"}, &copy_kernel);
  set_cuda({"fill_"}, &fill_kernel);
  set_cuda({"amax", "argmax", "argmin", "logsumexp", "max", "min", "sum"}, &reduce_kernel);
  set_cuda({"log_softmax", "softmax"}, &softmax_kernel);
  set_cuda({"bmm"}, &gemm_kernel);
  set_cuda({"grouped_mm"}, &grouped_gemm_kernel);
}
const OpRegistrar g_registrar(&register_kernels);

}  // namespace

void fill(const Tensor& out, double value) { fill_kernel(out, value); }

}  // namespace coil::cuda
