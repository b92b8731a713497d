// A number passed to an op (x + 2.0, clamp(x, 0, 1)). Like a Python number it takes part in
// type promotion only as a "wrapped number": 2.0 does not turn an f32 tensor into f64.
#pragma once
#include <cstdint>
#include <ostream>

#include "dtype.h"

namespace coil {

class Scalar {
 public:
  Scalar() = default;
  Scalar(double v) : d_(v), i_(static_cast<int64_t>(v)), kind_(kF64) {}  // NOLINT
  Scalar(float v) : Scalar(static_cast<double>(v)) {}                    // NOLINT
  Scalar(int v) : d_(v), i_(v), kind_(kI64) {}                           // NOLINT
  Scalar(int64_t v) : d_(static_cast<double>(v)), i_(v), kind_(kI64) {}  // NOLINT
  Scalar(bool v) : d_(v), i_(v), kind_(kBool) {}                         // NOLINT
  double to_double() const { return d_; }
  int64_t to_int() const { return i_; }
  bool is_floating() const { return kind_ == kF64; }
  bool is_bool() const { return kind_ == kBool; }
  // The dtype a wrapped number is stored in (f64, i64 or bool); type promotion counts a
  // wrapped float as the default float dtype (f32).
  DType wrapped_dtype() const { return kind_; }

 private:
  double d_ = 0;
  int64_t i_ = 0;
  DType kind_ = kI64;
};

inline std::ostream& operator<<(std::ostream& os, const Scalar& s) {
  if (s.is_floating()) return os << s.to_double();
  return os << s.to_int();
}

}  // namespace coil
