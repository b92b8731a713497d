// The CUDA kernels' source run on the CPU through tests/cuda/cuda_emu.h, against the CPU ops in
// float64: tiling, chunk edges, indexing and the placement of every __syncthreads are checked on
// machines without a GPU. The GPU suite ("cuda") runs the same kernels on the hardware.
#include "cuda_emu.h"
// the kernel source after the emulation
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
}
