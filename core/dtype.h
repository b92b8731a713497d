// Data types, 16-bit float storage types, and PyTorch's promotion rules.
#pragma once
#include <cstdint>
#include <cstring>
#include <ostream>

namespace coil {

enum class DType : uint8_t { f32, f64, bf16, f16, i32, i64, b8 };
inline constexpr DType kF32 = DType::f32, kF64 = DType::f64, kBF16 = DType::bf16, kF16 = DType::f16,
                       kI32 = DType::i32, kI64 = DType::i64, kBool = DType::b8;
inline constexpr int kNumDTypes = 7;

size_t dtype_size(DType t);
const char* dtype_name(DType t);
inline std::ostream& operator<<(std::ostream& os, DType t) { return os << dtype_name(t); }
inline bool is_floating(DType t) { return t == kF32 || t == kF64 || t == kBF16 || t == kF16; }
inline bool is_integral(DType t) { return t == kI32 || t == kI64; }  // bool excluded
inline bool is_half(DType t) { return t == kBF16 || t == kF16; }
// The type kernels compute in: 16-bit floats compute (and accumulate) in f32.
inline DType compute_dtype(DType t) { return is_half(t) ? kF32 : t; }
// promote_types as torch.promote_types: bool < ints < floats; bf16+f16 -> f32.
DType promote_types(DType a, DType b);

// bfloat16: upper half of an IEEE f32, rounded to nearest even.
struct BFloat16 {
  uint16_t bits = 0;
  BFloat16() = default;
  BFloat16(float f) {  // NOLINT: implicit like a number
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
      bits = 0x7fc0;  // quiet NaN
    } else {
      bits = static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    }
  }
  operator float() const {  // NOLINT
    uint32_t u = static_cast<uint32_t>(bits) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
};

// IEEE half precision, round to nearest even, with subnormals.
struct Half {
  uint16_t bits = 0;
  Half() = default;
  Half(float f);           // NOLINT
  operator float() const;  // NOLINT
};

template <class T>
struct dtype_of;
template <>
struct dtype_of<float> {
  static constexpr DType value = kF32;
};
template <>
struct dtype_of<double> {
  static constexpr DType value = kF64;
};
template <>
struct dtype_of<BFloat16> {
  static constexpr DType value = kBF16;
};
template <>
struct dtype_of<Half> {
  static constexpr DType value = kF16;
};
template <>
struct dtype_of<int32_t> {
  static constexpr DType value = kI32;
};
template <>
struct dtype_of<int64_t> {
  static constexpr DType value = kI64;
};
template <>
struct dtype_of<bool> {
  static constexpr DType value = kBool;
};

}  // namespace coil
