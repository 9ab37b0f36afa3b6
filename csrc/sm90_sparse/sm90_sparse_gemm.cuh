// Hopper (sm_90a) 2:4 sparse GEMM on wgmma.mma_async.sp, with an optional fused ARMOR epilogue.
//
//   y (N, M) = x (N, K) @ S.T (+ bias)                         plain 2:4 core
//   y (N, M) = (x (N, K) @ S.T) @ A.T (+ bias), A = blockdiag(128 x 128 blocks)   ARMOR epilogue
//
// The sparse factor sits in wgmma's A slot (D^T = S x^T): M = out rows of S (2:4 along K), N =
// tokens, K = in. x (N, K) row-major is exactly wgmma's K-major B operand, so nothing is
// transposed; the accumulator D (M x N) is written back transposed through shared memory.
//
// FLOPs: 2*N*M*K useful (the tensor core does half of them: 2:4). Bytes (minimum): x 2*N*K,
// S values M*K + metadata M*K/8, y 2*N*M; ARMOR adds 2*M*128 for A and 2*N*M*128 FLOPs.
//
// Stages (one CTA = one warpgroup of 128 threads, tile BM = 128 rows of S x BN = 128 tokens):
//   prologue   cp.async of the first kStages-2 k-tiles (BK = 64 of K each) into shared memory
//   mainloop   per k-tile: wait for its cp.async group, issue the cp.async of k-tile kt+kStages-2,
//              load the A fragments (S values, 4 x b32 per thread per m64 x k32) and metadata
//              (1 x b32) from shared memory into registers, issue 4 x wgmma.mma_async.sp
//              m64n128k32 (2 m64 blocks x 2 k32 steps; A from registers, B = x tile by
//              descriptor, 128-byte swizzle), commit, wait until <= 1 wgmma group is in flight.
//   epilogue   (ARMOR only) z = acc rounded to T goes to shared memory as a K-major operand, then
//              y^T_tile = A_blk (128 x 128, register fragments read from global/L2) @ z with
//              2 x 8 dense wgmma m64n128k16 (RS).
//              Store: acc (+ bias) -> T -> shared memory [token][row] (swizzled) -> 16-byte
//              coalesced stores of y rows.
//
// Why A comes from registers (the RS form): Sparse24.prepare("cuda_sm90") pre-shuffles the kept
// values into exactly the per-thread fragment order of wgmma.sp (see layout below), so a thread
// gets its whole A fragment with one conflict-free 16-byte ld.shared and no descriptor, swizzle or
// ldmatrix is involved for the sparse operand. The only shared-memory descriptor is the plain
// K-major 128-byte-swizzled one for x (and for z in the ARMOR epilogue).
//
// Prepared layouts (pure torch in factorkern/cuda_sm90/layout.py, round-trip tested on CPU):
//   a_frag  T      (Mp/64, Kp/32, 128, 8): m64 block mb, k32 step ks, thread tid = 32*w + lane,
//                  g = lane/4, t = lane%4. Register r (elements 2r, 2r+1) holds the two kept values
//                  (lower column first) of row 64*mb + 16*w + g + 8*(r&1), 4-column group
//                  8*ks + t + 4*(r>>1).  (PTX ISA, sparse wgmma A fragment for .f16/.bf16.)
//   e_frag  u32    (Mp/64, Kp/32, 64): entry 16*w + 2*g + h = the metadata register of lanes
//                  4g+h (h = 0, 1) of warp w at sparsity selector 0: bits 0..15 = canonical meta
//                  word (2*ks + h) of row 64*mb + 16*w + g, bits 16..31 = same word of row + 8.
//                  Lanes 4g+2, 4g+3 load the same word (ignored by the hardware at selector 0).
//   armor   T      (M/128, 2, 8, 128, 8): block b, m64 half mh, k16 step ks, thread tid: the
//                  dense wgmma A fragment, register r = rows 64*mh + 16*w + g + 8*(r&1),
//                  columns 16*ks + 2*t + 8*(r>>1) + {0, 1}.
// Mp = M rounded up to 128 (zero rows), Kp = K rounded up to 64 (zero groups); padding groups
// use nibble 0b0100 (indices 0, 1), never the invalid 0b0000.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 900) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define FK_SM90_DEVICE 1
#else
#define FK_SM90_DEVICE 0
#endif

namespace fk_sm90 {

constexpr int kThreads = 128;  // one warpgroup
constexpr int kBM = 128;       // rows of S per CTA (= ARMOR's A block)
constexpr int kBN = 128;       // tokens per CTA
constexpr int kBK = 64;        // K per k-tile: 2 wgmma.sp k32 steps, one 128-byte swizzle row of x
constexpr int kStages = 4;     // cp.async ring; prefetch distance kStages - 2 (see mainloop)

constexpr int kAStepBytes = kThreads * 16;           // one m64 x k32 A fragment slab: 2 KB
constexpr int kAStageBytes = 2 * 2 * kAStepBytes;    // 2 m64 blocks x 2 k32 steps: 8 KB
constexpr int kEStepBytes = 64 * 4;                  // one m64 x k32 metadata slab: 256 B
constexpr int kEStageBytes = 2 * 2 * kEStepBytes;    // 1 KB
constexpr int kBStageBytes = kBN * kBK * 2;          // x tile, 128 rows x 128 B: 16 KB
constexpr int kSmemBytes = kStages * (kBStageBytes + kAStageBytes + kEStageBytes) + 1024;

struct Params {
  int n;             // tokens
  int k;             // in features (x columns), k % 8 == 0
  int m;             // out features (rows of S), m % 8 == 0
  int kp;            // k rounded up to kBK (the prepared layout's K)
  const void* x;     // (n, ldx)
  long long ldx;
  const void* a_frag;
  const uint32_t* e_frag;
  const void* bias;  // (m,) or nullptr
  const void* armor; // prepared A blocks or nullptr
  void* y;           // (n, ldy)
  long long ldy;
};

#if FK_SM90_DEVICE

// ---- PTX wrappers ---------------------------------------------------------------------------
__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Shared memory through 32-bit shared-window addresses and explicit ld/st.shared: the compiler
// cannot fall back to generic LD/ST (which it did when the aligned base went through uintptr_t).
__device__ __forceinline__ void sts_u16(uint32_t addr, uint16_t v) {
  asm volatile("st.shared.u16 [%0], %1;\n" ::"r"(addr), "h"(v) : "memory");
}
__device__ __forceinline__ uint4 lds_v4(uint32_t addr) {
  uint4 v;
  asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "r"(addr)
               : "memory");
  return v;
}
__device__ __forceinline__ uint32_t lds_u32(uint32_t addr) {
  uint32_t v;
  asm volatile("ld.shared.u32 %0, [%1];\n" : "=r"(v) : "r"(addr) : "memory");
  return v;
}

// 16-byte cp.async; src-size 0 zero-fills the destination (rows past n, columns past k).
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool pred) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
               "r"(pred ? 16 : 0)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
// Generic-proxy writes (cp.async, st.shared) made visible to the async proxy (wgmma operands).
__device__ __forceinline__ void fence_proxy_async() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
__device__ __forceinline__ void wgmma_fence() {
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void wgmma_commit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Pin a register's value at this point: wgmma reads its register operands asynchronously, so the
// compiler must neither reuse them before the matching wait nor read accumulators before it.
__device__ __forceinline__ void fence_reg(uint32_t& r) { asm volatile("" : "+r"(r)::"memory"); }
__device__ __forceinline__ void fence_reg(float& r) { asm volatile("" : "+f"(r)::"memory"); }

// Shared-memory matrix descriptor: K-major operand, 128-byte swizzle. Rows of 128 bytes (64 half
// elements), 8-row atoms of 1024 bytes stacked along N (stride byte offset 1024), atom bases
// 1024-aligned (base offset 0). Moving along K inside the 128-byte row = adding bytes to the start
// address (the swizzle XOR is applied by the hardware on the final address bits).
__device__ __forceinline__ uint64_t desc_k_sw128(uint32_t saddr) {
  uint64_t d = 0;
  d |= static_cast<uint64_t>((saddr & 0x3FFFF) >> 4);  // bits 0-13: start address >> 4
  d |= static_cast<uint64_t>(1) << 16;                 // bits 16-29: leading byte offset (unused)
  d |= static_cast<uint64_t>(1024 >> 4) << 32;         // bits 32-45: stride byte offset >> 4
  d |= static_cast<uint64_t>(1) << 62;                 // bits 62-63: 1 = 128-byte swizzle
  return d;
}

#define FK_ACC8(a, i)                                                                     \
  "+f"(a[i + 0]), "+f"(a[i + 1]), "+f"(a[i + 2]), "+f"(a[i + 3]), "+f"(a[i + 4]),         \
      "+f"(a[i + 5]), "+f"(a[i + 6]), "+f"(a[i + 7])
#define FK_ACC64(a)                                                                       \
  FK_ACC8(a, 0), FK_ACC8(a, 8), FK_ACC8(a, 16), FK_ACC8(a, 24), FK_ACC8(a, 32),           \
      FK_ACC8(a, 40), FK_ACC8(a, 48), FK_ACC8(a, 56)
#define FK_D64                                                                            \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, "  \
  "%19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, "   \
  "%36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, "   \
  "%53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"

// D (64 x 128, fp32) += A (64 x 32, 2:4, registers) * B (32 x 128, shared memory), selector 0.
// Operands after the metadata: sparsity selector, scale-d (1: accumulate), imm-scale-a,
// imm-scale-b, imm-trans-b (0: B is K-major).
#define FK_WGMMA_SP(TY)                                                                    \
  asm volatile("wgmma.mma_async.sp.sync.aligned.m64n128k32.f32." TY "." TY " " FK_D64      \
               ", {%64, %65, %66, %67}, %68, %69, 0, 1, 1, 1, 0;\n"                        \
               : FK_ACC64(d)                                                                \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(e))
// Dense D (64 x 128) += A (64 x 16, registers) * B (16 x 128, shared memory), the ARMOR epilogue.
#define FK_WGMMA_DENSE(TY)                                                                 \
  asm volatile("wgmma.mma_async.sync.aligned.m64n128k16.f32." TY "." TY " " FK_D64         \
               ", {%64, %65, %66, %67}, %68, 1, 1, 1, 0;\n"                                 \
               : FK_ACC64(d)                                                                \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc))

template <typename T>
struct Mma;
template <>
struct Mma<__nv_bfloat16> {
  static __device__ __forceinline__ void sparse(float (&d)[64], const uint32_t (&a)[4],
                                                uint64_t desc, uint32_t e) {
    FK_WGMMA_SP("bf16");
  }
  static __device__ __forceinline__ void dense(float (&d)[64], const uint32_t (&a)[4],
                                               uint64_t desc) {
    FK_WGMMA_DENSE("bf16");
  }
};
template <>
struct Mma<__half> {
  static __device__ __forceinline__ void sparse(float (&d)[64], const uint32_t (&a)[4],
                                                uint64_t desc, uint32_t e) {
    FK_WGMMA_SP("f16");
  }
  static __device__ __forceinline__ void dense(float (&d)[64], const uint32_t (&a)[4],
                                               uint64_t desc) {
    FK_WGMMA_DENSE("f16");
  }
};

template <typename T>
__device__ __forceinline__ T to_t(float v);
template <>
__device__ __forceinline__ __nv_bfloat16 to_t<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}
template <>
__device__ __forceinline__ __half to_t<__half>(float v) { return __float2half_rn(v); }
template <typename T>
__device__ __forceinline__ float to_f(T v);
template <>
__device__ __forceinline__ float to_f<__nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}
template <>
__device__ __forceinline__ float to_f<__half>(__half v) { return __half2float(v); }

// Byte offset of element (token n, row m) of a 128 x 128 tile kept as two K-major 128-byte-swizzled
// panels (rows 0..63 and 64..127 of the tile, 16 KB each): the layout the epilogue wgmma reads z
// from, reused for the output staging.
__device__ __forceinline__ uint32_t tile_offset(int n, int m) {
  const int panel = m >> 6, col = m & 63;
  return panel * kBStageBytes + n * 128 + ((((col >> 3) ^ (n & 7))) << 4) + ((col & 7) << 1);
}

// Accumulators (2 m64 blocks x 64 fp32 per thread, wgmma D layout: row 16*w + g + 8*v1,
// token 8*v2 + 2*t + v0 for d[v0 + 2*v1 + 4*v2]) (+ bias) -> T -> shared tile.
template <typename T>
__device__ __forceinline__ void acc_to_smem(float (&acc)[2][64], uint32_t tile, const T* bias,
                                            int m0, int m_total) {
  const int tid = threadIdx.x, w = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int mb = 0; mb < 2; ++mb) {
#pragma unroll
    for (int v1 = 0; v1 < 2; ++v1) {
      const int m = 64 * mb + 16 * w + g + 8 * v1;
      float b = 0.f;
      if (bias != nullptr && m0 + m < m_total) b = to_f<T>(bias[m0 + m]);
#pragma unroll
      for (int v2 = 0; v2 < 16; ++v2) {
#pragma unroll
        for (int v0 = 0; v0 < 2; ++v0) {
          const int n = 8 * v2 + 2 * t + v0;
          const T v = to_t<T>(acc[mb][v0 + 2 * v1 + 4 * v2] + b);
          sts_u16(tile + tile_offset(n, m), *reinterpret_cast<const uint16_t*>(&v));
        }
      }
    }
  }
}

template <typename T, bool kArmor>
__device__ __forceinline__ void sparse_gemm_body(const Params& p) {
  extern __shared__ __align__(1024) uint8_t smem_raw[];
  // Swizzle atoms must sit on 1024-byte boundaries (descriptor base offset 0). All shared
  // addresses below are 32-bit shared-window addresses (smem_u32), used by PTX that names the
  // shared state space: LDS/STS in the SASS, never generic LD/ST.
  const uint32_t raw = smem_u32(smem_raw);
  const uint32_t smem = (raw + 1023u) & ~1023u;
  const uint32_t smem_b = smem;                              // kStages x 16 KB, x tiles
  const uint32_t smem_a = smem_b + kStages * kBStageBytes;   // kStages x 8 KB, S fragments
  const uint32_t smem_e = smem_a + kStages * kAStageBytes;   // kStages x 1 KB, metadata

  const int tid = threadIdx.x, w = tid >> 5, lane = tid & 31;
  const int m_tile = blockIdx.x, n0 = blockIdx.y * kBN, m0 = m_tile * kBM;
  const int kt_count = p.kp / kBK, ksteps = p.kp / 32;
  const T* x = static_cast<const T*>(p.x);
  const uint8_t* a_g = static_cast<const uint8_t*>(p.a_frag);
  const uint8_t* e_g = reinterpret_cast<const uint8_t*>(p.e_frag);

  // ---- producer: one k-tile of S fragments, metadata and x into stage s (all threads) --------
  auto load_tile = [&](int kt, int s) {
    const uint32_t a_s = smem_a + s * kAStageBytes;
#pragma unroll
    for (int i = tid; i < 512; i += kThreads) {  // 2 m64 blocks x 4 KB (2 k32 slabs), contiguous
      const int mb = i >> 8, off = (i & 255) << 4;
      const uint8_t* src = a_g + ((size_t)(2 * m_tile + mb) * ksteps + 2 * kt) * kAStepBytes + off;
      cp_async16(a_s + mb * 2 * kAStepBytes + off, src, true);
    }
    if (tid < 64) {  // 2 m64 blocks x 512 B of metadata
      const int mb = tid >> 5, off = (tid & 31) << 4;
      const uint8_t* src = e_g + ((size_t)(2 * m_tile + mb) * ksteps + 2 * kt) * kEStepBytes + off;
      cp_async16(smem_e + s * kEStageBytes + mb * 2 * kEStepBytes + off, src, true);
    }
    const uint32_t b_s = smem_b + s * kBStageBytes;
#pragma unroll
    for (int i = tid; i < kBN * 8; i += kThreads) {  // 128 rows x 8 chunks of 16 B, swizzled
      const int r = i >> 3, c = i & 7, n = n0 + r, kk = kt * kBK + c * 8;
      const bool ok = n < p.n && kk < p.k;
      const T* src = ok ? x + (size_t)n * p.ldx + kk : x;
      cp_async16(b_s + r * 128 + ((c ^ (r & 7)) << 4), src, ok);
    }
  };

  float acc[2][64];
#pragma unroll
  for (int mb = 0; mb < 2; ++mb)
#pragma unroll
    for (int i = 0; i < 64; ++i) acc[mb][i] = 0.f;

  const int e_idx = 16 * w + 2 * (lane >> 2) + (lane & 1);

  // Consumer step for k-tile kt. The wgmma group is waited for (wait_group 0) before the step
  // ends: wgmma reads its A and metadata registers asynchronously, and ptxas serializes every
  // wgmma of the kernel (warning C7513) when ordinary instructions write wgmma input registers
  // while a wgmma is in flight, so keeping one group in flight buys nothing with register A.
  // Overlap comes from the cp.async ring (kStages - 2 k-tiles ahead) and from a second CTA on
  // the SM (254 registers x 128 threads and ~101 KB of shared memory leave room for two), whose
  // wgmmas run while this one loads fragments; README.md has the two-consumer-warpgroup plan.
  // Ring safety: stage (kt-2) % kStages is refilled only after this step's barrier, which every
  // warp reaches after the wgmma of k-tile kt-1 (and so kt-2), the last readers, completed.
  auto step = [&](int kt) {
    cp_async_wait<kStages - 3>();  // this thread's copies of k-tile kt landed
    fence_proxy_async();
    __syncthreads();               // ... and everyone's
    const int pf = kt + kStages - 2;
    if (pf < kt_count) load_tile(pf, pf % kStages);
    cp_async_commit();             // always commit (possibly empty) so group counting stays exact

    const int s = kt % kStages;
    const uint32_t a_s = smem_a + s * kAStageBytes;
    const uint32_t e_s = smem_e + s * kEStageBytes;
    uint32_t af[2][2][4], ef[2][2];
#pragma unroll
    for (int mb = 0; mb < 2; ++mb)
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        const uint4 v = lds_v4(a_s + (mb * 2 + j) * kAStepBytes + tid * 16);
        af[mb][j][0] = v.x; af[mb][j][1] = v.y; af[mb][j][2] = v.z; af[mb][j][3] = v.w;
        ef[mb][j] = lds_u32(e_s + 4 * ((mb * 2 + j) * 64 + e_idx));
      }
    const uint32_t b_s = smem_b + s * kBStageBytes;
    wgmma_fence();
#pragma unroll
    for (int j = 0; j < 2; ++j)
#pragma unroll
      for (int mb = 0; mb < 2; ++mb)
        Mma<T>::sparse(acc[mb], af[mb][j], desc_k_sw128(b_s + j * 64), ef[mb][j]);
    wgmma_commit();
    wgmma_wait<0>();
#pragma unroll
    for (int mb = 0; mb < 2; ++mb) {
#pragma unroll
      for (int i = 0; i < 64; ++i) fence_reg(acc[mb][i]);
#pragma unroll
      for (int j = 0; j < 2; ++j) {
#pragma unroll
        for (int r = 0; r < 4; ++r) fence_reg(af[mb][j][r]);
        fence_reg(ef[mb][j]);
      }
    }
  };

  // ---- prologue -------------------------------------------------------------------------------
#pragma unroll
  for (int s = 0; s < kStages - 2; ++s) {
    if (s < kt_count) load_tile(s, s);
    cp_async_commit();
  }
  // ---- mainloop -------------------------------------------------------------------------------
  for (int kt = 0; kt < kt_count; ++kt) step(kt);
  cp_async_wait<0>();
  __syncthreads();  // every warp is done with the ring: stages 0-1 of smem_b become the tile

  const uint32_t tile = smem_b;  // 2 panels x 16 KB
  const T* bias = static_cast<const T*>(p.bias);

  if constexpr (kArmor) {
    // ---- ARMOR epilogue: y^T_tile = A_blk @ z, z = S-product tile (128 rows x 128 tokens) -------
    acc_to_smem<T>(acc, tile, static_cast<const T*>(nullptr), m0, p.m);
    fence_proxy_async();
    __syncthreads();
    const uint4* a_blk = static_cast<const uint4*>(p.armor) + (size_t)m_tile * 2 * 8 * kThreads;
    const uint32_t z_s = tile;
#pragma unroll
    for (int mh = 0; mh < 2; ++mh) {
#pragma unroll
      for (int i = 0; i < 64; ++i) acc[mh][i] = 0.f;
#pragma unroll
      for (int half = 0; half < 2; ++half) {  // 4 k16 steps per group: 16 A registers live
        uint32_t ar[4][4];
#pragma unroll
        for (int q = 0; q < 4; ++q) {
          const uint4 v = __ldg(a_blk + (mh * 8 + half * 4 + q) * kThreads + tid);
          ar[q][0] = v.x; ar[q][1] = v.y; ar[q][2] = v.z; ar[q][3] = v.w;
        }
#pragma unroll
        for (int i = 0; i < 64; ++i) fence_reg(acc[mh][i]);
        wgmma_fence();
#pragma unroll
        for (int q = 0; q < 4; ++q)  // K = 128 rows of z: k16 step ks in panel ks/4, 32 B apart
          Mma<T>::dense(acc[mh], ar[q], desc_k_sw128(z_s + half * kBStageBytes + q * 32));
        wgmma_commit();
        wgmma_wait<0>();
#pragma unroll
        for (int i = 0; i < 64; ++i) fence_reg(acc[mh][i]);
#pragma unroll
        for (int q = 0; q < 4; ++q)
#pragma unroll
          for (int r = 0; r < 4; ++r) fence_reg(ar[q][r]);
      }
    }
    __syncthreads();  // z fully read by every warp before the tile is overwritten
  }

  // ---- store: acc (+ bias) -> shared tile [token][row] -> coalesced 16-byte rows of y ------------
  acc_to_smem<T>(acc, tile, bias, m0, p.m);
  __syncthreads();
  T* y = static_cast<T*>(p.y);
#pragma unroll 4
  for (int i = tid; i < kBN * 16; i += kThreads) {
    const int n = i >> 4, c = i & 15, m = 8 * c;
    if (n0 + n < p.n && m0 + m < p.m) {
      const uint4 v = lds_v4(tile + tile_offset(n, m));
      *reinterpret_cast<uint4*>(y + (size_t)(n0 + n) * p.ldy + m0 + m) = v;
    }
  }
}

#endif  // FK_SM90_DEVICE

// Compiled for every target; only sm_90a gets a body (elsewhere wgmma does not exist). The
// launcher checks the device and the binary version before launching, so the empty variant
// never runs silently.
template <typename T, bool kArmor>
__global__ void __launch_bounds__(kThreads, 1) sparse_gemm_kernel(const Params p) {
#if FK_SM90_DEVICE
  sparse_gemm_body<T, kArmor>(p);
#endif
}

}  // namespace fk_sm90
