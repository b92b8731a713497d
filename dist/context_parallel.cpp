// Context parallelism from ops and differentiable collectives (dist/functional.h). The one node
// with a backward of its own is the incoming state's share of a Mamba-2 piece
// (init_contribution), which recomputes a product in backward rather than keep it. One rule keeps
// the ranks' backward passes in step: every tensor a rank gets from a collective feeds its result
// through an op that touches all of it (a cat or a scan over all ranks, then a narrow), so every
// rank's graph holds the same collectives and runs their backward in the same order, rank 0
// included (its halo is zeros, its incoming state the initial one).
#include "context_parallel.h"

#include <cmath>
#include <limits>
#include <type_traits>

#include "../autograd/grad_mode.h"
#include "../autograd/node.h"
#include "../ops/ops.h"
#include "functional.h"

namespace coil::dist {
namespace {

int size_of(const ContextParallel& cp) { return cp.group ? cp.group->size() : 1; }

Tensor widen(const Tensor& t) {
  return t.defined() && t.dtype() != compute_dtype(t.dtype()) ? t.to(compute_dtype(t.dtype())) : t;
}

// Δ as the scan kernels use it: delta + bias, through softplus when asked.
Tensor step_sizes(const Tensor& delta, const Tensor& bias, bool softplus_on) {
  Tensor d = widen(delta);
  if (bias.defined()) d = d + widen(bias);
  return softplus_on ? softplus(d) : d;
}

// Every rank's (Lambda, F) in one all_gather: (P, lam's shape) and (P, F's shape).
std::pair<Tensor, Tensor> gather_summaries(const Tensor& lam, const Tensor& F, const GroupPtr& g) {
  Tensor flat = cat({lam.reshape({-1}), F.reshape({-1})}, 0).unsqueeze(0);
  Tensor all = functional::all_gather(flat, 0, g);
  Shape ls = lam.sizes(), fs = F.sizes();
  ls.insert(ls.begin(), all.size(0));
  fs.insert(fs.begin(), all.size(0));
  return {all.narrow(1, 0, lam.numel()).reshape(ls),
          all.narrow(1, lam.numel(), F.numel()).reshape(fs)};
}

// The states between the ranks: element j is the state entering rank j (element 0 the
// sequence's initial state, zeros if none), element P the sequence's final state. lams
// broadcasts against Fs (P, ...). An inclusive scan with the linear recurrence's combine
// (a1, b1) o (a2, b2) = (a1 a2, a2 b1 + b2) over [(1, init), (Lambda_0, F_0), ...].
Tensor states_between(const Tensor& lams, const Tensor& Fs, const Tensor& init) {
  Tensor first = init.defined() ? widen(init).unsqueeze(0) : zeros_like(Fs.narrow(0, 0, 1));
  TensorList xs = {cat({ones_like(first), lams.expand(Fs.sizes())}, 0), cat({first, Fs}, 0)};
  TensorList sc = associative_scan(
      [](const TensorList& a, const TensorList& b) {
        return TensorList{a[0] * b[0], b[0] * a[1] + b[1]};
      },
      xs, 0);
  return sc[1];
}

Tensor state_at(const Tensor& states, int64_t j) { return states.narrow(0, j, 1).squeeze(0); }

// kSerial: the state comes from the previous rank and goes to the next; `scan(init)` runs the
// local scan from `init` and returns (y, final). The send's token joins y so that backward
// receives the final state's gradient from the next rank before the local scan's backward.
std::pair<Tensor, Tensor> serial(
    const std::function<std::pair<Tensor, Tensor>(const Tensor&)>& scan, const Shape& state_shape,
    DType dtype, const Tensor& init0, bool want_final, const GroupPtr& g) {
  const int r = g->rank(), P = g->size();
  Tensor init = r == 0 ? widen(init0) : functional::recv(state_shape, dtype, r - 1, g);
  auto [y, fin] = scan(init);
  fin = fin.to(dtype);
  if (r + 1 < P) y = y + functional::send(fin, r + 1, g).to(y.dtype());
  Tensor final_state;
  if (want_final)
    final_state = functional::all_gather(fin.unsqueeze(0), 0, g).narrow(0, P - 1, 1).squeeze(0);
  return {y, final_state};
}

// Per (batch, head): one past the last token whose decay is at least eps^2 of the compute dtype
// (2^-46 in f32, 2^-104 in f64). Past it the incoming state's share of a token, and the gradient
// that reaches A and Δ through it (exp's backward multiplies by the decay), count as zero: they
// lie some seven (f32) or sixteen (f64) digits below the rounding of the outputs they join.
// Computing them would change nothing, and slowly: near underflow the products turn denormal,
// and arithmetic on denormals is a hundred times slower on x86.
std::vector<int64_t> active_lengths(const Tensor& decay) {
  const Tensor d = decay.contiguous();
  const int64_t b = d.size(0), L = d.size(1), H = d.size(2);
  std::vector<int64_t> T(static_cast<size_t>(b * H), 0);
  auto scan = [&](auto* v) {
    using V = std::remove_pointer_t<decltype(v)>;
    const V tiny = std::numeric_limits<V>::epsilon() * std::numeric_limits<V>::epsilon();
    for (int64_t i = 0; i < b; ++i)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t t = L - 1; t >= 0; --t)
          if (std::abs(v[(i * L + t) * H + h]) >= tiny) {
            T[i * H + h] = t + 1;
            break;
          }
  };
  if (d.dtype() == kF64)
    scan(d.data_ptr<double>());
  else
    scan(d.data_ptr<float>());
  return T;
}

// What the incoming state adds to a Mamba-2 piece's output: out_t[h, p] = decay_t[h] *
// sum_n init[h, p, n] C_t[g(h), n]. A node of its own so that backward recomputes the
// (L x heads x headdim) product instead of keeping it: the saved tensors are C (already kept by
// the scan), init and decay, O(state + L x heads). One matrix product per group of heads; when
// the decays of many heads underflow early (fast-forgetting heads, long pieces), one product
// per head over the tokens its state still reaches, the rest being exact zeros.
// C (b, L, G, N), init (b, H, P, N), decay (b, L, H) -> (b, L, H, P).
Tensor init_contribution(const Tensor& C, const Tensor& init, const Tensor& decay) {
  const int64_t b = C.size(0), L = C.size(1), G = C.size(2), N = C.size(3), H = init.size(1),
                P = init.size(2), Hg = H / G, HgP = Hg * P;
  const std::vector<int64_t> T = active_lengths(decay.detach());
  int64_t active = 0;
  for (int64_t t : T) active += t;
  const bool per_head = 4 * active < 3 * b * H * L;
  // per group: (b, G, L, N) @ (b, G, N, HgP) -> (b, G, L, HgP), as (b, L, H, P)
  auto product = [=](const Tensor& c, const Tensor& s) {
    Tensor I = s.reshape({b, G, HgP, N}).transpose(-1, -2);
    return matmul(c.permute({0, 2, 1, 3}), I).permute({0, 2, 1, 3}).reshape({b, L, H, P});
  };
  // per head: calls fn(i, h, t, C rows (t, N), init (P, N), decay (t, 1)) for active pairs
  auto each_head = [=](const Tensor& c, const Tensor& s, const Tensor& d, const auto& fn) {
    for (int64_t i = 0; i < b; ++i)
      for (int64_t h = 0; h < H; ++h)
        if (const int64_t t = T[i * H + h])
          fn(i, h, t, c.select(0, i).select(1, h / Hg).narrow(0, 0, t), s.select(0, i).select(0, h),
             d.select(0, i).select(1, h).narrow(0, 0, t).unsqueeze(1));
  };
  Tensor out, c = C.detach(), s = init.detach(), d = decay.detach().contiguous().clone();
  {  // the decays past each (batch, head)'s active length count as zero
    NoGradGuard ng;
    for (int64_t i = 0; i < b; ++i)
      for (int64_t h = 0; h < H; ++h)
        if (T[i * H + h] < L)
          d.select(0, i).select(1, h).narrow(0, T[i * H + h], L - T[i * H + h]).zero_();
  }
  {
    NoGradGuard ng;
    if (!per_head) {
      out = product(c, s) * d.unsqueeze(-1);
    } else {
      out = zeros({b, L, H, P}, Options(C.dtype()));
      each_head(c, s, d,
                [&](int64_t i, int64_t h, int64_t t, const Tensor& ct, const Tensor& sh,
                    const Tensor& dt) {
                  out.select(0, i).select(1, h).narrow(0, 0, t).copy_(
                      matmul(ct, sh.transpose(0, 1)) * dt);
                });
    }
  }
  if (needs_grad({&C, &init, &decay})) {
    record("dist.cp_init_contribution", {C, init, decay}, {out},
           [=](const TensorList& g) -> TensorList {
             if (!per_head) {
               Tensor dm = (g[0] * d.unsqueeze(-1)).reshape({b, L, G, HgP}).permute({0, 2, 1, 3});
               Tensor I = s.reshape({b, G, HgP, N}).transpose(-1, -2);             // (b, G, N, HgP)
               Tensor dc = matmul(dm, I.transpose(-1, -2)).permute({0, 2, 1, 3});  // (b, L, G, N)
               Tensor di = matmul(c.permute({0, 2, 3, 1}), dm);                    // (b, G, N, HgP)
               Tensor dinit = di.transpose(-1, -2).reshape({b, H, P, N});
               Tensor ddecay = (g[0] * product(c, s)).sum({3}) *
                               ne(d, zeros({}, Options(d.dtype()))).to(d.dtype());
               return {dc, dinit, ddecay};
             }
             Tensor dc = zeros_like(c), dinit = zeros_like(s), ddecay = zeros_like(d);
             each_head(c, s, d,
                       [&](int64_t i, int64_t h, int64_t t, const Tensor& ct, const Tensor& sh,
                           const Tensor& dt) {
                         Tensor gh = g[0].select(0, i).select(1, h).narrow(0, 0, t);  // (t, P)
                         Tensor dm = gh * dt;
                         dc.select(0, i).select(1, h / Hg).narrow(0, 0, t).add_(matmul(dm, sh));
                         dinit.select(0, i).select(0, h).copy_(matmul(dm.transpose(0, 1), ct));
                         ddecay.select(0, i).select(1, h).narrow(0, 0, t).copy_(
                             (gh * matmul(ct, sh.transpose(0, 1))).sum({1}));
                       });
             return {dc, dinit, ddecay};
           });
  }
  return out;
}

void check_group(const char* op, const ContextParallel& cp) {
  COIL_CHECK(cp.group != nullptr, op, ": ContextParallel has no process group");
}

}  // namespace

std::vector<int64_t> cp_lengths(int64_t local_length, const ContextParallel& cp) {
  if (size_of(cp) == 1) return {local_length};
  NoGradGuard ng;
  Tensor in = tensor(std::vector<int64_t>{local_length}, {1});
  Tensor out = zeros({cp.group->size()}, Options(kI64));
  cp.group->all_gather(out, in, {}, blocking())->wait();
  return to_vector<int64_t>(out);
}

Tensor cp_conv_halo(const Tensor& x, int64_t width, const ContextParallel& cp) {
  check_group("cp_conv_halo", cp);
  COIL_CHECK(x.dim() == 3, "cp_conv_halo: x must be (batch, L, channels), got ", x.shape_str());
  COIL_CHECK(width >= 0, "cp_conv_halo: width must be >= 0, got ", width);
  const int64_t B = x.size(0), L = x.size(1), C = x.size(2);
  const Options zo(x.dtype(), x.device());
  if (size_of(cp) == 1 || width == 0) return zeros({B, width, C}, zo);
  const std::vector<int64_t> lens = cp_lengths(L, cp);
  // every rank's last `width` inputs (fewer when its piece is short, padded in front)
  const int64_t k = std::min(width, L);
  Tensor tail = x.narrow(1, L - k, k);
  if (k < width) tail = cat({zeros({B, width - k, C}, zo), tail}, 1);
  Tensor tails = functional::all_gather(tail.unsqueeze(0), 0, cp.group);  // (P, B, width, C)
  // zeros, then each rank's true tail tokens in order: rank r's window is the `width` tokens
  // that end where its piece starts (a piece longer than `width` only matters by its tail)
  TensorList parts = {zeros({B, width, C}, zo)};
  int64_t end = width;
  for (int j = 0; j < cp.group->size(); ++j) {
    const int64_t kj = std::min(width, lens[j]);
    if (kj > 0) parts.push_back(tails.select(0, j).narrow(1, width - kj, kj));
    if (j < cp.group->rank()) end += kj;
  }
  return cat(parts, 1).narrow(1, end - width, width);
}

std::pair<Tensor, Tensor> cp_selective_scan(const Tensor& u, const Tensor& delta, const Tensor& A,
                                            const Tensor& B, const Tensor& C,
                                            const SelectiveScanOptions& o,
                                            const ContextParallel& cp) {
  check_group("cp_selective_scan", cp);
  if (size_of(cp) == 1) return selective_scan(u, delta, A, B, C, o);
  COIL_CHECK(u.dim() == 3 && A.dim() == 2, "cp_selective_scan: u must be (batch, L, dim) and A ",
             "(dim, N), got ", u.shape_str(), " and ", A.shape_str());
  const GroupPtr& g = cp.group;
  const Shape state = {u.size(0), u.size(2), A.size(1)};
  const DType st = compute_dtype(u.dtype());
  if (cp.passing == StatePassing::kSerial) {
    return serial(
        [&](const Tensor& init) {
          SelectiveScanOptions o1 = o;
          o1.initial_state = init;
          o1.return_final_state = true;
          return selective_scan(u, delta, A, B, C, o1);
        },
        state, st, o.initial_state, o.return_final_state, g);
  }
  // F: the final state from a zero start; Lambda = exp(A * sum of Δ) per (channel, state)
  SelectiveScanOptions o0;
  o0.delta_bias = o.delta_bias;
  o0.delta_softplus = o.delta_softplus;
  o0.return_final_state = true;
  Tensor F = selective_scan(u, delta, A, B, C, o0).second.to(st);
  Tensor d = step_sizes(delta, o.delta_bias, o.delta_softplus);
  Tensor lam = exp(sum(d, {1}).unsqueeze(-1) * widen(A));  // (batch, dim, N)
  auto [lams, Fs] = gather_summaries(lam, F, g);
  Tensor states = states_between(lams, Fs, o.initial_state);
  // y is not linear in a cheap form here (the state is (dim x N) per token): rescan from init
  SelectiveScanOptions o1 = o;
  o1.initial_state = state_at(states, g->rank());
  o1.return_final_state = false;
  Tensor y = selective_scan(u, delta, A, B, C, o1).first;
  return {y, o.return_final_state ? state_at(states, g->size()) : Tensor()};
}

std::pair<Tensor, Tensor> cp_ssd_scan(const Tensor& x, const Tensor& dt, const Tensor& A,
                                      const Tensor& B, const Tensor& C, int64_t chunk_size,
                                      const SsdScanOptions& o, const ContextParallel& cp) {
  check_group("cp_ssd_scan", cp);
  if (size_of(cp) == 1) return ssd_scan(x, dt, A, B, C, chunk_size, o);
  COIL_CHECK(x.dim() == 4 && C.dim() == 4, "cp_ssd_scan: x must be (batch, L, heads, headdim) ",
             "and C (batch, L, groups, N), got ", x.shape_str(), " and ", C.shape_str());
  const GroupPtr& g = cp.group;
  const int64_t b = x.size(0), H = x.size(2), P = x.size(3), N = C.size(3);
  const DType st = compute_dtype(x.dtype());
  if (cp.passing == StatePassing::kSerial) {
    return serial(
        [&](const Tensor& init) {
          SsdScanOptions o1 = o;
          o1.initial_state = init;
          o1.return_final_state = true;
          return ssd_scan(x, dt, A, B, C, chunk_size, o1);
        },
        {b, H, P, N}, st, o.initial_state, o.return_final_state, g);
  }
  // the scan from a zero start, ungated; Lambda = exp(A_h * sum of Δ) is one scalar per head
  SsdScanOptions o0 = o;
  o0.z = Tensor();
  o0.initial_state = Tensor();
  o0.return_final_state = true;
  auto [y0, F] = ssd_scan(x, dt, A, B, C, chunk_size, o0);
  Tensor d = step_sizes(dt, o.dt_bias, o.dt_softplus);  // (batch, L, heads)
  Tensor a = widen(A);
  Tensor lam = exp(sum(d, {1}) * a);  // (batch, heads)
  auto [lams, Fs] = gather_summaries(lam, F.to(st), g);
  Tensor states = states_between(lams.reshape({lams.size(0), b, H, 1, 1}), Fs, o.initial_state);
  Tensor init = state_at(states, g->rank());  // (batch, heads, headdim, N)
  // y is linear in the incoming state: y_t += exp(A_h cumsum(Δ)_t) * (init_h C_t), before the
  // gate
  Tensor decay = exp(cumsum(d, 1) * a);  // (b, L, H)
  Tensor y = y0 + init_contribution(widen(C), init, decay).to(y0.dtype());
  if (o.z.defined()) y = y * silu(o.z);
  return {y, o.return_final_state ? state_at(states, g->size()) : Tensor()};
}

}  // namespace coil::dist
