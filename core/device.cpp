#include "device.h"

#include <cstdlib>

#include "allocator.h"
#include "error.h"

namespace coil {

Device::Device(const std::string& spec) {
  if (spec == "cpu") {
    type = kCPU;
    index = 0;
    return;
  }
  if (spec.rfind("cuda", 0) == 0) {
    type = kCUDA;
    index = 0;
    if (spec.size() > 4) {
      COIL_CHECK(spec[4] == ':' && spec.size() > 5, "Device: cannot parse '", spec, "'");
      char* end = nullptr;
      long v = std::strtol(spec.c_str() + 5, &end, 10);
      COIL_CHECK(*end == '\0' && v >= 0, "Device: cannot parse '", spec, "'");
      index = static_cast<int>(v);
    }
    return;
  }
  fail("Device: unknown device '", spec, "' (expected cpu, cuda or cuda:N)");
}

std::string Device::str() const {
  return type == kCPU ? std::string("cpu") : "cuda:" + std::to_string(index);
}

bool cuda_available() {
  // The CUDA backend registers its allocator at start-up; none registered means none built.
  try {
    return get_allocator(kCUDA) != nullptr;
  } catch (const Error&) {
    return false;
  }
}

namespace {
CudaHooks g_cuda_hooks;
}

void set_cuda_hooks(const CudaHooks& h) { g_cuda_hooks = h; }
const CudaHooks& cuda_hooks() { return g_cuda_hooks; }

int cuda_device_count() { return g_cuda_hooks.device_count ? g_cuda_hooks.device_count() : 0; }

void synchronize(Device d) {
  if (d.is_cuda() && g_cuda_hooks.synchronize) g_cuda_hooks.synchronize(d);
}

}  // namespace coil
