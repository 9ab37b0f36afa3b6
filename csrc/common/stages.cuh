// The stages the 2:4 and block-diagonal kernels are made of. Each computes, for a set of output
// rows r and the n (<= NT) tokens,   out[t, r] = sum_c W[r, c] * in[t, c0(r) + c]
// with lane groups of a warp owning rows and their lanes splitting the reduction axis
// (RowGroups), fp32 accumulation, a group reduction, and an epilogue functor epi(row, token,
// value). Tokens are the N side: every weight byte is loaded once (16-byte loads, L1 bypassed)
// and used for all n tokens, whose activations come from L1/L2 with 16-byte loads.
// Tile parameters per token bucket: tiles.h.
#pragma once

#include "device.cuh"
#include "tiles.h"

namespace fk {

// Tile parameters (tiles.h has the numbers).
template <int NT>
struct Sparse24Tile {
  static constexpr int kRows = tiles::sparse24_rows(NT);
  static constexpr int kBatch = tiles::sparse24_batch(NT);
  // NT >= 4: expand each 2:4 group to 4 dense weights once and use them for all tokens (4 FMAs
  // per token); NT = 1: pick the 2 activations the group's indices name (2 FMAs + selects).
  static constexpr bool kExpand = tiles::sparse24_expand(NT);
};

template <int NT>
struct DenseTile {
  static constexpr int kRows = tiles::dense_rows(NT);
  static constexpr int kUnroll = tiles::dense_unroll(NT);
};

// --- 2:4 sparse rows -----------------------------------------------------------------------
// W (R, C) 2:4 along C: values (R, C/2) T, meta int16 (R, C/16) (canonical Sparse24 nibbles).
// A chunk is 128 columns of a row: one 16-byte load of meta (8 words) and eight 16-byte loads of
// values, every byte read once. Needs C % 128 == 0 (16-byte aligned rows).
// FLOPs 2 N R C / 2; bytes R C (values, 2 bytes x C/2) + R C / 8 (meta) + activations.

// Group g (0..3) of a meta word: the 4 dense weights of the group, given its 2 kept values.
__device__ __forceinline__ void expand_group(float v0, float v1, uint32_t nib, float* w) {
  const uint32_t i0 = nib & 3u, i1 = nib >> 2;  // i0 < i1 in a valid nibble
  w[0] = i0 == 0 ? v0 : 0.f;
  w[1] = i0 == 1 ? v0 : (i1 == 1 ? v1 : 0.f);
  w[2] = i0 == 2 ? v0 : (i1 == 2 ? v1 : 0.f);
  w[3] = i1 == 3 ? v1 : 0.f;
}

template <typename T, typename In, int NT, typename Epi>
__device__ void sparse24_rows(const T* __restrict__ values, const int16_t* __restrict__ meta,
                              int R, int C, const In* in, int64_t ldin, int n, const Epi& epi) {
  using Tile = Sparse24Tile<NT>;
  constexpr int kRows = Tile::kRows, kBatch = Tile::kBatch;
  constexpr int kTB = NT < kTokenBlock ? NT : kTokenBlock;
  const Grid grid;
  const int chunks = C / 128;
  const RowGroups rg(chunks, R, kRows);
  const int rows_per_item = rg.groups * kRows;
  const int items = (R + rows_per_item - 1) / rows_per_item;
  const int64_t ldv = C / 2, ldm = C / 16;
  for (int item = grid.warp; item < items; item += grid.nwarps) {
    const int r0 = item * rows_per_item + rg.grp * kRows;
    float acc[kRows][NT];
#pragma unroll
    for (int r = 0; r < kRows; ++r)
#pragma unroll
      for (int t = 0; t < NT; ++t) acc[r][t] = 0.f;

    for (int ch = rg.li; ch < chunks; ch += rg.L) {
      uint4 mw[kRows];
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        const int row = min(r0 + r, R - 1);  // rows past R compute garbage that is never stored
        mw[r] = ld_weight16(meta + row * ldm + ch * 8);
      }
#pragma unroll
      for (int sb = 0; sb < 8; sb += kBatch) {
        uint4 vw[kRows][kBatch];
#pragma unroll
        for (int r = 0; r < kRows; ++r)
#pragma unroll
          for (int s = 0; s < kBatch; ++s)
            vw[r][s] = ld_weight16(values + min(r0 + r, R - 1) * ldv + ch * 64 + (sb + s) * 8);
#pragma unroll
        for (int s = 0; s < kBatch; ++s) {  // 16 columns per step: 4 groups, 8 values, 1 word
          const int step = sb + s;
          uint32_t word[kRows];
#pragma unroll
          for (int r = 0; r < kRows; ++r) {
            const uint32_t m32 = (step / 2 == 0) ? mw[r].x : (step / 2 == 1) ? mw[r].y
                                 : (step / 2 == 2) ? mw[r].z : mw[r].w;
            word[r] = (m32 >> ((step & 1) * 16)) & 0xffffu;
          }
#pragma unroll
          for (int h = 0; h < 2; ++h) {  // 8 columns: 2 groups, their 4 kept values
            const int col = ch * 128 + step * 16 + h * 8;
            float v[kRows][4];
#pragma unroll
            for (int r = 0; r < kRows; ++r)
              unpack4<T>(h ? vw[r][s].z : vw[r][s].x, h ? vw[r][s].w : vw[r][s].y, v[r]);
            float w[kRows][8];  // NT >= 4: the dense weights of the 2 groups
            if constexpr (Tile::kExpand) {
#pragma unroll
              for (int r = 0; r < kRows; ++r)
#pragma unroll
                for (int g = 0; g < 2; ++g)
                  expand_group(v[r][2 * g], v[r][2 * g + 1],
                               (word[r] >> (8 * h + 4 * g)) & 0xfu, &w[r][4 * g]);
            }
#pragma unroll
            for (int tb = 0; tb < NT; tb += kTB) {
              if (tb >= n) break;  // warp-uniform
#pragma unroll
              for (int t = tb; t < tb + kTB; ++t) {
                float xs[8];
                load_act8(in + token_row(t, n) * ldin + col, xs);
#pragma unroll
                for (int r = 0; r < kRows; ++r) {
                  if constexpr (Tile::kExpand) {
#pragma unroll
                    for (int j = 0; j < 8; ++j) acc[r][t] = fmaf(w[r][j], xs[j], acc[r][t]);
                  } else {
#pragma unroll
                    for (int g = 0; g < 2; ++g) {
                      const int nib = (word[r] >> (8 * h + 4 * g)) & 0xf;
                      acc[r][t] = fmaf(v[r][2 * g], sel4(xs + 4 * g, nib & 3),
                                       fmaf(v[r][2 * g + 1], sel4(xs + 4 * g, nib >> 2),
                                            acc[r][t]));
                    }
                  }
                }
              }
            }
          }
        }
      }
    }
    group_reduce_store<kRows, NT>(acc, epi, r0, n, rg);
  }
}

// --- dense or block-diagonal rows ----------------------------------------------------------
// W row r is W[r * ldw .. r * ldw + C); it reads in[t, c0 + c] with c0 = (r / block) * C for a
// block-diagonal matrix (blocks (R / block, block, C) contiguous: ldw = C) and c0 = 0 for a dense
// one (block = 0). A chunk is 8 columns (16 bytes) of a row. Needs C % 8 == 0, ldw % 8 == 0 and,
// for block-diagonal, block % kRows == 0 (a lane group's rows never straddle blocks).
// FLOPs 2 N R C; bytes 2 R C + activations.
template <typename T, typename In, int NT, typename Epi>
__device__ void dense_rows(const T* __restrict__ w, int64_t ldw, int R, int C, int block,
                           const In* in, int64_t ldin, int n, const Epi& epi) {
  constexpr int kRows = DenseTile<NT>::kRows, kUnroll = DenseTile<NT>::kUnroll;
  constexpr int kTB = NT < kTokenBlock ? NT : kTokenBlock;
  const Grid grid;
  const int chunks = C / 8;
  const RowGroups rg(chunks, R, kRows);
  const int rows_per_item = rg.groups * kRows;
  const int items = (R + rows_per_item - 1) / rows_per_item;
  for (int item = grid.warp; item < items; item += grid.nwarps) {
    const int r0 = item * rows_per_item + rg.grp * kRows;
    const In* in0 = in + (block ? (min(r0, R - 1) / block) * C : 0);
    float acc[kRows][NT];
#pragma unroll
    for (int r = 0; r < kRows; ++r)
#pragma unroll
      for (int t = 0; t < NT; ++t) acc[r][t] = 0.f;
    for (int c0 = rg.li; c0 < chunks; c0 += rg.L * kUnroll) {
      uint4 wv[kUnroll][kRows];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int c = c0 + u * rg.L;
#pragma unroll
        for (int r = 0; r < kRows; ++r)
          wv[u][r] = c < chunks ? ld_weight16(w + min(r0 + r, R - 1) * ldw + c * 8)
                                : make_uint4(0, 0, 0, 0);
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int c = c0 + u * rg.L;
        if (c >= chunks) break;  // only at the tail of the row
        float wf[kRows][8];
#pragma unroll
        for (int r = 0; r < kRows; ++r) unpack8<T>(wv[u][r], wf[r]);
#pragma unroll
        for (int tb = 0; tb < NT; tb += kTB) {
          if (tb >= n) break;  // warp-uniform
#pragma unroll
          for (int t = tb; t < tb + kTB; ++t) {
            float xs[8];
            load_act8(in0 + token_row(t, n) * ldin + c * 8, xs);
#pragma unroll
            for (int r = 0; r < kRows; ++r)
#pragma unroll
              for (int e = 0; e < 8; ++e) acc[r][t] = fmaf(wf[r][e], xs[e], acc[r][t]);
          }
        }
      }
    }
    group_reduce_store<kRows, NT>(acc, epi, r0, n, rg);
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
    if (r < rows) y[t * ld + r] = from_f<T>(bias ? v + ld_scale(bias + r) : v);
  }
};

// Warp work items of each stage (sizes the persistent grid; the host's count must match the
// device loops above).
template <int NT>
constexpr int64_t sparse24_items(int64_t rows, int64_t cols) {
  return stage_items(rows, cols / 128, Sparse24Tile<NT>::kRows);
}
template <int NT>
constexpr int64_t dense_items(int64_t rows, int64_t cols) {
  return stage_items(rows, cols / 8, DenseTile<NT>::kRows);
}

}  // namespace fk
