// sparse_dense_mm decode kernel: y = (x @ D.T) @ S.T + bias, D (k, in) dense, S (out, k) 2:4
// along k.
//
// One persistent cooperative launch, two stages split by a grid barrier:
//   stage 1 (dense):   t = x @ D.T -> fp32 workspace (N, k)   FLOPs 2 N k in,  bytes 2 k in
//   stage 2 (sparse):  y = t @ S.T + bias                      FLOPs N out k,   bytes out k (1 + 1/8)
#include <cooperative_groups.h>

#include "../common/launch.cuh"
#include "../common/stages.cuh"

namespace fk {
namespace {

template <typename T>
struct SparseDenseParams {
  const T* x; int64_t ldx;
  const T* s_values; const int16_t* s_meta;
  const T* d;
  const T* bias;
  T* y; int64_t ldy;
  float* t;  // workspace (n, k)
  int n, in, k, out;
};

template <typename T, int NT>
__global__ void __launch_bounds__(kThreads, 1) sparse_dense_kernel(SparseDenseParams<T> p) {
  dense_rows<T, T, NT>(p.d, p.in, p.k, p.in, 0, p.x, p.ldx, p.n, ToWorkspace{p.t, p.k, p.k});
  cooperative_groups::this_grid().sync();
  sparse24_rows<T, float, NT>(p.s_values, p.s_meta, p.out, p.k, p.t, p.k, p.n,
                              ToOutput<T>{p.y, p.ldy, p.bias, p.out});
}

template <typename T>
fk_status run(const SparseDenseParams<T>& p, cudaStream_t stream) {
  return with_token_bucket(p.n, [&](auto nt) {
    constexpr int NT = decltype(nt)::value;
    const int64_t items = std::max(dense_items<NT>(p.k, p.in), sparse24_items<NT>(p.out, p.k));
    return launch_cooperative(sparse_dense_kernel<T, NT>, p, items, stream, "sparse_dense_mm");
  });
}

}  // namespace
}  // namespace fk

extern "C" size_t fk_sparse_dense_mm_workspace_size(int64_t n, int64_t in, int64_t k,
                                                    int64_t out) {
  (void)in; (void)out;
  return n > 0 && k > 0 ? fk::round_up(sizeof(float) * n * k, 256) : 0;
}

extern "C" fk_status fk_sparse_dense_mm(fk_dtype dtype, int64_t n, int64_t in, int64_t k,
                                        int64_t out, const void* x, int64_t ldx,
                                        const void* s_values, const int16_t* s_meta,
                                        const void* d, const void* bias, void* y, int64_t ldy,
                                        void* workspace, size_t workspace_bytes,
                                        cudaStream_t stream) {
  using namespace fk;
  const char* op = "fk_sparse_dense_mm";
  FK_CHECK(check_io(op, dtype, n, in, out, x, ldx, y, ldy));
  if (k <= 0 || k > INT32_MAX / 2) return fail(FK_ERROR_INVALID_VALUE, "%s: k = %lld", op, (long long)k);
  if (k % 128 != 0)
    return fail(FK_ERROR_UNSUPPORTED, "%s: k = %lld must be a multiple of 128 (16-byte loads of "
                "the 2:4 values and metadata of S)", op, (long long)k);
  if (in % 8 != 0)
    return fail(FK_ERROR_UNSUPPORTED, "%s: in = %lld must be a multiple of 8 (16-byte loads of D)",
                op, (long long)in);
  if (n == 0) return FK_SUCCESS;
  FK_CHECK(check_factor(op, "D", d));
  FK_CHECK(check_factor(op, "S.values", s_values));
  FK_CHECK(check_factor(op, "S.meta", s_meta));
  FK_CHECK(check_workspace(op, workspace, workspace_bytes,
                           fk_sparse_dense_mm_workspace_size(n, in, k, out)));
  if (dtype == FK_FLOAT16) {
    SparseDenseParams<__half> p{(const __half*)x, ldx, (const __half*)s_values, s_meta,
                                (const __half*)d, (const __half*)bias, (__half*)y, ldy,
                                (float*)workspace, (int)n, (int)in, (int)k, (int)out};
    return run(p, stream);
  }
  SparseDenseParams<__nv_bfloat16> p{
      (const __nv_bfloat16*)x, ldx, (const __nv_bfloat16*)s_values, s_meta,
      (const __nv_bfloat16*)d, (const __nv_bfloat16*)bias, (__nv_bfloat16*)y, ldy,
      (float*)workspace, (int)n, (int)in, (int)k, (int)out};
  return run(p, stream);
}
