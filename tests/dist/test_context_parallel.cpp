// Context parallelism: the sequence split over the world (torch.chunk's pieces: uneven, shorter
// than the conv's K-1, empty) gives the single-process scan and mixers on the whole sequence:
// outputs, final states, input gradients and every parameter gradient (summed over the ranks),
// for both state-passing schemes. Runs at 1, 2 and 4 ranks.
#include "../test_util.h"

using namespace coil;
namespace dist = coil::dist;

namespace {

struct Piece {
  int64_t start, length;
};
Piece my_piece(int64_t L) {
  const auto sizes = dist::shard_sizes(L, dist::world_size());
  int64_t start = 0;
  for (int r = 0; r < dist::rank(); ++r) start += sizes[r];
  return {start, sizes[dist::rank()]};
}

// lengths that give uneven pieces, pieces shorter than K-1 = 3, and empty ones at 2 and 4 ranks
std::vector<int64_t> lengths() { return {2, 5, 7, 13, 24}; }

const std::vector<std::pair<std::string, dist::StatePassing>> kSchemes = {
    {"allgather", dist::StatePassing::kAllGather}, {"serial", dist::StatePassing::kSerial}};

Tensor leaf(const Tensor& t) { return t.detach().clone().requires_grad_(true); }
Tensor piece_leaf(const Tensor& t, const Piece& p) { return leaf(t.narrow(1, p.start, p.length)); }

// Both scans take 9 inputs, 0, 1, 3, 4 and 6 per token (split with the sequence), 2, 5, 7 and 8
// per channel or head (replicated). run(inputs, cp or null) -> (y, final state). Checks the
// context-parallel run on this rank's piece against the single-process run on the whole
// sequence: outputs, the final state, and the gradients of loss sum(y * wy) + sum(h * wh).
using ScanRun =
    std::function<std::pair<Tensor, Tensor>(const TensorList&, const dist::ContextParallel*)>;
void check_cp_scan(const ScanRun& run, const TensorList& global, const Tensor& wy, const Tensor& wh,
                   const Piece& pc, const dist::ContextParallel& cp) {
  const std::vector<int> per_token = {0, 1, 3, 4, 6}, replicated = {2, 5, 7, 8};
  TensorList ref_in, in;
  for (const Tensor& t : global) ref_in.push_back(leaf(t));
  for (int i = 0; i < 9; ++i) in.push_back(leaf(global[i]));
  for (int i : per_token) in[i] = piece_leaf(global[i], pc);
  auto [y_ref, h_ref] = run(ref_in, nullptr);
  ((y_ref * wy).sum() + (h_ref * wh).sum()).backward();
  auto [y, h] = run(in, &cp);
  // each rank adds its share of the final state's term: the ranks' losses sum to one
  ((y * wy.narrow(1, pc.start, pc.length)).sum() +
   (h * wh).sum() / static_cast<double>(dist::world_size()))
      .backward();
  CHECK(ct::rel_error(y, y_ref.narrow(1, pc.start, pc.length)) < 1e-10);
  CHECK(ct::rel_error(h, h_ref) < 1e-10);
  for (int i : per_token) {
    CAPTURE(i);
    CHECK(ct::rel_error(in[i].grad(), ref_in[i].grad().narrow(1, pc.start, pc.length)) < 1e-10);
  }
  for (int i : replicated) {
    CAPTURE(i);
    CHECK(ct::rel_error(ct::summed_grad(in[i].grad(), in[i], dist::world()), ref_in[i].grad()) <
          1e-10);
  }
}

}  // namespace

TEST_SUITE("dist") {
  TEST_CASE("context-parallel selective_scan and ssd_scan equal the whole sequence's") {
    dist::ContextParallel cp{dist::world()};
    for (int64_t L : lengths()) {
      CAPTURE(L);
      const Piece pc = my_piece(L);
      manual_seed(20 + L);
      // Mamba-1 shapes: batch 2, dim 3, N 4, two groups of B/C
      const Tensor u = randn({2, L, 4}, kF64), delta = randn({2, L, 4}, kF64) * 0.5,
                   A = -rand({4, 3}, kF64) - 0.2, B = randn({2, L, 2, 3}, kF64),
                   C = randn({2, L, 2, 3}, kF64), D = randn({4}, kF64), z = randn({2, L, 4}, kF64),
                   bias = randn({4}, kF64) * 0.3, h0 = randn({2, 4, 3}, kF64),
                   wy = randn({2, L, 4}, kF64), wh = randn({2, 4, 3}, kF64);
      // Mamba-2 shapes: batch 2, heads 4, headdim 2, groups 2, N 3
      const Tensor x = randn({2, L, 4, 2}, kF64), dt = randn({2, L, 4}, kF64) * 0.5,
                   Ah = -rand({4}, kF64) - 0.2, Bs = randn({2, L, 2, 3}, kF64),
                   Cs = randn({2, L, 2, 3}, kF64), Dh = randn({4}, kF64),
                   zs = randn({2, L, 4, 2}, kF64), dtb = randn({4}, kF64) * 0.3,
                   s0 = randn({2, 4, 2, 3}, kF64), wys = randn({2, L, 4, 2}, kF64),
                   whs = randn({2, 4, 2, 3}, kF64);
      for (const auto& [scheme, passing] : kSchemes) {
        CAPTURE(scheme);
        cp.passing = passing;
        check_cp_scan(
            [](const TensorList& v, const dist::ContextParallel* c) {
              const SelectiveScanOptions o = ct::selective_options(v);
              return c ? dist::cp_selective_scan(v[0], v[1], v[2], v[3], v[4], o, *c)
                       : selective_scan(v[0], v[1], v[2], v[3], v[4], o);
            },
            {u, delta, A, B, C, D, z, bias, h0}, wy, wh, pc, cp);
        check_cp_scan(
            [](const TensorList& v, const dist::ContextParallel* c) {
              const SsdScanOptions o = ct::ssd_options(v);
              return c ? dist::cp_ssd_scan(v[0], v[1], v[2], v[3], v[4], 4, o, *c)
                       : ssd_scan(v[0], v[1], v[2], v[3], v[4], 4, o);
            },
            {x, dt, Ah, Bs, Cs, Dh, zs, dtb, s0}, wys, whs, pc, cp);
      }
    }
  }

  TEST_CASE("context-parallel ssd_scan with fast-forgetting heads (decays that underflow)") {
    // heads 0 and 1 forget within a few tokens (exp underflows to zero), heads 2 and 3 do not:
    // the incoming state's share is computed per head over the tokens it still reaches
    dist::ContextParallel cp{dist::world()};
    for (DType dtype : {kF64, kF32}) {
      CAPTURE(dtype);
      const double tol = dtype == kF64 ? 1e-10 : 1e-5;
      for (int64_t L : {13, 40}) {
        CAPTURE(L);
        const Piece pc = my_piece(L);
        manual_seed(5);
        const Tensor fast = tensor(std::vector<double>{30, 30, 0, 0}, {4}, dtype);
        const Tensor x = randn({2, L, 4, 3}, dtype), dt = randn({2, L, 4}, dtype) * 0.3 + fast,
                     A = tensor(std::vector<double>{-16, -12, -0.5, -1}, {4}, dtype),
                     B = randn({2, L, 2, 5}, dtype), C = randn({2, L, 2, 5}, dtype),
                     w = randn({2, L, 4, 3}, dtype);
        TensorList ref_in = {leaf(x), leaf(dt), leaf(A), leaf(B), leaf(C)};
        SsdScanOptions o;
        o.dt_softplus = true;
        Tensor y_ref = ssd_scan(ref_in[0], ref_in[1], ref_in[2], ref_in[3], ref_in[4], 8, o).first;
        (y_ref * w).sum().backward();
        TensorList in = {piece_leaf(x, pc), piece_leaf(dt, pc), leaf(A), piece_leaf(B, pc),
                         piece_leaf(C, pc)};
        Tensor y = dist::cp_ssd_scan(in[0], in[1], in[2], in[3], in[4], 8, o, cp).first;
        (y * w.narrow(1, pc.start, pc.length)).sum().backward();
        CHECK(ct::rel_error(y, y_ref.narrow(1, pc.start, pc.length)) < tol);
        for (int i : {0, 1, 3, 4}) {
          CAPTURE(i);
          CHECK(ct::rel_error(in[i].grad(), ref_in[i].grad().narrow(1, pc.start, pc.length)) < tol);
        }
        CHECK(ct::rel_error(ct::summed_grad(in[2].grad(), in[2], dist::world()), ref_in[2].grad()) <
              tol);
      }
    }
  }

  TEST_CASE("context-parallel conv halo: the K-1 inputs before each piece, gradients sent back") {
    dist::ContextParallel cp{dist::world()};
    for (int64_t L : lengths()) {
      CAPTURE(L);
      const Piece pc = my_piece(L);
      manual_seed(3);
      const Tensor x = randn({2, L, 5}, kF64), w = randn({2, 3, 5}, kF64);
      Tensor xl = piece_leaf(x, pc);
      Tensor halo = dist::cp_conv_halo(xl, 3, cp);
      // the reference: the 3 inputs before the piece, zeros before the sequence
      Tensor want = cat({zeros({2, 3, 5}, kF64), x}, 1).narrow(1, pc.start, 3);
      CHECK(ct::rel_error(halo, want) == 0);
      if (halo.requires_grad()) (halo * w).sum().backward();
      // each input's gradient: the sum of the halo weights of every rank whose window holds it
      Tensor g = zeros({2, L + 3, 5}, kF64);
      for (int r = 0; r < dist::world_size(); ++r) {
        int64_t start = 0;
        const auto sizes = dist::shard_sizes(L, dist::world_size());
        for (int j = 0; j < r; ++j) start += sizes[j];
        Tensor sl = g.narrow(1, start, 3);
        sl.add_(w);
      }
      Tensor gx = g.narrow(1, 3, L).narrow(1, pc.start, pc.length);
      // (a world of one has a constant halo: no gradient reaches x)
      CHECK(ct::rel_error(xl.grad().defined() ? xl.grad() : zeros_like(gx), gx) < 1e-15);
    }
  }

  TEST_CASE("context-parallel Mamba and Mamba2 mixers equal the whole sequence's, f64 and f32") {
    for (const std::string type : {"mamba", "mamba2"}) {
      for (DType dtype : {kF64, kF32}) {
        for (const auto& [scheme, passing] : kSchemes) {
          CAPTURE(type);
          CAPTURE(dtype);
          CAPTURE(scheme);
          nn::MambaConfig c;
          c.model_type = type;
          c.hidden_size = 8;
          c.state_size = 4;
          c.num_hidden_layers = 1;
          c.num_heads = 4;
          c.head_dim = 4;
          c.n_groups = 2;
          c.chunk_size = 4;
          manual_seed(11);
          std::shared_ptr<nn::Module> m;
          std::function<Tensor(const Tensor&)> fwd;
          if (type == "mamba") {
            auto mm = std::make_shared<nn::Mamba>(c, dtype);
            fwd = [mm](const Tensor& u) { return mm->forward(u); };
            m = mm;
          } else {
            auto mm = std::make_shared<nn::Mamba2>(c, dtype);
            fwd = [mm](const Tensor& u) { return mm->forward(u); };
            m = mm;
          }
          auto set_cp = [&](bool on) {
            std::optional<dist::ContextParallel> v;
            if (on) v = dist::ContextParallel{dist::world(), passing};
            if (auto a = std::dynamic_pointer_cast<nn::Mamba>(m)) a->context_parallel = v;
            if (auto a = std::dynamic_pointer_cast<nn::Mamba2>(m)) a->context_parallel = v;
          };
          const double tol = dtype == kF64 ? 1e-10 : 1e-5;
          for (int64_t L : {5, 13}) {
            CAPTURE(L);
            const Piece pc = my_piece(L);
            const Tensor u = randn({2, L, 8}, dtype), w = randn({2, L, 8}, dtype);
            set_cp(false);
            m->zero_grad();
            Tensor ur = leaf(u);
            Tensor y_ref = fwd(ur);
            (y_ref * w).sum().backward();
            std::vector<Tensor> ref_grads;
            for (const Tensor& p : m->parameters()) ref_grads.push_back(p.grad().detach().clone());
            m->zero_grad();
            set_cp(true);
            Tensor ul = piece_leaf(u, pc);
            Tensor y = fwd(ul);
            (y * w.narrow(1, pc.start, pc.length)).sum().backward();
            CHECK(ct::rel_error(y, y_ref.narrow(1, pc.start, pc.length)) < tol);
            CHECK(ct::rel_error(ul.grad(), ur.grad().narrow(1, pc.start, pc.length)) < tol);
            const auto params = m->named_parameters();
            for (size_t i = 0; i < params.size(); ++i) {
              CAPTURE(params[i].first);
              CHECK(ct::rel_error(
                        ct::summed_grad(params[i].second.grad(), params[i].second, dist::world()),
                        ref_grads[i]) < tol);
            }
          }
          set_cp(false);
        }
      }
    }
  }

  TEST_CASE("context parallelism sends the same bytes per layer whatever the sequence length") {
    nn::MambaConfig c;
    c.model_type = "mamba2";
    c.hidden_size = 16;
    c.state_size = 8;
    c.num_heads = 4;
    c.head_dim = 8;
    c.n_groups = 1;
    c.chunk_size = 8;
    c.num_hidden_layers = 2;
    for (const auto& [scheme, passing] : kSchemes) {
      CAPTURE(scheme);
      for (const std::string type : {"mamba", "mamba2"}) {
        CAPTURE(type);
        c.model_type = type;
        manual_seed(2);
        auto lm = std::make_shared<nn::MambaLM>(c);
        // a group of its own, so the meter counts only this model's traffic
        dist::GroupPtr g = dist::world()->split(0, dist::rank());
        lm->set_context_parallel(dist::ContextParallel{g, passing});
        std::vector<int64_t> sent;
        for (int64_t L : {64, 256}) {
          const Piece pc = my_piece(L);
          Tensor ids = randint(0, 256, {2, L + 1});
          const int64_t before = g->bytes_sent();
          Tensor logits = lm->forward(ids.narrow(1, pc.start, pc.length));
          Tensor loss =
              cross_entropy(logits.reshape({-1, logits.size(2)}),
                            ids.narrow(1, pc.start + 1, pc.length).reshape({-1}), -100, 0.0, "sum");
          loss.backward();
          sent.push_back(g->bytes_sent() - before);
        }
        MESSAGE(type << " " << scheme << ": bytes sent per step at L=64 and 256 (2 layers): "
                     << sent[0] << ", " << sent[1]);
        CHECK(sent[0] == sent[1]);
        if (dist::world_size() > 1) CHECK(sent[0] > 0);
      }
    }
  }
}
