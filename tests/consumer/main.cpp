// A program outside the coil tree: find_package(coil) + #include <coil/coil.h>.
#include <coil/coil.h>

#include <cstdio>

int main() {
  coil::Tensor x = coil::ones({2, 3}).requires_grad_();
  coil::Tensor y = coil::matmul(x, coil::ones({3, 2})).sum();
  y.backward();
  double g = x.grad().sum().item<double>();
  std::printf("consumer: y=%g grad_sum=%g\n", y.item<double>(), g);
  return (y.item<double>() == 12.0 && g == 12.0) ? 0 : 1;
}
