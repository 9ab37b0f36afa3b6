// armor_mm decode kernel: y = ((x @ B.T) @ S.T) @ A.T + bias (ARMOR), A (out, out) and B (in, in)
// block-diagonal with square blocks, S (out, in) 2:4 along in.
//
// One persistent cooperative launch, three stages split by grid barriers (each stage reads whole
// rows of the previous one: u row segments of length in for S, v blocks for A):
//   stage 1 (B wrapper):  u = x @ B.T   -> workspace (N, in)   FLOPs 2 N in bB,  bytes 2 in bB
//   stage 2 (sparse):     v = u @ S.T   -> workspace (N, out)  FLOPs N out in,   bytes out in (1 + 1/8)
//   stage 3 (A wrapper):  y = v @ A.T + bias                   FLOPs 2 N out bA, bytes 2 out bA
// At block 128 and 4096 x 4096 the wrappers are 2 x 1 MiB against 18 MiB of S: the sparse stage
// sets the time.
#include <cooperative_groups.h>

#include "../common/launch.cuh"
#include "../common/stages.cuh"

namespace fk {
namespace {

template <typename T>
struct ArmorParams {
  const T* x; int64_t ldx;
  const T* a_blocks; int block_a;
  const T* s_values; const int16_t* s_meta;
  const T* b_blocks; int block_b;
  const T* bias;
  T* y; int64_t ldy;
  float* u;  // workspace (n, in)
  float* v;  // workspace (n, out)
  int n, in, out;
};

template <typename T, int NT>
__global__ void __launch_bounds__(kThreads, 1) armor_kernel(ArmorParams<T> p) {
  auto grid = cooperative_groups::this_grid();
  dense_rows<T, T, NT>(p.b_blocks, p.block_b, p.in, p.block_b, p.block_b, p.x, p.ldx, p.n,
                       ToWorkspace{p.u, p.in, p.in});
  grid.sync();
  sparse24_rows<T, float, NT>(p.s_values, p.s_meta, p.out, p.in, p.u, p.in, p.n,
                              ToWorkspace{p.v, p.out, p.out});
  grid.sync();
  dense_rows<T, float, NT>(p.a_blocks, p.block_a, p.out, p.block_a, p.block_a, p.v, p.out, p.n,
                           ToOutput<T>{p.y, p.ldy, p.bias, p.out});
}

template <typename T>
fk_status run(const ArmorParams<T>& p, cudaStream_t stream) {
  return with_token_bucket(p.n, [&](auto nt) {
    constexpr int NT = decltype(nt)::value;
    const int64_t items = std::max({dense_items<NT>(p.in, p.block_b),
                                    sparse24_items<NT>(p.out, p.in),
                                    dense_items<NT>(p.out, p.block_a)});
    return launch_cooperative(armor_kernel<T, NT>, p, items, stream, "armor_mm");
  });
}

size_t u_bytes(int64_t n, int64_t in) { return fk::round_up(sizeof(float) * n * in, 256); }

}  // namespace
}  // namespace fk

extern "C" size_t fk_armor_mm_workspace_size(int64_t n, int64_t in, int64_t out) {
  if (n <= 0 || in <= 0 || out <= 0) return 0;
  return fk::u_bytes(n, in) + fk::round_up(sizeof(float) * n * out, 256);
}

extern "C" fk_status fk_armor_mm(fk_dtype dtype, int64_t n, int64_t in, int64_t out,
                                 const void* x, int64_t ldx, const void* a_blocks,
                                 int64_t block_a, const void* s_values, const int16_t* s_meta,
                                 const void* b_blocks, int64_t block_b, const void* bias, void* y,
                                 int64_t ldy, void* workspace, size_t workspace_bytes,
                                 cudaStream_t stream) {
  using namespace fk;
  const char* op = "fk_armor_mm";
  FK_CHECK(check_io(op, dtype, n, in, out, x, ldx, y, ldy));
  if (in % 128 != 0)
    return fail(FK_ERROR_UNSUPPORTED, "%s: in = %lld must be a multiple of 128 (16-byte loads of "
                "the 2:4 values and metadata of S)", op, (long long)in);
  if (block_a <= 0 || block_b <= 0 || out % block_a != 0 || in % block_b != 0)
    return fail(FK_ERROR_INVALID_VALUE, "%s: block sizes must tile out and in (block_a = %lld, "
                "out = %lld, block_b = %lld, in = %lld)", op, (long long)block_a, (long long)out,
                (long long)block_b, (long long)in);
  if (block_a % 8 != 0 || block_b % 8 != 0)
    return fail(FK_ERROR_UNSUPPORTED, "%s: block sizes must be multiples of 8 (16-byte loads), got "
                "block_a = %lld, block_b = %lld", op, (long long)block_a, (long long)block_b);
  if (n == 0) return FK_SUCCESS;
  FK_CHECK(check_factor(op, "A.blocks", a_blocks));
  FK_CHECK(check_factor(op, "S.values", s_values));
  FK_CHECK(check_factor(op, "S.meta", s_meta));
  FK_CHECK(check_factor(op, "B.blocks", b_blocks));
  FK_CHECK(check_workspace(op, workspace, workspace_bytes, fk_armor_mm_workspace_size(n, in, out)));
  float* u = (float*)workspace;
  float* v = (float*)((char*)workspace + u_bytes(n, in));
  if (dtype == FK_FLOAT16) {
    ArmorParams<__half> p{(const __half*)x, ldx, (const __half*)a_blocks, (int)block_a,
                          (const __half*)s_values, s_meta, (const __half*)b_blocks, (int)block_b,
                          (const __half*)bias, (__half*)y, ldy, u, v, (int)n, (int)in, (int)out};
    return run(p, stream);
  }
  ArmorParams<__nv_bfloat16> p{
      (const __nv_bfloat16*)x, ldx, (const __nv_bfloat16*)a_blocks, (int)block_a,
      (const __nv_bfloat16*)s_values, s_meta, (const __nv_bfloat16*)b_blocks, (int)block_b,
      (const __nv_bfloat16*)bias, (__nv_bfloat16*)y, ldy, u, v, (int)n, (int)in, (int)out};
  return run(p, stream);
}
