// quickstart: fit a 2-layer MLP to a synthetic regression with AdamW.
//   y = sin(2 x0) + 0.5 x1^2 - x2 x3 + noise,  x ~ U[-2, 2]^4
// Shows the core workflow: tensors that require grad, ops, backward, an optimizer step.
#include <coil/coil.h>

#include <cmath>
#include <cstdio>

using namespace coil;

int main() {
  manual_seed(0);
  const int64_t n = 4096, in = 4, hidden = 64;

  // Data.
  Tensor x = rand({n, in}) * 4.0 - 2.0;
  Tensor x0 = x.select(1, 0), x1 = x.select(1, 1), x2 = x.select(1, 2), x3 = x.select(1, 3);
  // sin(2 x0) through tanh-free ops: sin(t) = Im(e^{it}) is not a coil op, so use the identity
  // sin(2a) = 2 tanh(a) / (1 + tanh(a)^2)
  Tensor t = tanh(x0);
  Tensor y = (2.0 * t / (1.0 + t * t) + 0.5 * x1 * x1 - x2 * x3 + 0.05 * randn({n})).unsqueeze(1);

  // Parameters, initialised as torch.nn.Linear does: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
  auto init = [](Shape s, int64_t fan_in) {
    double b = 1.0 / std::sqrt(static_cast<double>(fan_in));
    Tensor p = rand(s) * (2 * b) - b;
    return p.requires_grad_();
  };
  Tensor w1 = init({hidden, in}, in), b1 = init({hidden}, in);
  Tensor w2 = init({1, hidden}, hidden), b2 = init({1}, hidden);

  optim::AdamWOptions opts;
  opts.lr = 1e-2;
  opts.weight_decay = 1e-4;
  optim::AdamW opt({w1, b1, w2, b2}, opts);

  const int64_t batch = 256, steps = 600;
  double first = 0, last = 0;
  for (int64_t step = 0; step < steps; ++step) {
    int64_t start = (step * batch) % n;
    Tensor xb = x.narrow(0, start, batch), yb = y.narrow(0, start, batch);
    Tensor pred = linear(gelu(linear(xb, w1, b1)), w2, b2);
    Tensor loss = mse_loss(pred, yb);
    opt.zero_grad();
    loss.backward();
    opt.step();
    double l = loss.item<double>();
    if (step == 0) first = l;
    last = l;
    if (step % 100 == 0 || step == steps - 1)
      std::printf("step %4lld  loss %.5f\n", static_cast<long long>(step), l);
  }
  // Full-data loss after training.
  NoGradGuard no_grad;
  double full = mse_loss(linear(gelu(linear(x, w1, b1)), w2, b2), y).item<double>();
  std::printf("loss fell from %.4f to %.4f (full data %.4f)\n", first, last, full);
  return last < first ? 0 : 1;
}
