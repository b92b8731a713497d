// Context parallelism (DESIGN.md section 6, MATH.md section 5): the sequence dim of a Mamba
// layer's activations split over a process group (the "cp" mesh dim), torch.chunk's way: rank r
// holds tokens [start_r, start_r + L_r), pieces uneven or empty. Every rank passes its piece,
// (batch, L_r, ...); only two things cross ranks, both in O(state) bytes whatever the length:
//
//   Tensor win = dist::cp_conv_halo(x, K - 1, cp);       // the K-1 inputs before my first token
//   auto [y, h] = dist::cp_ssd_scan(x, dt, A, B, C, Q, opts, cp);  // the whole sequence's scan
//
// A rank's scan is affine in its incoming state, final_r = Lambda_r * init_r + F_r. kAllGather
// all-gathers (Lambda_r, F_r) and scans them over the ranks (associative_scan, the linear
// recurrence's combine) so each rank has its init_r at once; kSerial passes the state down a
// send/recv chain (less data, but the ranks wait for each other). Both are built from
// differentiable ops and collectives: backward runs the mirrored exchange by itself, and the
// gradients equal those of the single-process scan over the whole sequence.
#pragma once
#include <utility>

#include "../ops/scan.h"
#include "process_group.h"

namespace coil::dist {

enum class StatePassing { kAllGather, kSerial };

struct ContextParallel {
  GroupPtr group;  // the ranks that share the sequence, in sequence order
  StatePassing passing = StatePassing::kAllGather;
};

// The `width` inputs that precede this rank's first token, (batch, width, channels): from the
// previous rank, or several when pieces are short; zeros before the sequence. It is the causal
// conv's initial window; in backward its gradient goes back to the ranks that hold the tokens.
Tensor cp_conv_halo(const Tensor& x, int64_t width, const ContextParallel& cp);

// selective_scan and ssd_scan over the whole sequence, this rank's piece in and out (ops/scan.h
// for the arguments). o.initial_state is the sequence's initial state (the same on every rank,
// or undefined); the final state, when asked for, is the sequence's, on every rank.
std::pair<Tensor, Tensor> cp_selective_scan(const Tensor& u, const Tensor& delta, const Tensor& A,
                                            const Tensor& B, const Tensor& C,
                                            const SelectiveScanOptions& o,
                                            const ContextParallel& cp);
std::pair<Tensor, Tensor> cp_ssd_scan(const Tensor& x, const Tensor& dt, const Tensor& A,
                                      const Tensor& B, const Tensor& C, int64_t chunk_size,
                                      const SsdScanOptions& o, const ContextParallel& cp);

// The sequence lengths of every rank's piece (one small all_gather).
std::vector<int64_t> cp_lengths(int64_t local_length, const ContextParallel& cp);

}  // namespace coil::dist
