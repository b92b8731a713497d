// Factories and random initialisers. Random draws use the Philox stream (core/rng.h): the same
// seed gives the same numbers whatever the thread count.
#pragma once
#include "../core/tensor.h"

namespace coil {

Tensor zeros(const Shape& shape, Options o = {});
Tensor ones(const Shape& shape, Options o = {});
Tensor full(const Shape& shape, Scalar value, Options o = {});
Tensor zeros_like(const Tensor& t);
Tensor ones_like(const Tensor& t);
Tensor full_like(const Tensor& t, Scalar value);
Tensor empty_like(const Tensor& t);
// [start, end) in steps; integer arguments give int64 unless o says otherwise.
Tensor arange(Scalar end, Options o = Options(kI64));
Tensor arange(Scalar start, Scalar end, Scalar step = 1, Options o = Options(kI64));
Tensor linspace(double start, double end, int64_t steps, Options o = {});
Tensor eye(int64_t n, Options o = {});

Tensor rand(const Shape& shape, Options o = {});   // U[0, 1)
Tensor randn(const Shape& shape, Options o = {});  // N(0, 1)
Tensor randint(int64_t low, int64_t high, const Shape& shape, Options o = Options(kI64));
Tensor rand_like(const Tensor& t);
Tensor randn_like(const Tensor& t);
// In-place initialisers (no autograd; bump the version).
Tensor& uniform_(Tensor& t, double low = 0, double high = 1);
Tensor& normal_(Tensor& t, double mean = 0, double std = 1);
Tensor& bernoulli_(Tensor& t, double p);

}  // namespace coil
