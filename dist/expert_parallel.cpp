#include "expert_parallel.h"

#include "../autograd/grad_mode.h"
#include "../ops/ops.h"
#include "functional.h"

namespace coil::dist {

Tensor ep_run_experts(const Tensor& x, const std::vector<int64_t>& counts, const ExpertParallel& ep,
                      const LocalExperts& local_experts) {
  COIL_CHECK(ep.group != nullptr, "ep_run_experts: ExpertParallel has no process group");
  const int64_t P = ep.group->size(), E = static_cast<int64_t>(counts.size());
  COIL_CHECK(E % P == 0, "ep_run_experts: ", E, " experts do not split over ", P, " ranks");
  COIL_CHECK(x.dim() == 2, "ep_run_experts: x must be (rows, hidden), got ", x.shape_str());
  int64_t n = 0;
  for (int64_t c : counts) n += c;
  COIL_CHECK(n == x.size(0), "ep_run_experts: counts sum to ", n, ", x has ", x.size(0), " rows");
  const int64_t El = E / P;
  // recv[s * El + j]: rows rank s sends for this rank's local expert j
  std::vector<int64_t> recv(static_cast<size_t>(E));
  {
    NoGradGuard ng;
    Tensor out = zeros({E}, Options(kI64));
    ep.group->all_to_all(out, tensor(counts, {E}), {}, {}, blocking())->wait();
    recv = to_vector<int64_t>(out);
  }
  std::vector<int64_t> send_rows(P, 0), recv_rows(P, 0);
  for (int64_t e = 0; e < E; ++e) send_rows[e / El] += counts[e];
  for (int64_t s = 0; s < P; ++s)
    for (int64_t j = 0; j < El; ++j) recv_rows[s] += recv[s * El + j];
  Tensor got = functional::all_to_all(x, send_rows, recv_rows, ep.group);  // by source, expert
  // the received rows in local-expert order (stable in source order), and the way back
  std::vector<int64_t> start(static_cast<size_t>(E)), perm, offsets(El + 1, 0);
  for (int64_t s = 0, at = 0; s < P; ++s)
    for (int64_t j = 0; j < El; ++j) {
      start[s * El + j] = at;
      at += recv[s * El + j];
    }
  perm.reserve(static_cast<size_t>(got.size(0)));
  for (int64_t j = 0; j < El; ++j) {
    for (int64_t s = 0; s < P; ++s)
      for (int64_t r = 0; r < recv[s * El + j]; ++r) perm.push_back(start[s * El + j] + r);
    offsets[j + 1] = static_cast<int64_t>(perm.size());
  }
  std::vector<int64_t> inverse(perm.size());
  for (size_t i = 0; i < perm.size(); ++i) inverse[perm[i]] = static_cast<int64_t>(i);
  const int64_t m = static_cast<int64_t>(perm.size());
  Tensor local = index_select(got, 0, tensor(perm, {m}));
  Tensor y = local_experts(local, tensor(offsets, {El + 1}));
  Tensor back = index_select(y, 0, tensor(inverse, {m}));
  return functional::all_to_all(back, recv_rows, send_rows, ep.group);
}

}  // namespace coil::dist
