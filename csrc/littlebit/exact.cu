// LittleBit exact decode kernel (the path `auto` may use once proven): one persistent cooperative
// launch for both stages and all terms (main + residual), split by one grid barrier:
//   stage 1: a_t = l_t * ((x * g_t) @ sign(V_t))   for every term  -> workspace
//   stage 2: y = sum_t h_t * (a_t @ sign(U_t).T) + bias
// See littlebit.cuh for the loads and the FLOP/byte counts.
#include <cooperative_groups.h>

#include "littlebit.cuh"

namespace fk {
namespace {

template <typename T, int NT>
__global__ void __launch_bounds__(kThreads, 1) littlebit_exact_kernel(LbParams<T> p) {
  littlebit_stage1_exact<T, NT>(p);
  cooperative_groups::this_grid().sync();
  littlebit_stage2<T, NT>(p);
}

template <typename T>
fk_status run(const LbParams<T>& p, cudaStream_t stream) {
  return with_token_bucket(p.n, [&](auto nt) {
    constexpr int NT = decltype(nt)::value;
    return launch_cooperative(littlebit_exact_kernel<T, NT>, p, littlebit_items<NT>(p), stream,
                              "littlebit_mm");
  });
}

}  // namespace
}  // namespace fk

extern "C" size_t fk_littlebit_mm_workspace_size(int64_t n, int64_t in, int nterms,
                                                 const fk_littlebit_term* terms) {
  if (n <= 0 || nterms < 1 || nterms > FK_MAX_TERMS || !terms) return 0;
  return fk::littlebit_workspace(n, in, nterms, terms, false, nullptr);
}

extern "C" fk_status fk_littlebit_mm(fk_dtype dtype, int64_t n, int64_t in, int64_t out,
                                     const void* x, int64_t ldx, int nterms,
                                     const fk_littlebit_term* terms, const void* bias, void* y,
                                     int64_t ldy, void* workspace, size_t workspace_bytes,
                                     cudaStream_t stream) {
  using namespace fk;
  const char* op = "fk_littlebit_mm";
  if (dtype == FK_BFLOAT16) {
    LbParams<__nv_bfloat16> p;
    FK_CHECK(littlebit_params(op, dtype, n, in, out, x, ldx, nterms, terms, bias, y, ldy,
                              workspace, workspace_bytes, false, &p));
    return n == 0 ? FK_SUCCESS : run(p, stream);
  }
  LbParams<__half> p;
  FK_CHECK(littlebit_params(op, dtype, n, in, out, x, ldx, nterms, terms, bias, y, ldy, workspace,
                            workspace_bytes, false, &p));
  return n == 0 ? FK_SUCCESS : run(p, stream);
}
