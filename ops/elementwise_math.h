// The scalar math of the elementwise ops, written once for the CPU kernels (ops/cpu/) and the
// CUDA device code (ops/cuda/): under nvcc COIL_HD makes each function __host__ __device__.
// Ops a dtype does not define (integer exp, integer division) are refused by the kernels'
// callers before any element is computed.
#pragma once
#include <cmath>
#include <type_traits>

#include "kernel_ops.h"

#ifdef __CUDACC__
#define COIL_HD __host__ __device__
#else
#define COIL_HD
#endif

namespace coil::math {

template <class T>
COIL_HD T gelu(T x, bool tanh_approx) {
  using std::erf, std::tanh;
  if (tanh_approx) {
    const T k = T(0.7978845608028654);  // sqrt(2/pi)
    return T(0.5) * x * (T(1) + tanh(k * (x + T(0.044715) * x * x * x)));
  }
  return T(0.5) * x * (T(1) + erf(x * T(0.7071067811865476)));
}

// p0, p1: pow's exponent, clamp's bounds (NaN: none), softplus's beta and threshold, gelu's
// approximate flag.
template <class T>
COIL_HD T unary_float(UnaryOp op, T x, double p0, double p1) {
  using std::exp, std::log, std::log1p, std::sqrt, std::abs, std::tanh, std::pow, std::erf,
      std::isnan;
  switch (op) {
    case UnaryOp::neg:
      return -x;
    case UnaryOp::exp:
      return exp(x);
    case UnaryOp::log:
      return log(x);
    case UnaryOp::log1p:
      return log1p(x);
    case UnaryOp::sqrt:
      return sqrt(x);
    case UnaryOp::rsqrt:
      return T(1) / sqrt(x);
    case UnaryOp::abs:
      return abs(x);
    case UnaryOp::tanh:
      return tanh(x);
    case UnaryOp::sigmoid:
      return T(1) / (T(1) + exp(-x));
    case UnaryOp::silu:
      return x / (T(1) + exp(-x));
    case UnaryOp::softplus: {
      const T bx = x * T(p0);
      return bx > T(p1) ? x : log1p(exp(bx)) / T(p0);
    }
    case UnaryOp::gelu:
      return gelu(x, p0 != 0);
    case UnaryOp::relu:
      return x > T(0) ? x : (x != x ? x : T(0));
    case UnaryOp::pow:
      return pow(x, T(p0));
    case UnaryOp::clamp: {
      if (x != x) return x;
      T r = x;
      if (!isnan(p0) && r < T(p0)) r = T(p0);
      if (!isnan(p1) && r > T(p1)) r = T(p1);
      return r;
    }
    case UnaryOp::square:
      return x * x;
    case UnaryOp::sign:
      return x > T(0) ? T(1) : (x < T(0) ? T(-1) : x);  // keeps NaN and 0
    case UnaryOp::reciprocal:
      return T(1) / x;
    case UnaryOp::erf:
      return erf(x);
    default:
      return x;
  }
}

// The unary ops integers take.
COIL_HD constexpr bool integer_unary(UnaryOp op) {
  return op == UnaryOp::neg || op == UnaryOp::abs || op == UnaryOp::relu || op == UnaryOp::square ||
         op == UnaryOp::sign || op == UnaryOp::clamp;
}

template <class T>
COIL_HD T unary_int(UnaryOp op, T x, double p0, double p1) {
  switch (op) {
    case UnaryOp::neg:
      return -x;
    case UnaryOp::abs:
      return x < 0 ? -x : x;
    case UnaryOp::relu:
      return x > 0 ? x : T(0);
    case UnaryOp::square:
      return x * x;
    case UnaryOp::sign:
      return T((x > 0) - (x < 0));
    case UnaryOp::clamp: {
      T r = x;
      if (p0 == p0 && r < T(p0)) r = static_cast<T>(p0);
      if (p1 == p1 && r > T(p1)) r = static_cast<T>(p1);
      return r;
    }
    default:
      return x;
  }
}

// a (op) b; alpha scales b for add and sub. Integer division is refused before.
template <class T>
COIL_HD T binary_value(BinaryOp op, T a, T b, T alpha) {
  switch (op) {
    case BinaryOp::add:
      return a + alpha * b;
    case BinaryOp::sub:
      return a - alpha * b;
    case BinaryOp::mul:
      return a * b;
    case BinaryOp::div:
      if constexpr (std::is_floating_point_v<T>)
        return a / b;
      else
        return T(0);
    case BinaryOp::pow:
      if constexpr (std::is_floating_point_v<T>) {
        using std::pow;
        return pow(a, b);
      } else {
        T r = 1;
        for (T e = 0; e < b; ++e) r *= a;
        return r;
      }
    case BinaryOp::maximum:
      if constexpr (std::is_floating_point_v<T>)
        if (a != a || b != b) return a + b;  // NaN
      return a > b ? a : b;
    case BinaryOp::minimum:
      if constexpr (std::is_floating_point_v<T>)
        if (a != a || b != b) return a + b;
      return a < b ? a : b;
    default:
      return T(0);
  }
}

template <class T>
COIL_HD bool compare_value(BinaryOp op, T a, T b) {
  switch (op) {
    case BinaryOp::eq:
      return a == b;
    case BinaryOp::ne:
      return a != b;
    case BinaryOp::lt:
      return a < b;
    case BinaryOp::le:
      return a <= b;
    case BinaryOp::gt:
      return a > b;
    case BinaryOp::ge:
      return a >= b;
    default:
      return false;
  }
}

}  // namespace coil::math
