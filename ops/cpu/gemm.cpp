// CPU GEMM: f32/f64 through OpenBLAS's cblas (OpenMP build), integers by plain loops.
// Layout: out (B, n, m) contiguous; a (B, n, k) and b (B, k, m) with any strides. A matrix whose
// last or second-last stride is 1 goes to BLAS as is (NoTrans or Trans); others are copied.
#include <cblas.h>

#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "../../core/parallel.h"
#include "kernels.h"

namespace coil::cpu {

namespace {

struct MatView {
  CBLAS_TRANSPOSE trans;
  int64_t ld;
};
// How BLAS should read a row-major (rows x cols) matrix with these strides, if it can.
bool blas_view(int64_t rows, int64_t cols, int64_t s_row, int64_t s_col, MatView* v) {
  if (s_col == 1 && (s_row >= std::max<int64_t>(cols, 1) || rows == 1)) {
    *v = {CblasNoTrans, std::max<int64_t>(rows == 1 ? cols : s_row, 1)};
    return true;
  }
  if (s_row == 1 && (s_col >= std::max<int64_t>(rows, 1) || cols == 1)) {
    *v = {CblasTrans, std::max<int64_t>(cols == 1 ? rows : s_col, 1)};
    return true;
  }
  return false;
}

// A product with one row or one column is a matrix-vector product: gemv streams the matrix
// once, where gemm would first pack it (decoding a token is all such products).
template <class T>
void gemv_one(CBLAS_TRANSPOSE t, int64_t rows, int64_t cols, const T* mat, int64_t ld, const T* x,
              int64_t incx, T* y) {
  if constexpr (std::is_same_v<T, float>) {
    cblas_sgemv(CblasRowMajor, t, static_cast<int>(rows), static_cast<int>(cols), 1.0f, mat,
                static_cast<int>(ld), x, static_cast<int>(incx), 0.0f, y, 1);
  } else {
    cblas_dgemv(CblasRowMajor, t, static_cast<int>(rows), static_cast<int>(cols), 1.0, mat,
                static_cast<int>(ld), x, static_cast<int>(incx), 0.0, y, 1);
  }
}

CBLAS_TRANSPOSE flip(CBLAS_TRANSPOSE t) { return t == CblasNoTrans ? CblasTrans : CblasNoTrans; }

template <class T>
void gemm_one(int64_t n, int64_t m, int64_t k, const T* a, MatView va, const T* b, MatView vb,
              T* c) {
  if (n == 1 && m > 1) {  // c (m) = op(B)^T a: B is stored (k x m) or, transposed, (m x k)
    const int64_t rows = vb.trans == CblasNoTrans ? k : m, cols = vb.trans == CblasNoTrans ? m : k;
    gemv_one<T>(flip(vb.trans), rows, cols, b, vb.ld, a, va.trans == CblasNoTrans ? 1 : va.ld, c);
    return;
  }
  if (m == 1 && n > 1) {  // c (n) = op(A) b: A is stored (n x k) or, transposed, (k x n)
    const int64_t rows = va.trans == CblasNoTrans ? n : k, cols = va.trans == CblasNoTrans ? k : n;
    gemv_one<T>(va.trans, rows, cols, a, va.ld, b, vb.trans == CblasNoTrans ? vb.ld : 1, c);
    return;
  }
  if constexpr (std::is_same_v<T, float>) {
    cblas_sgemm(CblasRowMajor, va.trans, vb.trans, static_cast<int>(n), static_cast<int>(m),
                static_cast<int>(k), 1.0f, a, static_cast<int>(va.ld), b, static_cast<int>(vb.ld),
                0.0f, c, static_cast<int>(m));
  } else {
    cblas_dgemm(CblasRowMajor, va.trans, vb.trans, static_cast<int>(n), static_cast<int>(m),
                static_cast<int>(k), 1.0, a, static_cast<int>(va.ld), b, static_cast<int>(vb.ld),
                0.0, c, static_cast<int>(m));
  }
}

// OpenBLAS's DYNAMIC_ARCH picks its kernels when it loads. Debian's 0.3.21 does not know CPUs
// newer than it (this machine's family 6 model 207 among them) and falls back to "Prescott",
// its SSE3 kernels, 3.5-5x slower than the AVX-512 ones. When that happened and the user did not
// choose a core with OPENBLAS_CORETYPE, select again for the instructions the CPU has. It runs
// before any BLAS call, from coil's load, so no BLAS buffer exists yet.
extern "C" void gotoblas_dynamic_init(void);
extern "C" void gotoblas_dynamic_quit(void);

struct BlasCoreSelect {
  BlasCoreSelect() {
    if (std::getenv("OPENBLAS_CORETYPE") || std::getenv("COIL_KEEP_BLAS_CORE")) return;
    const char* name = openblas_get_corename();
    if (!name || strcasecmp(name, "prescott") != 0) return;
    __builtin_cpu_init();
    const char* want = nullptr;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
      want = "SkylakeX";
    else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
      want = "Haswell";
    if (!want) return;
    setenv("OPENBLAS_CORETYPE", want, 1);
    gotoblas_dynamic_quit();
    gotoblas_dynamic_init();
    unsetenv("OPENBLAS_CORETYPE");
  }
};
const BlasCoreSelect blas_core_select;

}  // namespace

void gemm_kernel(const Tensor& out, const Tensor& a_in, const Tensor& b_in) {
  const int64_t B = out.sizes()[0], n = out.sizes()[1], m = out.sizes()[2], k = a_in.sizes()[2];
  dispatch_dtype(out.dtype(), "matmul", [&]<class T>() {
    if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
      if (k == 0) {
        T* c = out.data_ptr<T>();
        for (int64_t i = 0; i < B * n * m; ++i) c[i] = 0;
        return;
      }
      if (n == 0 || m == 0) return;
      Tensor a = a_in, b = b_in;
      MatView va, vb;
      if (!blas_view(n, k, a.strides()[1], a.strides()[2], &va)) {
        a = a.contiguous();
        blas_view(n, k, a.strides()[1], a.strides()[2], &va);
      }
      if (!blas_view(k, m, b.strides()[1], b.strides()[2], &vb)) {
        b = b.contiguous();
        blas_view(k, m, b.strides()[1], b.strides()[2], &vb);
      }
      const T* ap = a.data_ptr<T>();
      const T* bp = b.data_ptr<T>();
      T* cp = out.data_ptr<T>();
      const int64_t sa = a.strides()[0], sb = b.strides()[0];
      auto one = [&](int64_t i) {
        gemm_one<T>(n, m, k, ap + i * sa, va, bp + i * sb, vb, cp + i * n * m);
      };
      // Many small products: one per thread (BLAS runs single-threaded inside the region).
      if (B > 1 && n * m * k < (1 << 18)) {
        parallel_for(0, B, 1, [&](int64_t lo, int64_t hi) {
          for (int64_t i = lo; i < hi; ++i) one(i);
        });
      } else {
        for (int64_t i = 0; i < B; ++i) one(i);
      }
    } else if constexpr (std::is_same_v<T, int32_t> || std::is_same_v<T, int64_t>) {
      const T* ap = a_in.data_ptr<T>();
      const T* bp = b_in.data_ptr<T>();
      T* cp = out.data_ptr<T>();
      const auto& as = a_in.strides();
      const auto& bs = b_in.strides();
      for (int64_t z = 0; z < B; ++z)
        for (int64_t i = 0; i < n; ++i)
          for (int64_t j = 0; j < m; ++j) {
            T s = 0;
            for (int64_t p = 0; p < k; ++p)
              s += ap[z * as[0] + i * as[1] + p * as[2]] * bp[z * bs[0] + p * bs[1] + j * bs[2]];
            cp[(z * n + i) * m + j] = s;
          }
    } else {
      fail("matmul: unsupported dtype ", out.dtype());
    }
  });
}

}  // namespace coil::cpu

namespace coil::cpu {

// One GEMM per group on views of the operands (gemm_kernel takes any strides), so no group is
// padded and no row is copied. Large groups each use all threads; many small ones run one per
// thread (BLAS single-threaded inside the parallel region), as gemm_kernel does for batches.
void grouped_gemm_kernel(bool outer, const Tensor& out, const Tensor& a, const Tensor& b,
                         const std::vector<int64_t>& offsets) {
  const int64_t groups = static_cast<int64_t>(offsets.size()) - 1;
  auto one = [&](int64_t e) {
    const int64_t lo = offsets[e], rows = offsets[e + 1] - lo;
    if (outer) {
      Tensor oe = out.select(0, e).unsqueeze(0);  // (1, k, m)
      if (rows == 0) {
        oe.zero_();
        return;
      }
      gemm_kernel(oe, a.narrow(0, lo, rows).t().unsqueeze(0), b.narrow(0, lo, rows).unsqueeze(0));
    } else if (rows > 0) {
      gemm_kernel(out.narrow(0, lo, rows).unsqueeze(0), a.narrow(0, lo, rows).unsqueeze(0),
                  b.select(0, e).unsqueeze(0));
    }
  };
  const int64_t total = offsets.back() - offsets.front();
  if (groups > 1 && total < 1024 * groups) {
    parallel_for(0, groups, 1, [&](int64_t lo, int64_t hi) {
      for (int64_t e = lo; e < hi; ++e) one(e);
    });
  } else {
    for (int64_t e = 0; e < groups; ++e) one(e);
  }
}

}  // namespace coil::cpu
