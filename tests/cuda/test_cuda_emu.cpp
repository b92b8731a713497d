// The CUDA kernels' source run on the CPU through tests/cuda/cuda_emu.h, against the CPU ops in
// float64: tiling, chunk edges, indexing and the placement of every __syncthreads are checked on
// machines without a GPU. The GPU suite ("cuda") runs the same kernels on the hardware.
#include "cuda_emu.h"
// the kernel source after the emulation
#include "../../ops/cuda/selective_scan.cuh"
#include "../../ops/cuda/ssd_chunked.cuh"
#include "ssd_cases.h"

using namespace coil;

namespace {

const float* fp(const Tensor& t) { return t.defined() ? t.data_ptr<float>() : nullptr; }
float* mp(const Tensor& t) { return t.defined() ? t.data_ptr<float>() : nullptr; }
Tensor f32(const Tensor& t) { return t.defined() ? t.detach().to(kF32).contiguous() : Tensor(); }
Tensor zeros32(const Shape& s) { return zeros(s, Options(kF32)); }

// got (f32, from the emulated kernels) against ref (f64): normwise within rtol, and elementwise
// within rtol of ref's largest magnitude.
void check_near(const Tensor& got, const Tensor& ref, double rtol, const std::string& what) {
  CAPTURE(what);
  REQUIRE(got.sizes() == ref.sizes());
  const std::vector<double> rv = ct::vals(ref);
  double big = 0;
  for (double v : rv) big = std::max(big, std::fabs(v));
  const double e = ct::rel_error(got.to(kF64), ref);
  CHECK_MESSAGE(e <= rtol, what << ": normwise error " << e);
  if (getenv("EMU_PRINT")) printf("%s %.3g\n", what.c_str(), e);
  ct::check_close(got, rv, rtol, rtol * big, what);
}

}  // namespace

TEST_SUITE("cuda.emu") {
  TEST_CASE("ssd_scan's chunked CUDA kernels match the CPU op in float64, forward and backward") {
    for (const bool tc : {false, true})  // float32 FMAs, and the tensor cores' 3xTF32
      for (const ct::SsdCase& k : ct::ssd_chunked_cases(false)) {
        manual_seed(21);
        CAPTURE(tc);
        CAPTURE(k.L);
        CAPTURE(k.P);
        CAPTURE(k.N);
        const DType t = kF64;
        TensorList in = ct::ssd_case_inputs(k, t);
        const Tensor dy = ct::rnd({k.Bt, k.L, k.H, k.P}, t);
        const Tensor dfin = k.dfin ? ct::rnd({k.Bt, k.H, k.P, k.N}, t) : Tensor();
        // the reference: the CPU op in float64 with autograd
        TensorList leaves;
        for (const Tensor& v : in) leaves.push_back(v.defined() ? v.detach().requires_grad_() : v);
        SsdScanOptions o = ct::ssd_options(leaves, k.softplus);
        auto [y_ref, fin_ref] =
            ssd_scan(leaves[0], leaves[1], leaves[2], leaves[3], leaves[4], 64, o);
        Tensor loss = (y_ref * dy).sum();
        if (k.dfin) loss = loss + (fin_ref * dfin).sum();
        loss.backward();

        // the kernels, emulated, in f32
        TensorList v;
        for (const Tensor& x : in) v.push_back(f32(x));
        cuda::ssd::Args a;
        a.batch = k.Bt;
        a.L = k.L;
        a.H = k.H;
        a.P = k.P;
        a.N = k.N;
        a.G = k.G;
        a.softplus = k.softplus;
        a.x = fp(v[0]);
        a.dt = fp(v[1]);
        a.A = fp(v[2]);
        a.B = fp(v[3]);
        a.C = fp(v[4]);
        a.D = fp(v[5]);
        a.z = fp(v[6]);
        a.dt_bias = fp(v[7]);
        a.init = fp(v[8]);
        const int64_t steps = cuda::ssd::step_floats(a), states = cuda::ssd::state_floats(a);
        Tensor dd = zeros32({steps}), lc = zeros32({steps}), S = zeros32({states});
        Tensor y = zeros32(v[0].sizes()), y_pre = zeros32(v[0].sizes());
        Tensor fin = zeros32({k.Bt, k.H, k.P, k.N});
        cuda::ssd::states_forward(tc, a, mp(dd), mp(lc), mp(S), mp(fin), nullptr);
        cuda::ssd::output_forward(tc, a, fp(dd), fp(lc), fp(S), mp(y), mp(y_pre), nullptr);
        check_near(y, y_ref.detach(), 2e-5, "y");
        check_near(fin, fin_ref.detach(), 2e-5, "final state");

        cuda::ssd::Grads g;
        const Tensor dy32 = f32(dy), dfin32 = f32(dfin);
        g.dy = fp(dy32);
        g.dfinal = fp(dfin32);
        g.y_pre = fp(y_pre);
        TensorList grads;
        for (const Tensor& x : v) grads.push_back(x.defined() ? zeros32(x.sizes()) : Tensor());
        g.dx = mp(grads[0]);
        g.ddt = mp(grads[1]);
        g.dA = mp(grads[2]);
        g.dB = mp(grads[3]);
        g.dC = mp(grads[4]);
        g.dD = mp(grads[5]);
        g.dz = mp(grads[6]);
        g.ddt_bias = mp(grads[7]);
        g.dinit = mp(grads[8]);
        Tensor Gbuf = zeros32({states}), gy = zeros32(v[0].sizes());
        cuda::ssd::backward(tc, a, fp(dd), fp(lc), fp(S), g, mp(Gbuf), mp(gy), nullptr);
        const char* names[] = {"dx", "ddt", "dA", "dB", "dC", "dD", "dz", "ddt_bias", "dinit"};
        for (size_t i = 0; i < v.size(); ++i)
          if (v[i].defined()) check_near(grads[i], leaves[i].grad(), 1e-4, names[i]);
      }
  }

  TEST_CASE(
      "selective_scan's fast CUDA kernels match the CPU op in float64, forward and backward") {
    // (blocks of 32 channels in one group, N <= 32; the forward's chunk is 80 steps, the
    // backward's 64)
    struct Case {
      int64_t Bt, L, D, N, G;
      bool d, z, bias, h0, dfin, softplus;
    };
    const std::vector<Case> cases = {
        {2, 150, 64, 16, 1, true, true, true, true, true, true},
        {1, 65, 32, 3, 1, false, false, false, true, false, true},
        {1, 97, 96, 32, 3, true, false, true, false, true, false},
    };
    for (const Case& k : cases) {
      manual_seed(22);
      CAPTURE(k.L);
      CAPTURE(k.N);
      const DType t = kF64;
      TensorList in = {ct::rnd({k.Bt, k.L, k.D}, t),
                       k.softplus ? ct::rnd({k.Bt, k.L, k.D}, t, -3, 1)
                                  : ct::rnd({k.Bt, k.L, k.D}, t, 0.01, 0.5),
                       -ct::rnd({k.D, k.N}, t, 0.2, 2),
                       ct::rnd({k.Bt, k.L, k.G, k.N}, t),
                       ct::rnd({k.Bt, k.L, k.G, k.N}, t),
                       k.d ? ct::rnd({k.D}, t) : Tensor(),
                       k.z ? ct::rnd({k.Bt, k.L, k.D}, t) : Tensor(),
                       k.bias ? ct::rnd({k.D}, t, k.softplus ? -1 : 0, 1) : Tensor(),
                       k.h0 ? ct::rnd({k.Bt, k.D, k.N}, t) : Tensor()};
      const Tensor dy = ct::rnd({k.Bt, k.L, k.D}, t);
      const Tensor dfin = k.dfin ? ct::rnd({k.Bt, k.D, k.N}, t) : Tensor();
      TensorList leaves;
      for (const Tensor& v : in) leaves.push_back(v.defined() ? v.detach().requires_grad_() : v);
      auto [y_ref, fin_ref] = selective_scan(leaves[0], leaves[1], leaves[2], leaves[3], leaves[4],
                                             ct::selective_options(leaves, k.softplus));
      Tensor loss = (y_ref * dy).sum();
      if (k.dfin) loss = loss + (fin_ref * dfin).sum();
      loss.backward();

      TensorList v;
      for (const Tensor& x : in) v.push_back(f32(x));
      cuda::ScanArgs a;
      a.batch = k.Bt;
      a.L = k.L;
      a.dim = k.D;
      a.N = k.N;
      a.G = k.G;
      a.softplus = k.softplus;
      a.u = fp(v[0]);
      a.delta = fp(v[1]);
      a.A = fp(v[2]);
      a.B = fp(v[3]);
      a.C = fp(v[4]);
      a.D = fp(v[5]);
      a.z = fp(v[6]);
      a.bias = fp(v[7]);
      a.init = fp(v[8]);
      REQUIRE(cuda::selective_scan_fast_fits(false, a));
      const int64_t nck = (k.L + cuda::kSelectiveFastCkpt - 1) / cuda::kSelectiveFastCkpt;
      Tensor y = zeros32({k.Bt, k.L, k.D}), fin = zeros32({k.Bt, k.D, k.N});
      Tensor ckpt = zeros32({k.Bt, nck, k.N, k.D});
      cuda::fast_forward(a, mp(y), mp(fin), mp(ckpt), nullptr);
      check_near(y, y_ref.detach(), 2e-5, "y");
      check_near(fin, fin_ref.detach(), 2e-5, "final state");

      cuda::ScanGrads g;
      const Tensor dy32 = f32(dy), dfin32 = f32(dfin);
      g.dy = fp(dy32);
      g.dfinal = fp(dfin32);
      TensorList grads;
      for (const Tensor& x : v) grads.push_back(x.defined() ? zeros32(x.sizes()) : Tensor());
      g.du = mp(grads[0]);
      g.ddelta = mp(grads[1]);
      g.dA = mp(grads[2]);
      g.dB = mp(grads[3]);
      g.dC = mp(grads[4]);
      g.dD = mp(grads[5]);
      g.dz = mp(grads[6]);
      g.dbias = mp(grads[7]);
      g.dinit = mp(grads[8]);
      cuda::fast_backward(a, fp(ckpt), g, nullptr);
      const char* names[] = {"du", "ddelta", "dA", "dB", "dC", "dD", "dz", "ddelta_bias", "dinit"};
      for (size_t i = 0; i < v.size(); ++i)
        if (v[i].defined()) check_near(grads[i], leaves[i].grad(), 1e-4, names[i]);
    }
  }
}
