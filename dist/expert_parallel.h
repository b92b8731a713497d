// Expert parallelism (DESIGN.md section 6, MATH.md section 6): the experts of an MoE layer
// spread over a process group (the "ep" mesh dim), E / P consecutive experts per rank. Each rank
// routes its own tokens; the rows for an expert travel to the rank that holds it and back:
//
//   Tensor y = dist::ep_run_experts(x_sorted, counts, ep, local_experts);
//
// Steps (all differentiable, backward runs the same path reversed): all_to_all the per-expert
// counts, all_to_all the rows, sort the received rows by local expert, run the local experts
// (one grouped GEMM), undo the sort, all_to_all the results back.
#pragma once
#include <functional>
#include <vector>

#include "process_group.h"

namespace coil::dist {

struct ExpertParallel {
  GroupPtr group;  // the ranks that share the experts; rank r holds experts [r E/P, (r+1) E/P)
};

// Runs the local experts on rows x (n, D) sorted by expert, offsets (E/P + 1) int64.
using LocalExperts = std::function<Tensor(const Tensor& x, const Tensor& offsets)>;

// x (n, D): this rank's rows sorted by global expert, counts[e] of them for expert e (counts has
// E entries, E a multiple of the group size). Returns the experts' outputs in x's order.
Tensor ep_run_experts(const Tensor& x, const std::vector<int64_t>& counts, const ExpertParallel& ep,
                      const LocalExperts& local_experts);

}  // namespace coil::dist
