// The launchers of the fast selective_scan kernels (selective_scan.cuh has the kernels).
#include "launch.h"
#include "selective_scan.cuh"

namespace coil::cuda {

void launch_selective_scan_fast_forward(const ScanArgs& a, void* y, void* final_state,
                                        void* checkpoints, cudaStream_t s) {
  fast_forward(a, static_cast<float*>(y), static_cast<float*>(final_state),
               static_cast<float*>(checkpoints), s);
}

void launch_selective_scan_fast_backward(const ScanArgs& a, const void* checkpoints,
                                         const ScanGrads& g, cudaStream_t s) {
  fast_backward(a, static_cast<const float*>(checkpoints), g, s);
}

}  // namespace coil::cuda
