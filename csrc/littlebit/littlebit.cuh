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
  LbTerm<T> terms[FK_MAX_TERMS];
};

__device__ __forceinline__ uint32_t word_of(const uint4& w, int q) {
  return q == 0 ? w.x : q == 1 ? w.y : q == 2 ? w.z : w.w;
}

// acc[r][t] += sum over 8 columns of sign(bit) * xs[e]; bits = 8 sign bits of row r.
template <int kRows>
__device__ __forceinline__ void sign_accumulate8(float (&acc)[kRows], const uint32_t (&bits)[kRows],
                                                 const float (&xs)[8]) {
#pragma unroll
  for (int r = 0; r < kRows; ++r)
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      // Flip the sign bit of x where the sign bit of W is 0 (-1): one LOP3 + FADD per column.
      const uint32_t flip = (~bits[r] << (31 - e)) & 0x80000000u;
      acc[r] += __uint_as_float(__float_as_uint(xs[e]) ^ flip);
    }
}

// Dot products of kRows sign rows (words, ldw words per row, C columns, C % 128 == 0) with the
// N token rows of `in` (optionally scaled per column by `scale`): acc[r][t], partial per lane.
template <typename In, typename S, bool kScale, int NT, int kRows>
__device__ __forceinline__ void sign_dot(float (&acc)[kRows][NT], const int32_t* __restrict__ words,
                                         int64_t ldw, int r0, int R, int C, const In* in,
                                         int64_t ldin, const S* __restrict__ scale, int n,
                                         int lane) {
  for (int w4 = lane; w4 < C / 128; w4 += kWarp) {
    uint4 wv[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r) wv[r] = ldg16(words + min(r0 + r, R - 1) * ldw + w4 * 4);
    // Not unrolled over the 4 words: the body (NT tokens x kRows rows x 8 columns, per byte) is
    // large already, and unrolling it 4x more only lengthens the build.
#pragma unroll 1
    for (int q = 0; q < 4; ++q) {
#pragma unroll
      for (int b = 0; b < 4; ++b) {
        const int c = w4 * 128 + q * 32 + b * 8;
        uint32_t bits[kRows];
#pragma unroll
        for (int r = 0; r < kRows; ++r) bits[r] = (word_of(wv[r], q) >> (8 * b)) & 0xffu;
        float sc[8];
        if (kScale) load8(scale + c, sc);
#pragma unroll
        for (int t = 0; t < NT; ++t) {
          float xs[8];
          load8(in + min(t, n - 1) * ldin + c, xs);
          if (kScale) {
#pragma unroll
            for (int e = 0; e < 8; ++e) xs[e] *= sc[e];
          }
          float part[kRows];
#pragma unroll
          for (int r = 0; r < kRows; ++r) part[r] = acc[r][t];
          sign_accumulate8<kRows>(part, bits, xs);
#pragma unroll
          for (int r = 0; r < kRows; ++r) acc[r][t] = part[r];
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
    if (j < rpad) a[t * ld + j] = j < rank ? to_f<T>(l[j]) * v : 0.f;
  }
};

// Stage 1, exact path, one term.
template <typename T, int NT>
__device__ void littlebit_stage1_exact(const LbParams<T>& p, const LbTerm<T>& tm) {
  constexpr int kRows = RowsPerWarp<NT>::value;
  const Grid grid;
  const int rpad = 32 * tm.ldu;
  const int items = (rpad + kRows - 1) / kRows;
  const ToA<T> epi{tm.a, rpad, tm.rank, rpad, tm.l};
  for (int item = grid.warp; item < items; item += grid.nwarps) {
    const int r0 = item * kRows;
    float acc[kRows][NT];
#pragma unroll
    for (int r = 0; r < kRows; ++r)
#pragma unroll
      for (int t = 0; t < NT; ++t) acc[r][t] = 0.f;
    if (r0 < tm.rank)
      sign_dot<T, T, true, NT, kRows>(acc, tm.v, p.in / 32, r0, tm.rank, p.in, p.x, p.ldx, tm.g,
                                      p.n, grid.lane);
    warp_reduce_store<kRows, NT>(acc, epi, r0, p.n, grid.lane);
  }
}

// Stage 2 (both paths): y = sum_t h_t * (a_t @ sign(U_t).T) + bias. Each lane scales its partial
// sums by h_t[o] before adding the terms, so one warp reduction serves all terms.
template <typename T, int NT>
__device__ void littlebit_stage2(const LbParams<T>& p) {
  constexpr int kRows = RowsPerWarp<NT>::value;
  const Grid grid;
  const int items = (p.out + kRows - 1) / kRows;
  for (int item = grid.warp; item < items; item += grid.nwarps) {
    const int r0 = item * kRows;
    float total[kRows][NT];
#pragma unroll
    for (int r = 0; r < kRows; ++r)
#pragma unroll
      for (int t = 0; t < NT; ++t) total[r][t] = 0.f;
    for (int i = 0; i < p.nterms; ++i) {
      const LbTerm<T>& tm = p.terms[i];
      const int rpad = 32 * tm.ldu;
      float acc[kRows][NT];
#pragma unroll
      for (int r = 0; r < kRows; ++r)
#pragma unroll
        for (int t = 0; t < NT; ++t) acc[r][t] = 0.f;
      sign_dot<float, float, false, NT, kRows>(acc, tm.u, tm.ldu, r0, p.out, rpad, tm.a, rpad,
                                               nullptr, p.n, grid.lane);
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        const float hv = to_f<T>(tm.h[min(r0 + r, p.out - 1)]);
#pragma unroll
        for (int t = 0; t < NT; ++t) total[r][t] = fmaf(hv, acc[r][t], total[r][t]);
      }
    }
    ToOutput<T> epi{p.y, p.ldy, p.bias, p.out};
    warp_reduce_store<kRows, NT>(total, epi, r0, p.n, grid.lane);
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
  for (int i = 0; i < nterms; ++i) {
    const fk_littlebit_term& t = terms[i];
    p->terms[i] = LbTerm<T>{t.u_words, t.v_words, (const T*)t.h, (const T*)t.l, (const T*)t.g,
                            (int)t.rank, (int)t.ldu, (float*)(ws + offsets[4 * i]),
                            (uint32_t*)(ws + offsets[4 * i + 1]), (int*)(ws + offsets[4 * i + 2]),
                            (float*)(ws + offsets[4 * i + 3])};
  }
  return FK_SUCCESS;
}

// Warp items of the largest stage (sizes the persistent grid).
template <typename T>
int64_t littlebit_items(const LbParams<T>& p, int rows_per_warp) {
  int64_t rows = p.out;
  for (int i = 0; i < p.nterms; ++i) rows = rows > 32 * p.terms[i].ldu ? rows : 32 * p.terms[i].ldu;
  return (rows + rows_per_warp - 1) / rows_per_warp;
}

}  // namespace fk
