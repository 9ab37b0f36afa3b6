// Device helpers shared by every family: element conversion, 16-byte loads, warp reductions.
// Plain CUDA C++, no torch headers.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include "tiles.h"

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

// --- loads ---------------------------------------------------------------------------------
// Every load of the decode kernels goes through one of these, written in PTX so that the
// compiler cannot split a 16-byte load into scalar ones (it did, for activations). The cache
// hint tells the three kinds apart, in the PTX and in the SASS the tests and bench/model.py read:
//   ld_weight16  factors (2:4 values and metadata, dense and block rows, sign words): each byte is
//                read once per call, so they stream past L1 (L1::no_allocate: SASS LDG...NA...)
//                and leave it to the activations every warp re-reads; non-coherent path.
//   ld_input16   the op's read-only inputs that warps share: x, the per-column scales g
//                (non-coherent path, SASS LDG.E.128.CONSTANT).
//   ld_work16    the fp32 workspace written earlier in the same launch (after a grid barrier):
//                plain coherent loads (SASS LDG.E.128), never the non-coherent path.
//   ld_scale     (below) per-row scales, 2 bytes each.
__device__ __forceinline__ uint4 ld_weight16(const void* p) {
  uint4 v;
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
      : "l"(p));
  return v;
}
__device__ __forceinline__ uint4 ld_input16(const void* p) {
  uint4 v;
  asm("ld.global.nc.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
      : "l"(p));
  return v;
}
// volatile: the compiler must not move it above the grid barrier that orders it after the
// writes (ptxas keeps loads after barriers on its own).
__device__ __forceinline__ uint4 ld_work16u(const uint32_t* p) {
  uint4 v;
  asm volatile("ld.global.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}
__device__ __forceinline__ float4 ld_work16(const float* p) {
  const uint4 v = ld_work16u(reinterpret_cast<const uint32_t*>(p));
  return make_float4(__uint_as_float(v.x), __uint_as_float(v.y), __uint_as_float(v.z),
                     __uint_as_float(v.w));
}

// Per-row scales (bias, LittleBit's h and l): one 2-byte element each, read-only, kept in L1
// (L1::evict_last: SASS LDG.E.EL.U16.CONSTANT), the only loads narrower than 16 bytes.
template <typename T>
__device__ __forceinline__ float ld_scale(const T* p) {
  uint16_t v;
  asm("ld.global.nc.L1::evict_last.b16 %0, [%1];" : "=h"(v) : "l"(p));
  return to_f<T>(*reinterpret_cast<const T*>(&v));
}

// 8 consecutive elements of a 16-byte word as floats.
template <typename T>
__device__ __forceinline__ void unpack8(const uint4& w, float (&o)[8]) {
  const T* e = reinterpret_cast<const T*>(&w);
#pragma unroll
  for (int i = 0; i < 8; ++i) o[i] = to_f<T>(e[i]);
}

// 4 consecutive elements (two 32-bit words) as floats.
template <typename T>
__device__ __forceinline__ void unpack4(uint32_t a, uint32_t b, float (&o)[4]) {
  const T* ea = reinterpret_cast<const T*>(&a);
  const T* eb = reinterpret_cast<const T*>(&b);
  o[0] = to_f<T>(ea[0]); o[1] = to_f<T>(ea[1]); o[2] = to_f<T>(eb[0]); o[3] = to_f<T>(eb[1]);
}

// 8 consecutive activations as floats: x (T, one 16-byte load) or the fp32 workspace (two).
template <typename T>
__device__ __forceinline__ void load_act8(const T* p, float (&o)[8]) {
  unpack8<T>(ld_input16(p), o);
}
__device__ __forceinline__ void load_act8(const float* p, float (&o)[8]) {
  const float4 a = ld_work16(p), b = ld_work16(p + 4);
  o[0] = a.x; o[1] = a.y; o[2] = a.z; o[3] = a.w; o[4] = b.x; o[5] = b.y; o[6] = b.z; o[7] = b.w;
}

// 16 consecutive activations as floats.
template <typename T>
__device__ __forceinline__ void load_act16(const T* p, float (&o)[16]) {
  float a[8], b[8];
  load_act8(p, a);
  load_act8(p + 8, b);
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    o[i] = a[i];
    o[8 + i] = b[i];
  }
}

// Select element i (0..3) without dynamic register indexing (which would spill to local memory).
__device__ __forceinline__ float sel4(const float* v, int i) {
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

// --- work partition ---------------------------------------------------------------------------
// A stage is a set of rows, each a reduction over `chunks` 16-byte chunks of the factor. The 32
// lanes of a warp form groups of L lanes (L a power of two): a group owns kRows consecutive rows
// and its lanes split the chunks. L is a power of two <= min(32, chunks) (tiles.h), so a short
// reduction axis (sparse_dense at k = 2048: 16 chunks; LittleBit stage 2 at r = 512: 4) keeps all
// 32 lanes busy with more rows per warp instead of idling lanes (tiles.h: lanes_per_row).
struct RowGroups {
  int L;       // lanes per group
  int li;      // lane in the group
  int grp;     // group in the warp
  int groups;  // groups per warp (32 / L)
  __device__ __forceinline__ RowGroups(int chunks, int rows, int k_rows) {
    L = lanes_per_row(chunks, rows, k_rows);
    const int lane = threadIdx.x % kWarp;
    li = lane & (L - 1);
    grp = lane / L;
    groups = kWarp / L;
  }
};

// The persistent grid walks a stage's work items with a grid stride. Global warp slots are
// numbered CTA-minor (slot = warp_in_cta * gridDim.x + blockIdx.x), so a stage with fewer items
// than warps spreads them over all SMs instead of filling the first CTAs.
struct Grid {
  int warp;    // global warp slot
  int nwarps;  // warps in the grid
  __device__ __forceinline__ Grid()
      : warp((threadIdx.x / kWarp) * gridDim.x + blockIdx.x), nwarps(gridDim.x * kWarpsPerCta) {}
};

// Sum acc[R][NT] over the L lanes of each group and hand each total to epi(row, token, value)
// from one lane of the group (spread over its lanes so the stores are not serialized). Every lane
// runs every shuffle (no branch around them: the compiler would have to re-converge the warp).
template <int R, int NT, typename Epi>
__device__ __forceinline__ void group_reduce_store(float (&acc)[R][NT], const Epi& epi, int r0,
                                                   int n, const RowGroups& rg) {
  // Lanes leave the chunk loop after different trip counts; re-converge once here so the
  // shuffles below need no per-shuffle re-convergence code.
  __syncwarp();
#pragma unroll
  for (int r = 0; r < R; ++r) {
#pragma unroll
    for (int t = 0; t < NT; ++t) {
      float v = acc[r][t];
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) {
        const float u = __shfl_xor_sync(0xffffffffu, v, o);
        if (o < rg.L) v += u;
      }
      if (t < n && rg.li == ((r * NT + t) & (rg.L - 1))) epi(r0 + r, t, v);
    }
  }
}

// Token blocks: the stages run the tokens of a bucket in blocks of kTokenBlock and skip the
// blocks past n (a warp-uniform branch), so a call with 5 tokens in the 16-token bucket does 8
// tokens' work, not 16. Tokens past n inside a block read token n - 1 and are never stored.
constexpr int kTokenBlock = 4;
__device__ __forceinline__ int token_row(int t, int n) { return t < n ? t : n - 1; }

}  // namespace fk
