#include <cstring>
#include <limits>

#include "test_util.h"

using namespace coil;

TEST_SUITE("core.dtype") {
  TEST_CASE("bf16 and f16 round to nearest even, with specials") {
    CHECK(static_cast<float>(BFloat16(1.0f)) == 1.0f);
    CHECK(static_cast<float>(BFloat16(1.00390625f)) == 1.0f);       // halfway, even stays
    CHECK(static_cast<float>(BFloat16(1.01171875f)) == 1.015625f);  // halfway, rounds up to even
    CHECK(std::isnan(static_cast<float>(BFloat16(NAN))));
    CHECK(std::isinf(static_cast<float>(BFloat16(INFINITY))));
    CHECK(static_cast<float>(Half(1.0f)) == 1.0f);
    CHECK(static_cast<float>(Half(65504.0f)) == 65504.0f);
    CHECK(std::isinf(static_cast<float>(Half(65520.0f))));
    CHECK(static_cast<float>(Half(65519.0f)) == 65504.0f);
    CHECK(static_cast<float>(Half(5.9604645e-08f)) == 5.9604645e-08f);  // smallest subnormal
    CHECK(static_cast<float>(Half(2.9e-08f)) == 0.0f);
    CHECK(static_cast<float>(Half(-2.5f)) == -2.5f);
    CHECK(static_cast<float>(Half(1.0f + 1.0f / 2048)) == 1.0f);  // halfway, even
    CHECK(std::isnan(static_cast<float>(Half(NAN))));
    // every f16 bit pattern survives f16 -> f32 -> f16
    for (uint32_t b = 0; b < 65536; ++b) {
      Half h;
      h.bits = static_cast<uint16_t>(b);
      float f = h;
      if (std::isnan(f)) continue;
      CHECK_MESSAGE(Half(f).bits == h.bits, "bits " << b);
    }
  }

  TEST_CASE("conversions between every pair of dtypes") {
    std::vector<double> v = {-3, -1, 0, 1, 2, 100};
    for (DType a : {kF32, kF64, kBF16, kF16, kI32, kI64}) {
      Tensor t = tensor(v, {6}, Options(a));
      for (DType b : {kF32, kF64, kBF16, kF16, kI32, kI64}) {
        CAPTURE(a);
        CAPTURE(b);
        ct::check_close(t.to(b), v, 0, 0);
      }
      ct::check_close(t.to(kBool), {1, 1, 0, 1, 1, 1}, 0, 0);
    }
    ct::check_close(tensor(std::vector<double>{2.7, -2.7}).to(kI64), {2, -2}, 0, 0);  // truncation
    CHECK(dtype_size(kBF16) == 2);
    CHECK(std::string(dtype_name(kF16)) == "float16");
    CHECK(promote_types(kBF16, kF16) == kF32);
    CHECK(promote_types(kI32, kBF16) == kBF16);
    CHECK(promote_types(kBool, kI32) == kI32);
  }
}
