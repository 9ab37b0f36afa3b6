// sparse_mm decode kernel: y = x @ S.T + bias, S (out, in) 2:4 along in (the plain 2:4 weight).
//
// One stage, the 2:4 row stage of the other kernels (dense_sparse's first stage) with the output
// epilogue:
//   y = x @ S.T + bias      FLOPs 2 N out in / 2,   bytes out in (1 + 1/8) + 2 N (in + out)
// Every output row is a full reduction over x and nothing else, so there is no grid barrier and
// no workspace: a plain launch of as many CTAs as the rows need (at least one per SM, so a small
// layer's work items spread over the SMs; see Grid in device.cuh). Tokens are the N side: every
// weight byte is loaded once (16-byte loads) and used for all N <= 16 tokens held in registers.
#include "../common/launch.cuh"
#include "../common/stages.cuh"

namespace fk {
namespace {

// The 2:4 stage's tile with this kernel's rows per lane group (tiles.h: sparse_mm_rows).
template <int NT>
struct SparseMmTile : Sparse24Tile<NT> {
  static constexpr int kRows = tiles::sparse_mm_rows(NT);
};

template <typename T>
struct SparseParams {
  const T* x; int64_t ldx;
  const T* s_values; const int16_t* s_meta;
  const T* bias;
  T* y; int64_t ldy;
  int n, in, out;
};

template <typename T, int NT>
__global__ void __launch_bounds__(kThreads, 1) sparse_mm_kernel(SparseParams<T> p) {
  sparse24_rows<T, T, NT, SparseMmTile<NT>>(p.s_values, p.s_meta, p.out, p.in, p.x, p.ldx, p.n,
                                            ToOutput<T>{p.y, p.ldy, p.bias, p.out});
}

template <typename T>
fk_status run(const SparseParams<T>& p, cudaStream_t stream) {
  return with_token_bucket(p.n, [&](auto nt) {
    constexpr int NT = decltype(nt)::value;
    const int64_t items = sparse24_items<NT, SparseMmTile<NT>>(p.out, p.in);
    return launch_grid(sparse_mm_kernel<T, NT>, p, items, stream, "sparse_mm");
  });
}

}  // namespace
}  // namespace fk

extern "C" fk_status fk_sparse_mm(fk_dtype dtype, int64_t n, int64_t in, int64_t out,
                                  const void* x, int64_t ldx, const void* s_values,
                                  const int16_t* s_meta, const void* bias, void* y, int64_t ldy,
                                  cudaStream_t stream) {
  using namespace fk;
  const char* op = "fk_sparse_mm";
  FK_CHECK(check_io(op, dtype, n, in, out, x, ldx, y, ldy));
  if (in % 128 != 0)
    return fail(FK_ERROR_UNSUPPORTED, "%s: in = %lld must be a multiple of 128 (16-byte loads of "
                "the 2:4 values and metadata of S)", op, (long long)in);
  if (n == 0) return FK_SUCCESS;
  FK_CHECK(check_factor(op, "S.values", s_values));
  FK_CHECK(check_factor(op, "S.meta", s_meta));
  if (dtype == FK_FLOAT16) {
    SparseParams<__half> p{(const __half*)x, ldx, (const __half*)s_values, s_meta,
                           (const __half*)bias, (__half*)y, ldy, (int)n, (int)in, (int)out};
    return run(p, stream);
  }
  SparseParams<__nv_bfloat16> p{(const __nv_bfloat16*)x, ldx, (const __nv_bfloat16*)s_values,
                                s_meta, (const __nv_bfloat16*)bias, (__nv_bfloat16*)y, ldy,
                                (int)n, (int)in, (int)out};
  return run(p, stream);
}
