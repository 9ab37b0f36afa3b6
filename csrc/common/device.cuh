// Device helpers shared by every family: element conversion, 16-byte loads, warp reductions.
// Plain CUDA C++, no torch headers.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

namespace fk {

constexpr int kWarp = 32;
constexpr int kThreads = 256;  // every kernel: 8 warps per CTA
constexpr int kWarpsPerCta = kThreads / kWarp;

template <typename T>
__device__ __forceinline__ float to_f(T v);
template <>
__device__ __forceinline__ float to_f<float>(float v) { return v; }
template <>
__device__ __forceinline__ float to_f<__half>(__half v) { return __half2float(v); }
template <>
__device__ __forceinline__ float to_f<__nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}

template <typename T>
__device__ __forceinline__ T from_f(float v);
template <>
__device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// Read-only 16-byte load through the non-coherent path (LDG.E.128.CONSTANT): only for tensors no
// thread writes during the launch (factors, x, bias), never for the workspace.
__device__ __forceinline__ uint4 ldg16(const void* p) {
  return __ldg(reinterpret_cast<const uint4*>(p));
}

// 8 consecutive elements of a 16-byte word as floats.
template <typename T>
__device__ __forceinline__ void unpack8(const uint4& w, float (&o)[8]) {
  const T* e = reinterpret_cast<const T*>(&w);
#pragma unroll
  for (int i = 0; i < 8; ++i) o[i] = to_f<T>(e[i]);
}

// 4 consecutive activations as floats: x (read-only, half types, 8-byte load) or the fp32
// workspace (written earlier in the same launch: plain coherent loads).
__device__ __forceinline__ void load4(const float* p, float (&o)[4]) {
  const float4 v = *reinterpret_cast<const float4*>(p);
  o[0] = v.x; o[1] = v.y; o[2] = v.z; o[3] = v.w;
}
template <typename T>
__device__ __forceinline__ void load4(const T* p, float (&o)[4]) {
  const uint2 v = __ldg(reinterpret_cast<const uint2*>(p));
  const T* e = reinterpret_cast<const T*>(&v);
#pragma unroll
  for (int i = 0; i < 4; ++i) o[i] = to_f<T>(e[i]);
}

// 8 consecutive activations as floats.
__device__ __forceinline__ void load8(const float* p, float (&o)[8]) {
  const float4 a = *reinterpret_cast<const float4*>(p);
  const float4 b = *reinterpret_cast<const float4*>(p + 4);
  o[0] = a.x; o[1] = a.y; o[2] = a.z; o[3] = a.w; o[4] = b.x; o[5] = b.y; o[6] = b.z; o[7] = b.w;
}
template <typename T>
__device__ __forceinline__ void load8(const T* p, float (&o)[8]) {
  unpack8<T>(ldg16(p), o);
}

// Select element i (0..3) without dynamic register indexing (which would spill to local memory).
__device__ __forceinline__ float sel4(const float (&v)[4], int i) {
  const float lo = (i & 1) ? v[1] : v[0];
  const float hi = (i & 1) ? v[3] : v[2];
  return (i & 2) ? hi : lo;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ int warp_sum(int v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Reduce acc[R][NT] across the warp and hand each total to epi(row_offset, token, value) from
// one lane each (spread over lanes so the stores are not serialized on lane 0).
template <int R, int NT, typename Epi>
__device__ __forceinline__ void warp_reduce_store(float (&acc)[R][NT], Epi& epi, int r0, int n,
                                                  int lane) {
#pragma unroll
  for (int r = 0; r < R; ++r) {
#pragma unroll
    for (int t = 0; t < NT; ++t) {
      const float v = warp_sum(acc[r][t]);
      if (lane == (r * NT + t) % kWarp && t < n) epi(r0 + r, t, v);
    }
  }
}

// Stage partition: a persistent grid walks work items with a grid stride.
struct Grid {
  int warp;    // global warp id
  int nwarps;  // warps in the grid
  int lane;
  __device__ __forceinline__ Grid()
      : warp(blockIdx.x * kWarpsPerCta + threadIdx.x / kWarp),
        nwarps(gridDim.x * kWarpsPerCta),
        lane(threadIdx.x % kWarp) {}
};

// Rows per warp work item: more rows amortize the activation loads (read once per column for all
// rows of the item), fewer keep the fp32 accumulators (rows x tokens) in registers.
template <int NT>
struct RowsPerWarp {
  static constexpr int value = NT >= 16 ? 2 : 4;
};

}  // namespace fk
