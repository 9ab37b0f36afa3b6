// LittleBit popcount kernel (opt-in: it quantizes the activations, see DESIGN.md "LittleBit
// numerics" and factorkern/reference/littlebit_quant.py for the math it must match).
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

template <typename T>
__device__ void quantize_tokens(const LbParams<T>& p) {
  __shared__ float red_f[kWarpsPerCta];
  __shared__ int red_i[kWarpsPerCta];
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int nw = p.in / 32;
  for (int item = blockIdx.x; item < p.nterms * p.n; item += gridDim.x) {
    const LbTerm<T>& tm = p.terms[item / p.n];
    const int tok = item % p.n;
    const T* xr = p.x + tok * p.ldx;
    float m = 0.f;
    for (int c = threadIdx.x; c < p.in; c += kThreads)
      m = fmaxf(m, fabsf(to_f<T>(xr[c]) * to_f<T>(tm.g[c])));
    m = warp_max(m);
    if (lane == 0) red_f[warp] = m;
    __syncthreads();
    float amax = 0.f;
#pragma unroll
    for (int w = 0; w < kWarpsPerCta; ++w) amax = fmaxf(amax, red_f[w]);
    const float s = amax > 0.f ? amax / 127.f : 1.f;
    int sq = 0;
    for (int wd = warp; wd < nw; wd += kWarpsPerCta) {
      const int c = wd * 32 + lane;
      const float xg = to_f<T>(xr[c]) * to_f<T>(tm.g[c]);
      const int q = max(-127, min(127, __float2int_rn(xg / s)));
      sq += q;
      uint32_t mine = 0;
#pragma unroll
      for (int k = 0; k < 8; ++k) {
        const uint32_t plane = __ballot_sync(0xffffffffu, (q >> k) & 1);
        if (lane == k) mine = plane;
      }
      if (lane < 8) tm.planes[((size_t)tok * nw + wd) * 8 + lane] = mine;
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

template <typename T, int NT>
__device__ void littlebit_stage1_popcount(const LbParams<T>& p, const LbTerm<T>& tm) {
  constexpr int kRows = RowsPerWarp<NT>::value;
  const Grid grid;
  const int rpad = 32 * tm.ldu, nw = p.in / 32;
  const int items = (rpad + kRows - 1) / kRows;
  for (int item = grid.warp; item < items; item += grid.nwarps) {
    const int r0 = item * kRows;
    int acc[kRows][NT];
#pragma unroll
    for (int r = 0; r < kRows; ++r)
#pragma unroll
      for (int t = 0; t < NT; ++t) acc[r][t] = 0;
    if (r0 < tm.rank) {
      for (int w4 = grid.lane; w4 < nw / 4; w4 += kWarp) {
        uint4 wv[kRows];
#pragma unroll
        for (int r = 0; r < kRows; ++r)
          wv[r] = ldg16(tm.v + min(r0 + r, tm.rank - 1) * (int64_t)nw + w4 * 4);
#pragma unroll
        for (int q = 0; q < 4; ++q) {
#pragma unroll
          for (int t = 0; t < NT; ++t) {
            // Planes were written in stage 0 of this launch: coherent loads, not ldg.
            const uint4* pl = reinterpret_cast<const uint4*>(
                tm.planes + ((size_t)min(t, p.n - 1) * nw + w4 * 4 + q) * 8);
            const uint4 p0 = pl[0], p1 = pl[1];
#pragma unroll
            for (int r = 0; r < kRows; ++r) acc[r][t] += plane_dot(p0, p1, word_of(wv[r], q));
          }
        }
      }
    }
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
#pragma unroll
      for (int t = 0; t < NT; ++t) {
        const int dot = warp_sum(acc[r][t]);
        const int j = r0 + r;
        if (grid.lane == (r * NT + t) % kWarp && t < p.n && j < rpad) {
          const float z = static_cast<float>(2 * dot - tm.sumq[t]);  // exact: |z| < 2^24
          tm.a[t * rpad + j] = j < tm.rank ? tm.scale[t] * (to_f<T>(tm.l[j]) * z) : 0.f;
        }
      }
    }
  }
}

template <typename T, int NT>
__global__ void __launch_bounds__(kThreads, 1) littlebit_popcount_kernel(LbParams<T> p) {
  auto grid = cooperative_groups::this_grid();
  quantize_tokens<T>(p);
  grid.sync();
  for (int i = 0; i < p.nterms; ++i) littlebit_stage1_popcount<T, NT>(p, p.terms[i]);
  grid.sync();
  littlebit_stage2<T, NT>(p);
}

template <typename T>
fk_status run(const LbParams<T>& p, cudaStream_t stream) {
  return with_token_bucket(p.n, [&](auto nt) {
    constexpr int NT = decltype(nt)::value;
    int64_t items = littlebit_items(p, RowsPerWarp<NT>::value);
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
