// LittleBit popcount kernel (opt-in: it quantizes the activations, see docs/ops.md (littlebit_mm,
// quantize_activations) and factorkern/reference/littlebit_quant.py for the math it must match).
//
// One persistent cooperative launch, three stages split by grid barriers:
//   stage 0 (quantize, one CTA per (term, token)):  xg = x * g_t in fp32; s = max|xg| / 127 (1 for
//       an all-zero token); q = clamp(rint(xg / s), -127, 127) (rint: round half to even), stored
//       as 8 bit planes of the two's complement byte (one __ballot_sync per plane and 32
//       columns), plus sum(q) and s.
//   stage 1 (per term, rows of V):  z[n, j] = sum_c sign(V[j, c]) q[n, c]
//       = 2 * sum_k c_k popc(P_k[n] & V[j]) - sum_c q[n, c],  c_k = 2^k (k < 7), c_7 = -128,
//       exact in int32 (|z| <= 127 in); a[n, j] = s[n] * (l[j] * z) in fp32.
//   stage 2 (shared with the exact path):  y = sum_t h_t * (a_t @ sign(U_t).T) + bias.
// Per 32 columns and token: 8 LOP3 + 8 POPC against 32 FADDs in the exact path.
// b1 tensor cores (mma.sync .b1 .and.popc) are not used: on Hopper they are the legacy Ampere
// path (wgmma has no 1-bit kinds) and must be measured first.
#include <cooperative_groups.h>

#include "littlebit.cuh"

namespace fk {
namespace {

// Stage 0, one CTA per (term, token). Each thread takes 8 consecutive columns at a time (16-byte
// loads of x and g). A token row of x * g holding a NaN or an infinity gets the scale s = NaN:
// every a[t, j] = s * (l[j] * z) of that token and term is then NaN, and so is its whole output
// row, as the float product would be (the reference, factorkern.reference.littlebit_quant,
// defines this). Without the check max|x * g| would skip the NaN and the row would come out
// finite.
template <typename T>
__device__ void quantize_tokens(const LbParams<T>& p) {
  __shared__ float red_f[kWarpsPerCta];
  __shared__ int red_i[kWarpsPerCta];
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int nw = p.in / 32;
  constexpr int kCols = 8 * kThreads;  // columns per pass of the CTA
  for (int item = blockIdx.x; item < p.nterms * p.n; item += gridDim.x) {
    const LbTerm<T>& tm = p.terms[item / p.n];
    const int tok = item % p.n;
    const T* xr = p.x + tok * p.ldx;
    float m = 0.f;
    bool finite = true;
    for (int c = 8 * threadIdx.x; c < p.in; c += kCols) {
      float xs[8], gs[8];
      load_act8(xr + c, xs);
      load_act8(tm.g + c, gs);
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        const float xg = xs[e] * gs[e];
        finite = finite && fabsf(xg) <= 3.402823466e38f;  // false for NaN and +-inf
        m = fmaxf(m, fabsf(xg));
      }
    }
    m = warp_max(m);
    if (lane == 0) red_f[warp] = m;
    const bool all_finite = __syncthreads_and(finite);  // also orders red_f
    float amax = 0.f;
#pragma unroll
    for (int w = 0; w < kWarpsPerCta; ++w) amax = fmaxf(amax, red_f[w]);
    const float s = !all_finite ? __int_as_float(0x7fc00000) : amax > 0.f ? amax / 127.f : 1.f;
    int sq = 0;
    // Warp-uniform bound (the shuffles below need the whole warp): in % 128 == 0 leaves a warp's
    // last 256 columns partly past `in`; those lanes (whole quads, in % 32 == 0) add nothing.
    for (int base = 256 * warp; base < p.in; base += kCols) {
      const int c = base + 8 * lane;
      const bool valid = c < p.in;
      float xs[8] = {}, gs[8] = {};
      if (valid) {
        load_act8(xr + c, xs);
        load_act8(tm.g + c, gs);
      }
      // Byte k of planes[k / 4] = bit k of the two's complement q of the 8 columns (bit e =
      // column c + e).
      uint32_t planes[2] = {0u, 0u};
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        const int q = max(-127, min(127, __float2int_rn(xs[e] * gs[e] / s)));
        sq += q;
        const uint32_t byte = static_cast<uint32_t>(q) & 0xffu;
#pragma unroll
        for (int k = 0; k < 8; ++k) planes[k / 4] |= ((byte >> k) & 1u) << (8 * (k % 4) + e);
      }
      // The 4 lanes of a quad hold the 32 columns of one sign word: lane i of the quad gathers
      // byte k of each quad-mate for planes 2i and 2i + 1 and stores those two plane words.
      const int qi = lane & 3;
      uint32_t w0 = 0u, w1 = 0u;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const uint32_t lo = __shfl_sync(0xffffffffu, planes[0], (lane & ~3) | j);
        const uint32_t hi = __shfl_sync(0xffffffffu, planes[1], (lane & ~3) | j);
        const uint32_t src = qi < 2 ? lo : hi;  // planes 2qi, 2qi+1 live in word qi / 2
        const int k0 = 2 * qi;
        w0 |= ((src >> (8 * (k0 % 4))) & 0xffu) << (8 * j);
        w1 |= ((src >> (8 * ((k0 + 1) % 4))) & 0xffu) << (8 * j);
      }
      if (valid)
        *reinterpret_cast<uint2*>(tm.planes + ((size_t)tok * nw + c / 32) * 8 + 2 * qi) =
            make_uint2(w0, w1);
    }
    sq = warp_sum(sq);
    if (lane == 0) red_i[warp] = sq;
    __syncthreads();
    if (threadIdx.x == 0) {
      int total = 0;
#pragma unroll
      for (int w = 0; w < kWarpsPerCta; ++w) total += red_i[w];
      tm.sumq[tok] = total;
      tm.scale[tok] = s;
    }
    __syncthreads();  // red_f / red_i are reused by the next item
  }
}

__device__ __forceinline__ int plane_dot(const uint4& p0, const uint4& p1, uint32_t w) {
  return __popc(p0.x & w) + 2 * __popc(p0.y & w) + 4 * __popc(p0.z & w) + 8 * __popc(p0.w & w) +
         16 * __popc(p1.x & w) + 32 * __popc(p1.y & w) + 64 * __popc(p1.z & w) -
         128 * __popc(p1.w & w);
}

// Epilogue: a[t, j] = s[t] * (l[j] * z), z = 2 * dot - sum(q) (exact: |z| <= 127 in < 2^24).
template <typename T>
struct ToAPopcount {
  const LbTerm<T>* tm;
  int rpad;
  __device__ __forceinline__ void operator()(int j, int t, float dot) const {
    if (j >= rpad) return;
    const float z = static_cast<float>(2 * static_cast<int>(dot) - tm->sumq[t]);
    tm->a[t * rpad + j] = j < tm->rank ? tm->scale[t] * (ld_scale(tm->l + j) * z) : 0.f;
  }
};

template <int NT>
struct PopcountTile {
  static constexpr int kRows = tiles::popcount_rows(NT);
  static constexpr int kUnroll = tiles::popcount_unroll(NT);
};

// Stage 1, popcount path, all terms (items numbered term-major, as the exact stage 1): z[t, j] =
// sum_k c_k popc(P_k[t] & V[j]) per 32 columns. The int32 sums are carried in floats for the
// shared group reduction: exact, |partial| < 2^24.
template <typename T, int NT>
__device__ void littlebit_stage1_popcount(const LbParams<T>& p) {
  constexpr int kRows = PopcountTile<NT>::kRows, kUnroll = PopcountTile<NT>::kUnroll;
  constexpr int kTB = NT < kTokenBlock ? NT : kTokenBlock;
  const Grid grid;
  const int nw = p.in / 32;
  const RowGroups rg(nw / 4, stage1_rows(p), kRows);
  const int rows_per_item = rg.groups * kRows;
  const int items = stage1_items(p, rows_per_item);
  for (int it = grid.warp; it < items; it += grid.nwarps) {
    int item = it;
    const LbTerm<T>& tm = p.terms[stage1_term(p, rows_per_item, item)];
    const int rpad = 32 * tm.ldu;
    const int r0 = item * rows_per_item + rg.grp * kRows;
    int acc[kRows][NT];
#pragma unroll
    for (int r = 0; r < kRows; ++r)
#pragma unroll
      for (int t = 0; t < NT; ++t) acc[r][t] = 0;
    if (r0 < tm.rank) {  // group-uniform; the padding rows only store zeros
      const int chunks = nw / 4;
      for (int w0 = rg.li; w0 < chunks; w0 += rg.L * kUnroll) {
        // The words of kUnroll chunks are loaded before the first is used (as the exact path).
        uint4 wv[kUnroll][kRows];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u)
          load_words(wv[u], tm.v, nw, r0, tm.rank, w0 + u * rg.L, chunks);
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          const int w4 = w0 + u * rg.L;
          if (w4 >= chunks) break;  // only at the tail of the row
          // The 4 words: unrolled only for one token (with more, every plane load of the chunk
          // would be hoisted: 8 registers per word and token).
#pragma unroll(tiles::popcount_q_trips(NT) == 1 ? 4 : 1)
          for (int q = 0; q < 4; ++q) {
#pragma unroll
            for (int tb = 0; tb < NT; tb += kTB) {
              if (tb >= p.n) break;  // warp-uniform
#pragma unroll
              for (int t = tb; t < tb + kTB; ++t) {
                // The planes were written in stage 0 of this launch: coherent loads.
                const uint32_t* pl =
                    tm.planes + ((size_t)token_row(t, p.n) * nw + w4 * 4 + q) * 8;
                const uint4 p0 = ld_work16u(pl), p1 = ld_work16u(pl + 4);
#pragma unroll
                for (int r = 0; r < kRows; ++r)
                  acc[r][t] += plane_dot(p0, p1, word_of(wv[u][r], q));
              }
            }
          }
        }
      }
    }
    float accf[kRows][NT];
#pragma unroll
    for (int r = 0; r < kRows; ++r)
#pragma unroll
      for (int t = 0; t < NT; ++t) accf[r][t] = static_cast<float>(acc[r][t]);
    group_reduce_store<kRows, NT>(accf, ToAPopcount<T>{&tm, rpad}, r0, p.n, rg);
  }
}

template <typename T, int NT>
__global__ void __launch_bounds__(kThreads, 1) littlebit_popcount_kernel(LbParams<T> p) {
  auto grid = cooperative_groups::this_grid();
  quantize_tokens<T>(p);
  grid.sync();
  littlebit_stage1_popcount<T, NT>(p);
  grid.sync();
  littlebit_stage2<T, NT>(p);
}

template <typename T>
fk_status run(const LbParams<T>& p, cudaStream_t stream) {
  return with_token_bucket(p.n, [&](auto nt) {
    constexpr int NT = decltype(nt)::value;
    int64_t items = littlebit_items<NT>(p, PopcountTile<NT>::kRows);
    const int64_t quant_items = (int64_t)p.nterms * p.n * kWarpsPerCta;  // one CTA each
    if (quant_items > items) items = quant_items;
    return launch_cooperative(littlebit_popcount_kernel<T, NT>, p, items, stream,
                              "littlebit_popcount_mm");
  });
}

}  // namespace
}  // namespace fk

extern "C" size_t fk_littlebit_popcount_mm_workspace_size(int64_t n, int64_t in, int nterms,
                                                          const fk_littlebit_term* terms) {
  if (n <= 0 || nterms < 1 || nterms > FK_MAX_TERMS || !terms) return 0;
  return fk::littlebit_workspace(n, in, nterms, terms, true, nullptr);
}

extern "C" fk_status fk_littlebit_popcount_mm(fk_dtype dtype, int64_t n, int64_t in, int64_t out,
                                              const void* x, int64_t ldx, int nterms,
                                              const fk_littlebit_term* terms, const void* bias,
                                              void* y, int64_t ldy, void* workspace,
                                              size_t workspace_bytes, cudaStream_t stream) {
  using namespace fk;
  const char* op = "fk_littlebit_popcount_mm";
  if (dtype == FK_BFLOAT16) {
    LbParams<__nv_bfloat16> p;
    FK_CHECK(littlebit_params(op, dtype, n, in, out, x, ldx, nterms, terms, bias, y, ldy,
                              workspace, workspace_bytes, true, &p));
    return n == 0 ? FK_SUCCESS : run(p, stream);
  }
  LbParams<__half> p;
  FK_CHECK(littlebit_params(op, dtype, n, in, out, x, ldx, nterms, terms, bias, y, ldy, workspace,
                            workspace_bytes, true, &p));
  return n == 0 ? FK_SUCCESS : run(p, stream);
}
