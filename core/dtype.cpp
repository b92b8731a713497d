#include "dtype.h"

#include <cmath>

namespace coil {

size_t dtype_size(DType t) {
  switch (t) {
    case kF32:
    case kI32:
      return 4;
    case kF64:
    case kI64:
      return 8;
    case kBF16:
    case kF16:
      return 2;
    case kBool:
      return 1;
  }
  return 0;
}

const char* dtype_name(DType t) {
  switch (t) {
    case kF32:
      return "float32";
    case kF64:
      return "float64";
    case kBF16:
      return "bfloat16";
    case kF16:
      return "float16";
    case kI32:
      return "int32";
    case kI64:
      return "int64";
    case kBool:
      return "bool";
  }
  return "?";
}

DType promote_types(DType a, DType b) {
  if (a == b) return a;
  if (a == kBool) return b;
  if (b == kBool) return a;
  bool fa = is_floating(a), fb = is_floating(b);
  if (fa && !fb) return a;
  if (fb && !fa) return b;
  if (!fa) return (a == kI64 || b == kI64) ? kI64 : kI32;
  if (a == kF64 || b == kF64) return kF64;
  return kF32;  // any mix of f32, bf16, f16
}

Half::Half(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) {  // inf or nan
    bits = static_cast<uint16_t>(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u : 0u));
    return;
  }
  if (ax >= 0x477ff000u) {  // rounds to >= 65520: overflow to inf
    bits = static_cast<uint16_t>(sign | 0x7c00u);
    return;
  }
  if (ax < 0x38800000u) {  // subnormal half (or zero): scale so the rounding is done by float add
    float af;
    std::memcpy(&af, &ax, 4);
    float r = af + 0.5f;  // 0.5 = 2^-1: ulp of r is 2^-24, the half subnormal step
    uint32_t ru;
    std::memcpy(&ru, &r, 4);
    bits = static_cast<uint16_t>(sign | (ru - 0x3f000000u));
    return;
  }
  uint32_t mant_odd = (ax >> 13) & 1u;
  ax += 0xc8000fffu + mant_odd;  // rebias exponent (-112 << 23) and round to nearest even
  bits = static_cast<uint16_t>(sign | (ax >> 13));
}

Half::operator float() const {
  uint32_t sign = static_cast<uint32_t>(bits & 0x8000u) << 16;
  uint32_t exp = (bits >> 10) & 0x1fu;
  uint32_t mant = bits & 0x3ffu;
  float out;
  if (exp == 0) {
    out = std::ldexp(static_cast<float>(mant), -24);
    if (sign) out = -out;
    return out;
  }
  uint32_t u;
  if (exp == 31) {
    u = sign | 0x7f800000u | (mant << 13);
  } else {
    u = sign | ((exp + 112u) << 23) | (mant << 13);
  }
  std::memcpy(&out, &u, 4);
  return out;
}

}  // namespace coil
