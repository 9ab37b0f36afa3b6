// LittleBit stages: W = sum over terms of diag(h) sign(U) diag(l) sign(V).T diag(g).
//   stage 1 (per term):  a[n, j] = l[j] * sum_c sign(V[j, c]) x[n, c] g[c]   -> workspace (N, rpad)
//       exact:     sign flips of fp32 activations, fp32 accumulation
//       popcount:  int8 activations in 8 bit planes, AND + POPC, exact int32 (see popcount.cu)
//   stage 2:             y[n, o] = sum_t h_t[o] sum_j sign(U_t[o, j]) a_t[n, j] + bias
// Signs are SignBits words (bit 1 = +1), read with 16-byte loads (4 words = 128 columns per lane
// and step). Bytes: r (in + out) / 8 per term plus the scales; FLOPs (as dense multiply-adds)
// 2 N r (in + out) per term, done as one FADD per sign and token.
#pragma once

#include "../common/launch.cuh"
#include "../common/stages.cuh"
#include "factorkern.h"

namespace fk {

template <typename T>
struct LbTerm {
  const int32_t* u;   // (out, ldu) words, rows padded with zero words
  const int32_t* v;   // (rank, in / 32) words
  const T* h;
  const T* l;
  const T* g;
  int rank;
  int ldu;            // words per U row, a multiple of 4; rpad = 32 * ldu
  float* a;           // workspace (n, rpad): stage-1 output, zero past rank
  uint32_t* planes;   // popcount only: (n, in / 32, 8) bit planes of q
  int* sumq;          // popcount only: (n) sum of q
  float* scale;       // popcount only: (n) per-token scale s
};

template <typename T>
struct LbParams {
  const T* x; int64_t ldx;
  const T* bias;
  T* y; int64_t ldy;
  int n, in, out, nterms;
  int max_ldu;  // the largest ldu of the terms (stage 2's lane groups)
  LbTerm<T> terms[FK_MAX_TERMS];
};

__device__ __forceinline__ uint32_t word_of(const uint4& w, int q) {
  return q == 0 ? w.x : q == 1 ? w.y : q == 2 ? w.z : w.w;
}

template <int NT>
struct SignTile {
  static constexpr int kRows = tiles::sign_rows(NT);
  static constexpr int kUnroll = tiles::sign_unroll(NT);  // stage 1: chunks loaded together
  static constexpr int kQTrips = tiles::sign_q_trips(NT);
};

// The signs of 8 columns (bits of one byte, bit e = column e, 1 = +1) times the row's multiplier
// m (1.0f in stage 1, h[o] in stage 2) as floats +-m: the sign bit of m flipped where the sign is
// -1, built once per row and column (a shift and a LOP3); one FFMA per token then applies it.
__device__ __forceinline__ void signs8(uint32_t bits, float m, float (&s)[8]) {
  const uint32_t mb = __float_as_uint(m);
#pragma unroll
  for (int e = 0; e < 8; ++e) s[e] = __uint_as_float(mb ^ ((~bits << (31 - e)) & 0x80000000u));
}

// The 4 sign words of chunk w4 (columns 128 w4 ..) of kRows rows r0.. (rows past R repeat row
// R - 1; zeros when w4 is past the row's `chunks`).
template <int kRows>
__device__ __forceinline__ void load_words(uint4 (&wv)[kRows], const int32_t* __restrict__ words,
                                           int64_t ldw, int r0, int R, int w4, int chunks) {
#pragma unroll
  for (int r = 0; r < kRows; ++r)
    wv[r] = w4 < chunks ? ld_weight16(words + min(r0 + r, R - 1) * ldw + w4 * 4)
                        : make_uint4(0, 0, 0, 0);
}

// acc[r][t] += m[r] * sum over the 128 columns c0.. of sign(W[r, c]) * in[t, c] (* scale[c]).
template <typename In, typename S, bool kScale, int NT, int kRows>
__device__ __forceinline__ void sign_chunk(float (&acc)[kRows][NT], const uint4 (&wv)[kRows],
                                           const float (&m)[kRows], int c0, const In* in,
                                           int64_t ldin, const S* __restrict__ scale, int n) {
  constexpr int kTB = NT < kTokenBlock ? NT : kTokenBlock;
  // The 4 words of the chunk: unrolled only for one token, where the body stays small (with 4
  // or 16 tokens it would be 10k to 40k instructions, beyond the instruction cache).
#pragma unroll(SignTile<NT>::kQTrips == 1 ? 4 : 1)
  for (int q = 0; q < 4; ++q) {
#pragma unroll
    for (int b = 0; b < 4; ++b) {
      const int c = c0 + q * 32 + b * 8;
      float sg[kRows][8];
#pragma unroll
      for (int r = 0; r < kRows; ++r) signs8((word_of(wv[r], q) >> (8 * b)) & 0xffu, m[r], sg[r]);
      float sc[8];
      if (kScale) load_act8(scale + c, sc);
#pragma unroll
      for (int tb = 0; tb < NT; tb += kTB) {
        if (tb >= n) break;  // warp-uniform
#pragma unroll
        for (int t = tb; t < tb + kTB; ++t) {
          float xs[8];
          load_act8(in + token_row(t, n) * ldin + c, xs);
          if (kScale) {
#pragma unroll
            for (int e = 0; e < 8; ++e) xs[e] *= sc[e];
          }
#pragma unroll
          for (int r = 0; r < kRows; ++r)
#pragma unroll
            for (int e = 0; e < 8; ++e) acc[r][t] = fmaf(sg[r][e], xs[e], acc[r][t]);
        }
      }
    }
  }
}

// Stage-1 epilogue: a[t, j] = l[j] * value, 0 for the padding rows j >= rank.
template <typename T>
struct ToA {
  float* a; int64_t ld; int rank; int rpad; const T* l;
  __device__ __forceinline__ void operator()(int j, int t, float v) const {
    if (j < rpad) a[t * ld + j] = j < rank ? ld_scale(l + j) * v : 0.f;
  }
};

// Stage 1 spreads the rows of all terms over the grid at once: its work items are numbered
// term-major (term 0's items, then term 1's, ...), so two terms give twice the warps a term alone
// would (the reduction axis `in` is long, the rows few: r per term).
template <typename T>
__device__ __forceinline__ int stage1_term(const LbParams<T>& p, int rows_per_item, int& item) {
  int i = 0;
  for (; i < p.nterms - 1; ++i) {
    const int items_i = (32 * p.terms[i].ldu + rows_per_item - 1) / rows_per_item;
    if (item < items_i) break;
    item -= items_i;
  }
  return i;
}
template <typename T>
__host__ __device__ __forceinline__ int stage1_rows(const LbParams<T>& p) {
  int rows = 0;
  for (int i = 0; i < p.nterms; ++i) rows += 32 * p.terms[i].ldu;
  return rows;
}
template <typename T>
__host__ __device__ __forceinline__ int stage1_items(const LbParams<T>& p, int rows_per_item) {
  int items = 0;
  for (int i = 0; i < p.nterms; ++i)
    items += (32 * p.terms[i].ldu + rows_per_item - 1) / rows_per_item;
  return items;
}

// Stage 1, exact path, all terms: rows j < rpad of V (zeros past rank), reduction over in, the
// words of kUnroll chunks of each row loaded before the first is used.
template <typename T, int NT>
__device__ void littlebit_stage1_exact(const LbParams<T>& p) {
  constexpr int kRows = SignTile<NT>::kRows, kUnroll = SignTile<NT>::kUnroll;
  const Grid grid;
  const int chunks = p.in / 128;
  const RowGroups rg(chunks, stage1_rows(p), kRows);
  const int rows_per_item = rg.groups * kRows;
  const int items = stage1_items(p, rows_per_item);
  for (int it = grid.warp; it < items; it += grid.nwarps) {
    int item = it;
    const LbTerm<T>& tm = p.terms[stage1_term(p, rows_per_item, item)];
    const int r0 = item * rows_per_item + rg.grp * kRows;
    const int rpad = 32 * tm.ldu;
    float acc[kRows][NT];
#pragma unroll
    for (int r = 0; r < kRows; ++r)
#pragma unroll
      for (int t = 0; t < NT; ++t) acc[r][t] = 0.f;
    if (r0 < tm.rank) {  // group-uniform; the padding rows only store zeros
      float one[kRows];
#pragma unroll
      for (int r = 0; r < kRows; ++r) one[r] = 1.f;
      for (int w0 = rg.li; w0 < chunks; w0 += rg.L * kUnroll) {
        uint4 wv[kUnroll][kRows];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u)
          load_words(wv[u], tm.v, p.in / 32, r0, tm.rank, w0 + u * rg.L, chunks);
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          const int w4 = w0 + u * rg.L;
          if (w4 >= chunks) break;  // only at the tail of the row
          sign_chunk<T, T, true, NT, kRows>(acc, wv[u], one, w4 * 128, p.x, p.ldx, tm.g, p.n);
        }
      }
    }
    group_reduce_store<kRows, NT>(acc, ToA<T>{tm.a, rpad, tm.rank, rpad, tm.l}, r0, p.n, rg);
  }
}

// Stage 2 (both paths): y = sum_t h_t * (a_t @ sign(U_t).T) + bias. The reduction axis rpad is
// short (a few chunks per row; the lane groups make a lane hold one or two chunks of a row), so
// the loop runs over the terms: the chunk of the next term is loaded before the current one is
// used, and the terms' loads overlap instead of paying one memory latency each. Each lane scales
// the signs of row o by h_t[o] (signs8), so the terms add into one sum per row and token and one
// group reduction serves all terms.
template <typename T, int NT>
__device__ void littlebit_stage2(const LbParams<T>& p) {
  constexpr int kRows = SignTile<NT>::kRows;
  const Grid grid;
  const int max_chunks = p.max_ldu / 4;
  const RowGroups rg(max_chunks, p.out, kRows);
  const int rows_per_item = rg.groups * kRows;
  const int items = (p.out + rows_per_item - 1) / rows_per_item;
  for (int item = grid.warp; item < items; item += grid.nwarps) {
    const int r0 = item * rows_per_item + rg.grp * kRows;
    float total[kRows][NT];
#pragma unroll
    for (int r = 0; r < kRows; ++r)
#pragma unroll
      for (int t = 0; t < NT; ++t) total[r][t] = 0.f;
    for (int w4 = rg.li; w4 - rg.li < max_chunks; w4 += rg.L) {  // passes: at most 2
      uint4 next[kRows];
      load_words(next, p.terms[0].u, p.terms[0].ldu, r0, p.out, w4, p.terms[0].ldu / 4);
      for (int i = 0; i < p.nterms; ++i) {
        const LbTerm<T>& tm = p.terms[i];
        uint4 wv[kRows];
#pragma unroll
        for (int r = 0; r < kRows; ++r) wv[r] = next[r];
        if (i + 1 < p.nterms)
          load_words(next, p.terms[i + 1].u, p.terms[i + 1].ldu, r0, p.out, w4,
                     p.terms[i + 1].ldu / 4);
        if (w4 >= tm.ldu / 4) continue;  // this term's rows are shorter
        float hv[kRows];
#pragma unroll
        for (int r = 0; r < kRows; ++r) hv[r] = ld_scale(tm.h + min(r0 + r, p.out - 1));
        sign_chunk<float, float, false, NT, kRows>(total, wv, hv, w4 * 128, tm.a, 32 * tm.ldu,
                                                   static_cast<const float*>(nullptr), p.n);
      }
    }
    const ToOutput<T> epi{p.y, p.ldy, p.bias, p.out};
    group_reduce_store<kRows, NT>(total, epi, r0, p.n, rg);
  }
}

// --- host side: argument checks and the workspace layout ----------------------------------
// Per term: a (n, rpad) fp32; popcount adds planes (n, in / 32, 8) uint32, sumq (n) int32 and
// scale (n) fp32. Every piece starts on a 256-byte boundary.
inline size_t littlebit_workspace(int64_t n, int64_t in, int nterms, const fk_littlebit_term* terms,
                                  bool popcount, size_t* offsets /* 4 per term, or null */) {
  size_t off = 0;
  for (int i = 0; i < nterms; ++i) {
    const size_t pieces[4] = {
        sizeof(float) * n * 32 * terms[i].ldu,
        popcount ? sizeof(uint32_t) * n * (in / 32) * 8 : 0,
        popcount ? sizeof(int) * n : 0,
        popcount ? sizeof(float) * n : 0};
    for (int k = 0; k < 4; ++k) {
      if (offsets) offsets[4 * i + k] = off;
      off += round_up(pieces[k], 256);
    }
  }
  return off;
}

template <typename T>
fk_status littlebit_params(const char* op, fk_dtype dtype, int64_t n, int64_t in, int64_t out,
                           const void* x, int64_t ldx, int nterms, const fk_littlebit_term* terms,
                           const void* bias, void* y, int64_t ldy, void* workspace,
                           size_t workspace_bytes, bool popcount, LbParams<T>* p) {
  FK_CHECK(check_io(op, dtype, n, in, out, x, ldx, y, ldy));
  if (in % 128 != 0)
    return fail(FK_ERROR_UNSUPPORTED, "%s: in = %lld must be a multiple of 128 (16-byte loads of "
                "the sign words of V)", op, (long long)in);
  if (nterms < 1 || nterms > FK_MAX_TERMS || !terms)
    return fail(nterms > FK_MAX_TERMS ? FK_ERROR_UNSUPPORTED : FK_ERROR_INVALID_VALUE,
                "%s: nterms = %d, expected 1..%d", op, nterms, FK_MAX_TERMS);
  for (int i = 0; i < nterms; ++i) {
    const fk_littlebit_term& t = terms[i];
    if (t.rank <= 0 || t.ldu <= 0 || t.ldu % 4 != 0 || 32 * t.ldu < t.rank || t.rank > (1 << 24))
      return fail(FK_ERROR_INVALID_VALUE, "%s: term %d: rank = %lld with ldu = %lld words; ldu "
                  "must be 4 * ceil(rank / 128)", op, i, (long long)t.rank, (long long)t.ldu);
    if (n == 0) continue;
    FK_CHECK(check_factor(op, "U words", t.u_words));
    FK_CHECK(check_factor(op, "V words", t.v_words));
    FK_CHECK(check_factor(op, "g", t.g));
    if (!t.h || !t.l) return fail(FK_ERROR_INVALID_VALUE, "%s: term %d: h and l must not be null", op, i);
  }
  if (n == 0) return FK_SUCCESS;
  size_t offsets[4 * FK_MAX_TERMS];
  const size_t need = littlebit_workspace(n, in, nterms, terms, popcount, offsets);
  FK_CHECK(check_workspace(op, workspace, workspace_bytes, need));
  char* ws = static_cast<char*>(workspace);
  *p = LbParams<T>{};
  p->x = (const T*)x; p->ldx = ldx; p->bias = (const T*)bias; p->y = (T*)y; p->ldy = ldy;
  p->n = (int)n; p->in = (int)in; p->out = (int)out; p->nterms = nterms;
  p->max_ldu = 0;
  for (int i = 0; i < nterms; ++i) {
    const fk_littlebit_term& t = terms[i];
    p->terms[i] = LbTerm<T>{t.u_words, t.v_words, (const T*)t.h, (const T*)t.l, (const T*)t.g,
                            (int)t.rank, (int)t.ldu, (float*)(ws + offsets[4 * i]),
                            (uint32_t*)(ws + offsets[4 * i + 1]), (int*)(ws + offsets[4 * i + 2]),
                            (float*)(ws + offsets[4 * i + 3])};
    p->max_ldu = p->max_ldu > (int)t.ldu ? p->max_ldu : (int)t.ldu;
  }
  return FK_SUCCESS;
}

// Warp items of the largest stage (sizes the persistent grid; must match the device loops).
template <int NT, typename T>
int64_t littlebit_items(const LbParams<T>& p, int stage1_k_rows = SignTile<NT>::kRows) {
  const int64_t items = stage_items(p.out, p.max_ldu / 4, SignTile<NT>::kRows);
  // Stage 1: the items of all terms together, lane groups as the device picks them.
  const int lanes = lanes_per_row(p.in / 128, stage1_rows(p), stage1_k_rows);
  const int64_t s1 = stage1_items(p, (32 / lanes) * stage1_k_rows);
  return items > s1 ? items : s1;
}

}  // namespace fk
