// The stages the 2:4 and block-diagonal kernels are made of. Each computes, for a set of output
// rows r and the N (<= NT) tokens,   out[n, r] = sum_c W[r, c] * in[n, c0(r) + c]
// with one warp per work item of kRows consecutive rows, lanes splitting the reduction axis, fp32
// accumulation, a warp reduction, and an epilogue functor epi(row, token, value).
#pragma once

#include "device.cuh"

namespace fk {

// --- 2:4 sparse rows -----------------------------------------------------------------------
// W (R, C) 2:4 along C: values (R, C/2) T, meta int16 (R, C/16) (canonical Sparse24 nibbles).
// Loads (per lane, per 128 columns): meta 8 words = one 16-byte load, values 64 = eight 16-byte
// loads, every byte of values/meta read once. Needs C % 128 == 0 (16-byte aligned rows).
// FLOPs 2 N R C / 2; bytes R C (values, 2 bytes x C/2) + R C / 8 (meta) + activations.
template <typename T, typename In, int NT, typename Epi>
__device__ void sparse24_rows(const T* __restrict__ values, const int16_t* __restrict__ meta,
                              int R, int C, const In* in, int64_t ldin, int n, Epi epi) {
  constexpr int kRows = RowsPerWarp<NT>::value;
  const Grid grid;
  const int items = (R + kRows - 1) / kRows;
  const int chunks = C / 128;
  const int64_t ldv = C / 2, ldm = C / 16;
  for (int item = grid.warp; item < items; item += grid.nwarps) {
    const int r0 = item * kRows;
    float acc[kRows][NT];
#pragma unroll
    for (int r = 0; r < kRows; ++r)
#pragma unroll
      for (int t = 0; t < NT; ++t) acc[r][t] = 0.f;

    for (int ch = grid.lane; ch < chunks; ch += kWarp) {
      uint4 mw[kRows];
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        const int row = min(r0 + r, R - 1);  // rows past R compute garbage that is never stored
        mw[r] = ldg16(meta + row * ldm + ch * 8);
      }
#pragma unroll
      for (int s = 0; s < 8; ++s) {  // 16 columns per step: 4 groups, 8 values, 1 meta word
        float v[kRows][8];
        uint32_t word[kRows];
#pragma unroll
        for (int r = 0; r < kRows; ++r) {
          const int row = min(r0 + r, R - 1);
          unpack8<T>(ldg16(values + row * ldv + ch * 64 + s * 8), v[r]);
          const uint32_t m32 = (s / 2 == 0) ? mw[r].x : (s / 2 == 1) ? mw[r].y
                               : (s / 2 == 2) ? mw[r].z : mw[r].w;
          word[r] = (m32 >> ((s & 1) * 16)) & 0xffffu;
        }
#pragma unroll
        for (int g = 0; g < 4; ++g) {
          const int col = ch * 128 + s * 16 + g * 4;
          // Tokens outer: one token's 4 activations live at a time (registers stay bounded at
          // NT = 16); they serve all kRows rows of the item.
#pragma unroll
          for (int t = 0; t < NT; ++t) {
            float xs[4];
            load4(in + min(t, n - 1) * ldin + col, xs);
#pragma unroll
            for (int r = 0; r < kRows; ++r) {
              const int nib = (word[r] >> (4 * g)) & 0xf;
              acc[r][t] = fmaf(v[r][2 * g], sel4(xs, nib & 3),
                               fmaf(v[r][2 * g + 1], sel4(xs, nib >> 2), acc[r][t]));
            }
          }
        }
      }
    }
    warp_reduce_store<kRows, NT>(acc, epi, r0, n, grid.lane);
  }
}

// --- dense or block-diagonal rows ----------------------------------------------------------
// W row r is W[r * ldw .. r * ldw + C); it reads in[n, c0 + c] with c0 = (r / block) * C for a
// block-diagonal matrix (blocks (R / block, block, C) contiguous: ldw = C) and c0 = 0 for a dense
// one (block = 0). Each lane loads 8 columns (16 bytes) per row and step. Needs C % 8 == 0,
// ldw % 8 == 0 and, for block-diagonal, block % kRows == 0 (a work item never straddles blocks).
// FLOPs 2 N R C; bytes 2 R C + activations.
template <typename T, typename In, int NT, typename Epi>
__device__ void dense_rows(const T* __restrict__ w, int64_t ldw, int R, int C, int block,
                           const In* in, int64_t ldin, int n, Epi epi) {
  constexpr int kRows = RowsPerWarp<NT>::value;
  const Grid grid;
  const int items = (R + kRows - 1) / kRows;
  for (int item = grid.warp; item < items; item += grid.nwarps) {
    const int r0 = item * kRows;
    const int c0 = block ? (r0 / block) * C : 0;
    float acc[kRows][NT];
#pragma unroll
    for (int r = 0; r < kRows; ++r)
#pragma unroll
      for (int t = 0; t < NT; ++t) acc[r][t] = 0.f;
    for (int c = grid.lane * 8; c < C; c += kWarp * 8) {
      float wv[kRows][8];
#pragma unroll
      for (int r = 0; r < kRows; ++r) unpack8<T>(ldg16(w + min(r0 + r, R - 1) * ldw + c), wv[r]);
#pragma unroll
      for (int t = 0; t < NT; ++t) {
        float xs[8];
        load8(in + min(t, n - 1) * ldin + c0 + c, xs);
#pragma unroll
        for (int r = 0; r < kRows; ++r)
#pragma unroll
          for (int e = 0; e < 8; ++e) acc[r][t] = fmaf(wv[r][e], xs[e], acc[r][t]);
      }
    }
    warp_reduce_store<kRows, NT>(acc, epi, r0, n, grid.lane);
  }
}

// --- epilogues -----------------------------------------------------------------------------
// Into the fp32 workspace (an intermediate of the chain).
struct ToWorkspace {
  float* out;
  int64_t ld;
  int rows;
  __device__ __forceinline__ void operator()(int r, int t, float v) const {
    if (r < rows) out[t * ld + r] = v;
  }
};

// Into y (x's dtype) with the optional bias.
template <typename T>
struct ToOutput {
  T* y;
  int64_t ld;
  const T* bias;
  int rows;
  __device__ __forceinline__ void operator()(int r, int t, float v) const {
    if (r < rows) y[t * ld + r] = from_f<T>(bias ? v + to_f<T>(bias[r]) : v);
  }
};

}  // namespace fk
