// CUDA elementwise kernels: unary, binary (broadcasting), where, copy (any dtype pair), fill.
// One thread per output element in a grid-stride loop; an element's operand offsets come from
// its index through the loop's (merged) dims, so any strides and broadcasts work. The math is
// ops/elementwise_math.h, the CPU kernels' own; 16-bit floats convert through float.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "../elementwise_math.h"
#include "../kernel_ops.h"
#include "device_util.cuh"
#include "launch.h"

namespace coil::cuda {
namespace {

struct Offsets {
  int64_t o[kMaxOperands];
};

__device__ __forceinline__ Offsets offsets(const ElemGeom& g, int64_t i, int n_ops) {
  Offsets r{};
  if (g.ndim == 1) {  // contiguous runs merge into one dim: no divisions (the common case)
    for (int k = 0; k < n_ops; ++k) r.o[k] = i * g.strides[k][0];
    return r;
  }
  for (int d = g.ndim - 1; d >= 0; --d) {
    const int64_t size = g.sizes[d];
    const int64_t q = i / size, c = i - q * size;
    i = q;
    for (int k = 0; k < n_ops; ++k) r.o[k] += c * g.strides[k][d];
  }
  return r;
}

// ---- loads and stores of any element type, through float or double ----
template <class T>
struct Io {
  __device__ static T load(const void* p, int64_t i) { return static_cast<const T*>(p)[i]; }
  __device__ static void store(void* p, int64_t i, T v) { static_cast<T*>(p)[i] = v; }
};

__device__ double load_as_double(Ty t, const void* p, int64_t i) {
  switch (t) {
    case Ty::f32:
      return static_cast<const float*>(p)[i];
    case Ty::f64:
      return static_cast<const double*>(p)[i];
    case Ty::i32:
      return static_cast<const int32_t*>(p)[i];
    case Ty::i64:
      return static_cast<double>(static_cast<const int64_t*>(p)[i]);
    case Ty::b8:
      return static_cast<const uint8_t*>(p)[i] != 0;
    case Ty::bf16:
      return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
    case Ty::f16:
      return __half2float(static_cast<const __half*>(p)[i]);
  }
  return 0;
}

template <class T>
__global__ void unary_k(int op, ElemGeom g, T* out, const T* in, double p0, double p1) {
  COIL_GRID_LOOP(i, g.numel) {
    const Offsets o = offsets(g, i, 2);
    if constexpr (std::is_floating_point_v<T>)
      out[o.o[0]] = math::unary_float<T>(static_cast<UnaryOp>(op), in[o.o[1]], p0, p1);
    else
      out[o.o[0]] = math::unary_int<T>(static_cast<UnaryOp>(op), in[o.o[1]], p0, p1);
  }
}

// isfinite / logical_not: any input type, bool out
__global__ void unary_bool_k(int op, Ty in_t, ElemGeom g, uint8_t* out, const void* in) {
  COIL_GRID_LOOP(i, g.numel) {
    const Offsets o = offsets(g, i, 2);
    const double v = load_as_double(in_t, in, o.o[1]);
    out[o.o[0]] = static_cast<UnaryOp>(op) == UnaryOp::isfinite ? isfinite(v) : v == 0;
  }
}

template <class T>
__global__ void binary_k(int op, ElemGeom g, T* out, const T* a, const T* b, T alpha) {
  COIL_GRID_LOOP(i, g.numel) {
    const Offsets o = offsets(g, i, 3);
    out[o.o[0]] = math::binary_value<T>(static_cast<BinaryOp>(op), a[o.o[1]], b[o.o[2]], alpha);
  }
}

template <class T>
__global__ void compare_k(int op, ElemGeom g, uint8_t* out, const T* a, const T* b) {
  COIL_GRID_LOOP(i, g.numel) {
    const Offsets o = offsets(g, i, 3);
    out[o.o[0]] = math::compare_value<T>(static_cast<BinaryOp>(op), a[o.o[1]], b[o.o[2]]);
  }
}

// bool operands: mul / minimum are "and", the rest "or" (logical_and / logical_or)
__global__ void binary_bool_k(int op, ElemGeom g, uint8_t* out, const uint8_t* a,
                              const uint8_t* b) {
  COIL_GRID_LOOP(i, g.numel) {
    const Offsets o = offsets(g, i, 3);
    const bool x = a[o.o[1]] != 0, y = b[o.o[2]] != 0;
    const bool both = static_cast<BinaryOp>(op) == BinaryOp::mul ||
                      static_cast<BinaryOp>(op) == BinaryOp::minimum;
    out[o.o[0]] = both ? (x && y) : (x || y);
  }
}

template <class T>
__global__ void where_k(ElemGeom g, T* out, const uint8_t* cond, const T* a, const T* b) {
  COIL_GRID_LOOP(i, g.numel) {
    const Offsets o = offsets(g, i, 4);
    out[o.o[0]] = cond[o.o[1]] ? a[o.o[2]] : b[o.o[3]];
  }
}

// copy: values go through double (exact for every coil dtype but i64 beyond 2^53, which keeps
// its own path), 16-bit floats round to nearest even as the CPU does.
__device__ void store_from_double(Ty t, void* p, int64_t i, double v) {
  switch (t) {
    case Ty::f32:
      static_cast<float*>(p)[i] = static_cast<float>(v);
      return;
    case Ty::f64:
      static_cast<double*>(p)[i] = v;
      return;
    case Ty::i32:
      static_cast<int32_t*>(p)[i] = static_cast<int32_t>(v);
      return;
    case Ty::i64:
      static_cast<int64_t*>(p)[i] = static_cast<int64_t>(v);
      return;
    case Ty::b8:
      static_cast<uint8_t*>(p)[i] = v != 0;
      return;
    case Ty::bf16:
      static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(static_cast<float>(v));
      return;
    case Ty::f16:
      static_cast<__half*>(p)[i] = __float2half_rn(static_cast<float>(v));
      return;
  }
}

__global__ void copy_k(Ty dst_t, Ty src_t, ElemGeom g, void* dst, const void* src) {
  COIL_GRID_LOOP(i, g.numel) {
    const Offsets o = offsets(g, i, 2);
    if (src_t == Ty::i64 && dst_t == Ty::i64) {
      static_cast<int64_t*>(dst)[o.o[0]] = static_cast<const int64_t*>(src)[o.o[1]];
    } else if (src_t == Ty::i64 && dst_t == Ty::i32) {
      static_cast<int32_t*>(dst)[o.o[0]] =
          static_cast<int32_t>(static_cast<const int64_t*>(src)[o.o[1]]);
    } else if (src_t == dst_t && (src_t == Ty::bf16 || src_t == Ty::f16)) {
      static_cast<uint16_t*>(dst)[o.o[0]] = static_cast<const uint16_t*>(src)[o.o[1]];
    } else if (src_t == Ty::f32 && dst_t == Ty::bf16) {  // autocast's casts, without doubles
      static_cast<__nv_bfloat16*>(dst)[o.o[0]] =
          __float2bfloat16_rn(static_cast<const float*>(src)[o.o[1]]);
    } else if (src_t == Ty::bf16 && dst_t == Ty::f32) {
      static_cast<float*>(dst)[o.o[0]] =
          __bfloat162float(static_cast<const __nv_bfloat16*>(src)[o.o[1]]);
    } else if (src_t == Ty::f32 && dst_t == Ty::f32) {
      static_cast<float*>(dst)[o.o[0]] = static_cast<const float*>(src)[o.o[1]];
    } else {
      store_from_double(dst_t, dst, o.o[0], load_as_double(src_t, src, o.o[1]));
    }
  }
}

__global__ void fill_k(Ty t, ElemGeom g, void* out, double v) {
  COIL_GRID_LOOP(i, g.numel) { store_from_double(t, out, offsets(g, i, 1).o[0], v); }
}

}  // namespace

void launch_unary(int op, Ty in_t, Ty out_t, const ElemGeom& g, void* out, const void* in,
                  double p0, double p1, cudaStream_t s) {
  if (g.numel == 0) return;
  const int nb = blocks_for(g.numel);
  if (out_t == Ty::b8) {
    unary_bool_k<<<nb, 256, 0, s>>>(op, in_t, g, static_cast<uint8_t*>(out), in);
    return;
  }
  by_type(out_t, [&](auto z) {
    using T = decltype(z);
    unary_k<T><<<nb, 256, 0, s>>>(op, g, static_cast<T*>(out), static_cast<const T*>(in), p0, p1);
  });
}

void launch_binary(int op, Ty t, const ElemGeom& g, void* out, const void* a, const void* b,
                   double alpha, cudaStream_t s) {
  if (g.numel == 0) return;
  const int nb = blocks_for(g.numel);
  if (t == Ty::b8) {
    binary_bool_k<<<nb, 256, 0, s>>>(op, g, static_cast<uint8_t*>(out),
                                     static_cast<const uint8_t*>(a),
                                     static_cast<const uint8_t*>(b));
    return;
  }
  const bool compare = op >= static_cast<int>(BinaryOp::eq);
  by_type(t, [&](auto z) {
    using T = decltype(z);
    if (compare)
      compare_k<T><<<nb, 256, 0, s>>>(op, g, static_cast<uint8_t*>(out), static_cast<const T*>(a),
                                      static_cast<const T*>(b));
    else
      binary_k<T><<<nb, 256, 0, s>>>(op, g, static_cast<T*>(out), static_cast<const T*>(a),
                                     static_cast<const T*>(b), static_cast<T>(alpha));
  });
}

void launch_where(Ty t, const ElemGeom& g, void* out, const void* cond, const void* a,
                  const void* b, cudaStream_t s) {
  if (g.numel == 0) return;
  const int nb = blocks_for(g.numel);
  auto run = [&](auto z) {
    using T = decltype(z);
    where_k<T><<<nb, 256, 0, s>>>(g, static_cast<T*>(out), static_cast<const uint8_t*>(cond),
                                  static_cast<const T*>(a), static_cast<const T*>(b));
  };
  if (t == Ty::b8)
    run(uint8_t{});
  else if (t == Ty::bf16 || t == Ty::f16)
    run(uint16_t{});
  else
    by_type(t, run);
}

void launch_copy(Ty dst_t, Ty src_t, const ElemGeom& g, void* dst, const void* src,
                 cudaStream_t s) {
  if (g.numel == 0) return;
  copy_k<<<blocks_for(g.numel), 256, 0, s>>>(dst_t, src_t, g, dst, src);
}

void launch_fill(Ty t, const ElemGeom& g, void* out, double value, cudaStream_t s) {
  if (g.numel == 0) return;
  fill_k<<<blocks_for(g.numel), 256, 0, s>>>(t, g, out, value);
}

}  // namespace coil::cuda
