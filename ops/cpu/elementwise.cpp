// CPU elementwise kernels: unary, binary, where, copy/cast, fill.
// Layout: any strides; ElemLoop merges contiguous dims so the common case is one flat row.
#include <cmath>
#include <limits>
#include <type_traits>

#include "../../core/simd.h"
#include "../elementwise_math.h"
#include "kernels.h"
#include "loops.h"

namespace coil::cpu {

namespace {

template <class T>
using Acc = std::conditional_t<std::is_same_v<T, double>, double, float>;

// ---- unary functors: scalar form, and a Vec form where one pays off ----
struct Params {
  double p0, p1;
};

template <class T>
T unary_scalar(UnaryOp op, T x, const Params& p) {
  return math::unary_float<T>(op, x, p.p0, p.p1);
}

template <class T>
T unary_int(UnaryOp op, T x, const Params& p) {
  return math::unary_int<T>(op, x, p.p0, p.p1);
}

// A contiguous f32 row: one loop per op, so each compiles to vector code (the exp-heavy ones
// through simd::exp). Returns false for ops left to the scalar path.
template <class F>
void f32_row(float* __restrict o, const float* __restrict a, int64_t n, F f) {
  for (int64_t i = 0; i < n; ++i) o[i] = f(a[i]);
}
template <class F>
void f32_row_vec(float* o, const float* a, int64_t n, F vf, UnaryOp op) {
  int64_t i = 0;
  for (; i + simd::kWidth <= n; i += simd::kWidth) simd::store(o + i, vf(simd::load(a + i)));
  Params p{0, 0};
  for (; i < n; ++i) o[i] = unary_scalar<float>(op, a[i], p);
}
bool unary_f32_row(UnaryOp op, float* o, const float* a, int64_t n, const Params& p) {
  const float lo = static_cast<float>(p.p0), hi = static_cast<float>(p.p1);
  switch (op) {
    case UnaryOp::exp:
      f32_row_vec(
          o, a, n, [](simd::Vec v) { return simd::exp(v); }, op);
      return true;
    case UnaryOp::sigmoid:
      f32_row_vec(
          o, a, n, [](simd::Vec v) { return simd::sigmoid(v); }, op);
      return true;
    case UnaryOp::silu:
      f32_row_vec(
          o, a, n, [](simd::Vec v) { return simd::silu(v); }, op);
      return true;
    case UnaryOp::neg:
      f32_row(o, a, n, [](float v) { return -v; });
      return true;
    case UnaryOp::abs:
      f32_row(o, a, n, [](float v) { return std::fabs(v); });
      return true;
    case UnaryOp::square:
      f32_row(o, a, n, [](float v) { return v * v; });
      return true;
    case UnaryOp::sqrt:
      f32_row(o, a, n, [](float v) { return std::sqrt(v); });
      return true;
    case UnaryOp::rsqrt:
      f32_row(o, a, n, [](float v) { return 1.0f / std::sqrt(v); });
      return true;
    case UnaryOp::reciprocal:
      f32_row(o, a, n, [](float v) { return 1.0f / v; });
      return true;
    case UnaryOp::relu:
      f32_row(o, a, n, [](float v) { return v > 0.0f || v != v ? v : 0.0f; });
      return true;
    case UnaryOp::clamp:
      if (std::isnan(p.p0) || std::isnan(p.p1)) return false;  // one-sided: scalar path
      f32_row(o, a, n,
              [lo, hi](float v) { return v != v ? v : (v < lo ? lo : (v > hi ? hi : v)); });
      return true;
    default:
      return false;
  }
}

template <class T, class F>
void run_unary(const Tensor& out, const Tensor& in, const F& f) {
  ElemLoop L = make_loop({out, in});
  run_loop(L, [&](char** p, const int64_t* s, int64_t n) {
    if (s[0] == sizeof(T) && s[1] == sizeof(T)) {
      T* __restrict o = reinterpret_cast<T*>(p[0]);
      const T* __restrict a = reinterpret_cast<const T*>(p[1]);
      for (int64_t i = 0; i < n; ++i) o[i] = f(a[i]);
    } else {
      for (int64_t i = 0; i < n; ++i)
        *reinterpret_cast<T*>(p[0] + i * s[0]) = f(*reinterpret_cast<const T*>(p[1] + i * s[1]));
    }
  });
}

}  // namespace

void unary_kernel(UnaryOp op, const Tensor& out, const Tensor& in, double p0, double p1) {
  const Params prm{p0, p1};
  if (op == UnaryOp::isfinite || op == UnaryOp::logical_not) {
    ElemLoop L = make_loop({out, in});
    dispatch_dtype(in.dtype(), "isfinite", [&]<class T>() {
      run_loop(L, [&](char** p, const int64_t* s, int64_t n) {
        for (int64_t i = 0; i < n; ++i) {
          T v = *reinterpret_cast<const T*>(p[1] + i * s[1]);
          bool r;
          if (op == UnaryOp::logical_not) {
            r = static_cast<double>(v) == 0.0;
          } else if constexpr (std::is_integral_v<T>) {
            r = true;
          } else {
            r = std::isfinite(static_cast<double>(v));
          }
          *reinterpret_cast<uint8_t*>(p[0] + i * s[0]) = r;
        }
      });
    });
    return;
  }
  if ((out.dtype() == kI32 || out.dtype() == kI64) && !math::integer_unary(op))
    fail("unary: op not defined for integer tensors");
  switch (out.dtype()) {
    case kF32: {
      ElemLoop L = make_loop({out, in});
      run_loop(L, [&](char** p, const int64_t* s, int64_t n) {
        if (s[0] == 4 && s[1] == 4 &&
            unary_f32_row(op, reinterpret_cast<float*>(p[0]), reinterpret_cast<const float*>(p[1]),
                          n, prm))
          return;
        for (int64_t i = 0; i < n; ++i)
          *reinterpret_cast<float*>(p[0] + i * s[0]) =
              unary_scalar<float>(op, *reinterpret_cast<const float*>(p[1] + i * s[1]), prm);
      });
      return;
    }
    case kF64:
      run_unary<double>(out, in, [&](double x) { return unary_scalar<double>(op, x, prm); });
      return;
    case kI32:
      run_unary<int32_t>(out, in, [&](int32_t x) { return unary_int<int32_t>(op, x, prm); });
      return;
    case kI64:
      run_unary<int64_t>(out, in, [&](int64_t x) { return unary_int<int64_t>(op, x, prm); });
      return;
    default:
      fail("unary kernel: unsupported dtype ", out.dtype());
  }
}

namespace {

template <class T>
T binary_scalar(BinaryOp op, T a, T b, T alpha) {
  return math::binary_value<T>(op, a, b, alpha);
}

template <class T>
bool compare_scalar(BinaryOp op, T a, T b) {
  return math::compare_value<T>(op, a, b);
}

// The three row shapes worth specialising: all contiguous, and one side a broadcast scalar.
template <class T, class F>
void binary_rows(const ElemLoop& L, const F& f) {
  constexpr int64_t S = sizeof(T);
  run_loop(L, [&](char** p, const int64_t* s, int64_t n) {
    T* __restrict o = reinterpret_cast<T*>(p[0]);
    const T* __restrict a = reinterpret_cast<const T*>(p[1]);
    const T* __restrict b = reinterpret_cast<const T*>(p[2]);
    if (s[0] == S && s[1] == S && s[2] == S) {
      for (int64_t i = 0; i < n; ++i) o[i] = f(a[i], b[i]);
    } else if (s[0] == S && s[1] == S && s[2] == 0) {
      const T bv = *b;
      for (int64_t i = 0; i < n; ++i) o[i] = f(a[i], bv);
    } else if (s[0] == S && s[1] == 0 && s[2] == S) {
      const T av = *a;
      for (int64_t i = 0; i < n; ++i) o[i] = f(av, b[i]);
    } else {
      for (int64_t i = 0; i < n; ++i)
        *reinterpret_cast<T*>(p[0] + i * s[0]) = f(*reinterpret_cast<const T*>(p[1] + i * s[1]),
                                                   *reinterpret_cast<const T*>(p[2] + i * s[2]));
    }
  });
}

}  // namespace

void binary_kernel(BinaryOp op, const Tensor& out, const Tensor& a, const Tensor& b, double alpha) {
  COIL_CHECK(!(op == BinaryOp::div && !is_floating(out.dtype())),
             "div: integer division is not supported; convert to float first");
  ElemLoop L = make_loop({out, a, b});
  if (op >= BinaryOp::eq) {  // comparisons: inputs share a dtype, output bool
    dispatch_dtype(a.dtype(), "compare", [&]<class T>() {
      run_loop(L, [&](char** p, const int64_t* s, int64_t n) {
        for (int64_t i = 0; i < n; ++i)
          *reinterpret_cast<uint8_t*>(p[0] + i * s[0]) =
              compare_scalar<T>(op, *reinterpret_cast<const T*>(p[1] + i * s[1]),
                                *reinterpret_cast<const T*>(p[2] + i * s[2]));
      });
    });
    return;
  }
  switch (out.dtype()) {
    case kF32: {
      const float al = static_cast<float>(alpha);
      switch (op) {  // the hot ones get their own instantiation so they vectorise
        case BinaryOp::add:
          return binary_rows<float>(L, [al](float x, float y) { return x + al * y; });
        case BinaryOp::sub:
          return binary_rows<float>(L, [al](float x, float y) { return x - al * y; });
        case BinaryOp::mul:
          return binary_rows<float>(L, [](float x, float y) { return x * y; });
        case BinaryOp::div:
          return binary_rows<float>(L, [](float x, float y) { return x / y; });
        default:
          return binary_rows<float>(
              L, [op, al](float x, float y) { return binary_scalar(op, x, y, al); });
      }
    }
    case kF64:
      return binary_rows<double>(
          L, [op, alpha](double x, double y) { return binary_scalar(op, x, y, alpha); });
    case kI32: {
      int32_t al = static_cast<int32_t>(alpha);
      return binary_rows<int32_t>(
          L, [op, al](int32_t x, int32_t y) { return binary_scalar(op, x, y, al); });
    }
    case kI64: {
      int64_t al = static_cast<int64_t>(alpha);
      return binary_rows<int64_t>(
          L, [op, al](int64_t x, int64_t y) { return binary_scalar(op, x, y, al); });
    }
    case kBool: {
      ElemLoop& LL = L;
      run_loop(LL, [&](char** p, const int64_t* s, int64_t n) {
        for (int64_t i = 0; i < n; ++i) {
          bool x = *reinterpret_cast<const uint8_t*>(p[1] + i * s[1]);
          bool y = *reinterpret_cast<const uint8_t*>(p[2] + i * s[2]);
          bool r = op == BinaryOp::mul || op == BinaryOp::minimum ? (x && y) : (x || y);
          *reinterpret_cast<uint8_t*>(p[0] + i * s[0]) = r;
        }
      });
      return;
    }
    default:
      fail("binary kernel: unsupported dtype ", out.dtype());
  }
}

void where_kernel(const Tensor& out, const Tensor& cond, const Tensor& a, const Tensor& b) {
  ElemLoop L = make_loop({out, cond, a, b});
  dispatch_dtype(out.dtype(), "where", [&]<class T>() {
    run_loop(L, [&](char** p, const int64_t* s, int64_t n) {
      for (int64_t i = 0; i < n; ++i) {
        bool c = *reinterpret_cast<const uint8_t*>(p[1] + i * s[1]);
        *reinterpret_cast<T*>(p[0] + i * s[0]) = c ? *reinterpret_cast<const T*>(p[2] + i * s[2])
                                                   : *reinterpret_cast<const T*>(p[3] + i * s[3]);
      }
    });
  });
}

namespace {
template <class D, class S>
D convert(S v) {
  if constexpr (std::is_same_v<D, bool>) {
    return static_cast<float>(v) != 0.0f || static_cast<double>(v) != 0.0;
  } else if constexpr (std::is_same_v<S, BFloat16> || std::is_same_v<S, Half>) {
    return static_cast<D>(static_cast<float>(v));
  } else if constexpr (std::is_same_v<D, BFloat16> || std::is_same_v<D, Half>) {
    return D(static_cast<float>(v));
  } else {
    return static_cast<D>(v);
  }
}
}  // namespace

void copy_kernel(const Tensor& dst, const Tensor& src) {
  ElemLoop L = make_loop({dst, src});
  dispatch_dtype(dst.dtype(), "copy", [&]<class D>() {
    dispatch_dtype(src.dtype(), "copy", [&]<class S>() {
      run_loop(L, [&](char** p, const int64_t* s, int64_t n) {
        if (s[0] == sizeof(D) && s[1] == sizeof(S)) {
          D* __restrict o = reinterpret_cast<D*>(p[0]);
          const S* __restrict a = reinterpret_cast<const S*>(p[1]);
          for (int64_t i = 0; i < n; ++i) o[i] = convert<D, S>(a[i]);
        } else {
          for (int64_t i = 0; i < n; ++i)
            *reinterpret_cast<D*>(p[0] + i * s[0]) =
                convert<D, S>(*reinterpret_cast<const S*>(p[1] + i * s[1]));
        }
      });
    });
  });
}

void fill_kernel(const Tensor& out, double value) {
  ElemLoop L = make_loop({out});
  dispatch_dtype(out.dtype(), "fill", [&]<class T>() {
    const T v = convert<T, double>(value);
    run_loop(L, [&](char** p, const int64_t* s, int64_t n) {
      if (s[0] == sizeof(T)) {
        T* o = reinterpret_cast<T*>(p[0]);
        for (int64_t i = 0; i < n; ++i) o[i] = v;
      } else {
        for (int64_t i = 0; i < n; ++i) *reinterpret_cast<T*>(p[0] + i * s[0]) = v;
      }
    });
  });
}

}  // namespace coil::cpu
