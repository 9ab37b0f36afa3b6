// dense_sparse_mm decode kernel: y = (x @ S.T) @ D.T + bias, S (k, in) 2:4 along in, D (out, k).
//
// One persistent cooperative launch, two stages split by a grid barrier (stage 2 reads all of t):
//   stage 1 (sparse):  t = x @ S.T -> fp32 workspace (N, k)     FLOPs N k in,   bytes k in (1 + 1/8)
//   stage 2 (dense):   y = t @ D.T + bias                        FLOPs 2 N out k, bytes 2 out k
// Tokens are the N side: every weight byte is loaded once (16-byte loads) and used for all N <= 16
// tokens held in registers.
#include <cooperative_groups.h>

#include "../common/launch.cuh"
#include "../common/stages.cuh"

namespace fk {
namespace {

template <typename T>
struct DenseSparseParams {
  const T* x; int64_t ldx;
  const T* d;
  const T* s_values; const int16_t* s_meta;
  const T* bias;
  T* y; int64_t ldy;
  float* t;  // workspace (n, k)
  int n, in, k, out;
};

template <typename T, int NT>
__global__ void __launch_bounds__(kThreads, 1) dense_sparse_kernel(DenseSparseParams<T> p) {
  sparse24_rows<T, T, NT>(p.s_values, p.s_meta, p.k, p.in, p.x, p.ldx, p.n,
                          ToWorkspace{p.t, p.k, p.k});
  cooperative_groups::this_grid().sync();
  dense_rows<T, float, NT>(p.d, p.k, p.out, p.k, 0, p.t, p.k, p.n,
                           ToOutput<T>{p.y, p.ldy, p.bias, p.out});
}

template <typename T>
fk_status run(const DenseSparseParams<T>& p, cudaStream_t stream) {
  return with_token_bucket(p.n, [&](auto nt) {
    constexpr int NT = decltype(nt)::value;
    const int64_t items = std::max(sparse24_items<NT>(p.k, p.in), dense_items<NT>(p.out, p.k));
    return launch_cooperative(dense_sparse_kernel<T, NT>, p, items, stream, "dense_sparse_mm");
  });
}

}  // namespace
}  // namespace fk

extern "C" size_t fk_dense_sparse_mm_workspace_size(int64_t n, int64_t in, int64_t k,
                                                    int64_t out) {
  (void)in; (void)out;
  return n > 0 && k > 0 ? fk::round_up(sizeof(float) * n * k, 256) : 0;
}

extern "C" fk_status fk_dense_sparse_mm(fk_dtype dtype, int64_t n, int64_t in, int64_t k,
                                        int64_t out, const void* x, int64_t ldx, const void* d,
                                        const void* s_values, const int16_t* s_meta,
                                        const void* bias, void* y, int64_t ldy, void* workspace,
                                        size_t workspace_bytes, cudaStream_t stream) {
  using namespace fk;
  const char* op = "fk_dense_sparse_mm";
  FK_CHECK(check_io(op, dtype, n, in, out, x, ldx, y, ldy));
  if (k <= 0 || k > INT32_MAX / 2) return fail(FK_ERROR_INVALID_VALUE, "%s: k = %lld", op, (long long)k);
  if (in % 128 != 0)
    return fail(FK_ERROR_UNSUPPORTED, "%s: in = %lld must be a multiple of 128 (16-byte loads of "
                "the 2:4 values and metadata of S)", op, (long long)in);
  if (k % 8 != 0)
    return fail(FK_ERROR_UNSUPPORTED, "%s: k = %lld must be a multiple of 8 (16-byte loads of D)",
                op, (long long)k);
  if (n == 0) return FK_SUCCESS;
  FK_CHECK(check_factor(op, "D", d));
  FK_CHECK(check_factor(op, "S.values", s_values));
  FK_CHECK(check_factor(op, "S.meta", s_meta));
  FK_CHECK(check_workspace(op, workspace, workspace_bytes,
                           fk_dense_sparse_mm_workspace_size(n, in, k, out)));
  if (dtype == FK_FLOAT16) {
    DenseSparseParams<__half> p{(const __half*)x, ldx, (const __half*)d, (const __half*)s_values,
                                s_meta, (const __half*)bias, (__half*)y, ldy, (float*)workspace,
                                (int)n, (int)in, (int)k, (int)out};
    return run(p, stream);
  }
  DenseSparseParams<__nv_bfloat16> p{
      (const __nv_bfloat16*)x, ldx, (const __nv_bfloat16*)d, (const __nv_bfloat16*)s_values,
      s_meta, (const __nv_bfloat16*)bias, (__nv_bfloat16*)y, ldy, (float*)workspace,
      (int)n, (int)in, (int)k, (int)out};
  return run(p, stream);
}
