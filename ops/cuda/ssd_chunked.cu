// The launchers of ssd_scan's chunked kernels (ssd_chunked.cuh has the kernels and the math):
// launch.h's ScanArgs of ssd_scan into the kernels' own Args.
#include <cstdlib>
#include <string>

#include "launch.h"
#include "ssd_chunked.cuh"

namespace coil::cuda {
namespace {

ssd::Args chunked_args(const ScanArgs& a) {
  ssd::Args r;
  r.batch = a.batch;
  r.L = a.L;
  r.P = a.pdiv;
  r.H = a.dim / a.pdiv;
  r.N = a.N;
  r.G = a.G;
  r.softplus = a.softplus;
  r.x = static_cast<const float*>(a.u);
  r.dt = static_cast<const float*>(a.delta);
  r.A = static_cast<const float*>(a.A);
  r.B = static_cast<const float*>(a.B);
  r.C = static_cast<const float*>(a.C);
  r.D = static_cast<const float*>(a.D);
  r.z = static_cast<const float*>(a.z);
  r.dt_bias = static_cast<const float*>(a.bias);
  r.init = static_cast<const float*>(a.init);
  return r;
}

// The tensor cores unless COIL_SSD_SIMT=1 (float32 FMAs: the same results within rounding).
// Read at every call (a getenv beside several kernel launches), so a test can take both paths.
bool use_tensor_cores() {
  const char* e = std::getenv("COIL_SSD_SIMT");
  return !(e && std::string(e) == "1");
}

}  // namespace

int64_t ssd_chunked_step_floats(const ScanArgs& a) { return ssd::step_floats(chunked_args(a)); }
int64_t ssd_chunked_state_floats(const ScanArgs& a) { return ssd::state_floats(chunked_args(a)); }

void launch_ssd_chunked_forward(const ScanArgs& a, float* dd, float* lc, float* states, void* y,
                                void* y_pre, void* final_state, cudaStream_t s) {
  const ssd::Args c = chunked_args(a);
  const bool tc = use_tensor_cores();
  ssd::states_forward(tc, c, dd, lc, states, static_cast<float*>(final_state), s);
  if (y)
    ssd::output_forward(tc, c, dd, lc, states, static_cast<float*>(y), static_cast<float*>(y_pre),
                        s);
}

void launch_ssd_chunked_backward(const ScanArgs& a, const float* states, const void* y_pre,
                                 const ScanGrads& g, float* dd, float* lc, float* gbuf, float* gy,
                                 cudaStream_t s) {
  const ssd::Args c = chunked_args(a);
  ssd::steps_forward(c, dd, lc, s);
  ssd::Grads r;
  r.dy = static_cast<const float*>(g.dy);
  r.dfinal = static_cast<const float*>(g.dfinal);
  r.y_pre = static_cast<const float*>(y_pre);
  r.dx = static_cast<float*>(g.du);
  r.ddt = static_cast<float*>(g.ddelta);
  r.dz = static_cast<float*>(g.dz);
  r.dinit = static_cast<float*>(g.dinit);
  r.dB = static_cast<float*>(g.dB);
  r.dC = static_cast<float*>(g.dC);
  r.dA = static_cast<float*>(g.dA);
  r.dD = static_cast<float*>(g.dD);
  r.ddt_bias = static_cast<float*>(g.dbias);
  ssd::backward(use_tensor_cores(), c, dd, lc, states, r, gbuf, gy, s);
}

}  // namespace coil::cuda
