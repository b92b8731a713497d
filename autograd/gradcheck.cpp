#include <cmath>
#include <sstream>

#include "autograd.h"

namespace coil {

namespace {
double dot(const Tensor& out, const std::vector<double>& v) {
  std::vector<double> o = to_vector<double>(out);
  double s = 0;
  for (size_t i = 0; i < o.size(); ++i) s += o[i] * v[i];
  return s;
}
}  // namespace

GradcheckResult gradcheck(const std::function<Tensor(const TensorList&)>& fn,
                          const TensorList& inputs, double eps, double atol, double rtol) {
  for (const Tensor& t : inputs) {
    if (!t.defined() || !t.requires_grad()) continue;
    COIL_CHECK(t.dtype() == kF64 && t.device().is_cpu() && t.is_contiguous() && t.is_leaf(),
               "gradcheck: inputs that require grad must be contiguous float64 cpu leaves, got ",
               t.dtype(), " ", t.shape_str());
  }
  // A fixed random projection v turns any output into the scalar <fn(x), v>.
  Tensor out = fn(inputs);
  std::vector<double> v(static_cast<size_t>(out.numel()));
  uint64_t s = 0x9E3779B97F4A7C15ull;
  for (double& x : v) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    x = static_cast<double>(s >> 11) / 9007199254740992.0 * 2.0 - 1.0;
  }
  for (const Tensor& t : inputs)
    if (t.defined() && t.requires_grad()) const_cast<Tensor&>(t).set_grad(Tensor());
  if (out.requires_grad()) out.backward(tensor(v, out.sizes(), Options(out.dtype())));

  GradcheckResult res;
  NoGradGuard no_grad;
  for (size_t k = 0; k < inputs.size(); ++k) {
    const Tensor& x = inputs[k];
    if (!x.defined() || !x.requires_grad()) continue;
    std::vector<double> analytic =
        x.grad().defined() ? to_vector<double>(x.grad()) : std::vector<double>(x.numel(), 0.0);
    double* p = x.data_ptr<double>();
    for (int64_t j = 0; j < x.numel(); ++j) {
      double orig = p[j];
      p[j] = orig + eps;
      double fp = dot(fn(inputs), v);
      p[j] = orig - eps;
      double fm = dot(fn(inputs), v);
      p[j] = orig;
      double numeric = (fp - fm) / (2 * eps);
      double err = std::fabs(numeric - analytic[j]);
      res.max_abs_err = std::max(res.max_abs_err, err);
      if (res.ok && !(err <= atol + rtol * std::fabs(numeric))) {
        std::ostringstream os;
        os << "gradcheck: input " << k << " (shape " << x.shape_str() << ") element " << j
           << ": analytic " << analytic[j] << " vs numeric " << numeric;
        res.ok = false;
        res.message = os.str();
      }
    }
  }
  return res;
}

}  // namespace coil
