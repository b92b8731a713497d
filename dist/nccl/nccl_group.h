// A process group whose collectives run through NCCL on this rank's GPU, for CUDA tensors:
//
//   coil::dist::init();                                   // mpirun: the MPI world
//   const int dev = coil::dist::rank() % coil::cuda_device_count();
//   auto nccl = coil::dist::new_nccl_group(coil::dist::world(), dev);
//   nccl->all_reduce(grad_on_gpu)->wait();
//
// Everything ProcessGroup offers, on tensors of cuda:dev directly (tensors elsewhere are staged
// through that GPU). Calls are queued on the GPU's current stream, in call order, and return a
// completed Work: later work on that stream sees the result, and reading it on the host (item(),
// to(kCPU)) waits for it. The call check (COIL_DIST_CHECK) and barrier go through the bootstrap
// group; timeouts do not apply (NCCL has its own watchdog). Library coil_nccl.
#pragma once
#include "../process_group.h"

namespace coil::dist {

// Collective over bootstrap (an MPI group; the new group has its members and ranks); `device` is
// this rank's GPU. Sub-groups from split() pair an NCCL split with the bootstrap's.
GroupPtr new_nccl_group(const GroupPtr& bootstrap, int device);

}  // namespace coil::dist
