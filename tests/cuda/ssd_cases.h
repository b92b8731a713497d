// The ssd_scan shapes both the cuda.emu suite (the chunked kernels' source on the CPU) and the
// cuda suite (the same kernels on the GPU) run: chunk edges, tiles of headdim and N, optional
// inputs.
#pragma once
#include <vector>

#include "../test_util.h"

namespace ct {

struct SsdCase {
  int64_t Bt, L, H, P, N, G;
  bool d, z, bias, h0, dfin, softplus;
};

inline std::vector<SsdCase> ssd_chunked_cases(bool large) {
  std::vector<SsdCase> c = {
      {2, 100, 4, 8, 16, 2, true, true, true, true, true, true},  // two chunks, the last short
      {1, 1, 2, 8, 16, 1, true, true, true, true, true, true},    // one step
      {1, 64, 2, 16, 32, 1, false, false, false, false, false, false},  // one whole chunk
      {1, 130, 2, 72, 80, 2, true, false, true, true, false, true},     // two P and two N tiles
      {2, 129, 3, 5, 7, 1, false, true, false, false, true, false},     // odd sizes, 3 chunks
  };
  if (large) c.push_back({1, 300, 4, 64, 128, 1, true, true, true, true, true, true});
  return c;
}

// x, dt, A, B, C, D, z, dt_bias, initial_state in t (undefined where the case has none); dt is
// positive without softplus, so that the decay stays below 1.
inline coil::TensorList ssd_case_inputs(const SsdCase& k, coil::DType t) {
  using coil::Tensor;
  return {rnd({k.Bt, k.L, k.H, k.P}, t),
          k.softplus ? rnd({k.Bt, k.L, k.H}, t, -3, 1) : rnd({k.Bt, k.L, k.H}, t, 0.01, 0.5),
          -rnd({k.H}, t, 0.2, 2),
          rnd({k.Bt, k.L, k.G, k.N}, t),
          rnd({k.Bt, k.L, k.G, k.N}, t),
          k.d ? rnd({k.H}, t) : Tensor(),
          k.z ? rnd({k.Bt, k.L, k.H, k.P}, t) : Tensor(),
          k.bias ? rnd({k.H}, t, -1, 1) : Tensor(),
          k.h0 ? rnd({k.Bt, k.H, k.P, k.N}, t) : Tensor()};
}

}  // namespace ct
