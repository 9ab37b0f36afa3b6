/* factorkern C API: CUDA kernels for structured-factorized linear layers.
 *
 * Every op computes y = x @ W.T (+ bias) like F.linear from the factors of W, for a small number
 * of tokens (decode: N <= FK_MAX_TOKENS). x is (N, in) row-major with row stride ldx (elements),
 * y is (N, out) with row stride ldy; all factor tensors are contiguous in the layouts of
 * docs/formats.md (Sparse24 values/meta, SignBits words, BlockDiag blocks). Pointers are
 * device pointers; every call is asynchronous on `stream` and needs a caller-owned device
 * workspace of at least the size the matching *_workspace_size function returns.
 *
 * Each function returns a status; on failure fk_last_error() (thread-local) says why in words.
 * No function touches the GPU before it is called with a GPU pointer, and none synchronizes.
 */
#ifndef FACTORKERN_H_
#define FACTORKERN_H_

#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define FK_API __declspec(dllexport)
#else
#define FK_API __attribute__((visibility("default")))
#endif

#define FK_MAX_TOKENS 16   /* decode kernels: N <= 16 tokens per call */
#define FK_MAX_TERMS 4     /* LittleBit: at most 4 terms (the paper uses 2: main + residual) */

typedef enum {
  FK_SUCCESS = 0,
  FK_ERROR_INVALID_VALUE = 1, /* a null pointer, a negative or inconsistent size */
  FK_ERROR_UNSUPPORTED = 2,   /* valid call the kernels do not take (dtype, alignment, N > 16) */
  FK_ERROR_CUDA = 3,          /* the CUDA runtime failed (no device, launch error, ...) */
  FK_ERROR_WORKSPACE = 4      /* workspace missing or smaller than *_workspace_size */
} fk_status;

typedef enum { FK_FLOAT16 = 0, FK_BFLOAT16 = 1 } fk_dtype;

FK_API const char* fk_status_string(fk_status status);
/* Message of the last failing call on this thread ("" if none). */
FK_API const char* fk_last_error(void);
/* Compile-time targets of this build, e.g. "sm_80 sm_90a". */
FK_API const char* fk_build_info(void);

/* y = (x @ S.T) @ D.T + bias.  S (k, in) 2:4 along in: s_values (k, in/2), s_meta int16
 * (k, in/16); D (out, k). Needs in % 128 == 0, k % 8 == 0. */
FK_API size_t fk_dense_sparse_mm_workspace_size(int64_t n, int64_t in, int64_t k, int64_t out);
FK_API fk_status fk_dense_sparse_mm(fk_dtype dtype, int64_t n, int64_t in, int64_t k, int64_t out,
                                    const void* x, int64_t ldx, const void* d,
                                    const void* s_values, const int16_t* s_meta, const void* bias,
                                    void* y, int64_t ldy, void* workspace, size_t workspace_bytes,
                                    cudaStream_t stream);

/* y = (x @ D.T) @ S.T + bias.  D (k, in); S (out, k) 2:4 along k: s_values (out, k/2), s_meta
 * int16 (out, k/16). Needs in % 8 == 0, k % 128 == 0. */
FK_API size_t fk_sparse_dense_mm_workspace_size(int64_t n, int64_t in, int64_t k, int64_t out);
FK_API fk_status fk_sparse_dense_mm(fk_dtype dtype, int64_t n, int64_t in, int64_t k, int64_t out,
                                    const void* x, int64_t ldx, const void* s_values,
                                    const int16_t* s_meta, const void* d, const void* bias,
                                    void* y, int64_t ldy, void* workspace, size_t workspace_bytes,
                                    cudaStream_t stream);

/* y = ((x @ B.T) @ S.T) @ A.T + bias (ARMOR). A blocks (out/block_a, block_a, block_a), S (out, in)
 * 2:4 along in, B blocks (in/block_b, block_b, block_b). Needs in % 128 == 0, block sizes % 8 == 0. */
FK_API size_t fk_armor_mm_workspace_size(int64_t n, int64_t in, int64_t out);
FK_API fk_status fk_armor_mm(fk_dtype dtype, int64_t n, int64_t in, int64_t out, const void* x,
                             int64_t ldx, const void* a_blocks, int64_t block_a,
                             const void* s_values, const int16_t* s_meta, const void* b_blocks,
                             int64_t block_b, const void* bias, void* y, int64_t ldy,
                             void* workspace, size_t workspace_bytes, cudaStream_t stream);

/* One LittleBit term: W_t = diag(h) sign(U) diag(l) sign(V).T diag(g).
 * u_words int32 (out, ldu) = SignBits of U (out, rank) with each row padded with zero words to
 * ldu = 4 * ceil(rank / 128) words; v_words int32 (rank, in / 32) = SignBits of V.T; h (out),
 * l (rank), g (in) in the op's dtype. */
typedef struct {
  const int32_t* u_words;
  const int32_t* v_words;
  const void* h;
  const void* l;
  const void* g;
  int64_t rank;
  int64_t ldu;
} fk_littlebit_term;

/* Exact path: signs applied exactly, fp32 accumulation. Needs in % 128 == 0. */
FK_API size_t fk_littlebit_mm_workspace_size(int64_t n, int64_t in, int nterms,
                                             const fk_littlebit_term* terms);
FK_API fk_status fk_littlebit_mm(fk_dtype dtype, int64_t n, int64_t in, int64_t out,
                                 const void* x, int64_t ldx, int nterms,
                                 const fk_littlebit_term* terms, const void* bias, void* y,
                                 int64_t ldy, void* workspace, size_t workspace_bytes,
                                 cudaStream_t stream);

/* Popcount path (opt-in, changes the numbers): per term, x * g is quantized per token to int8,
 * q = clamp(rint((x * g) / s), -127, 127) with s = max|x * g| / 127 (s = 1 for an all-zero
 * token), rint = round half to even; z = q @ sign(V).T in exact int32 from 8 bit planes with
 * popcount; y = sum_t s * h * ((l * z) @ sign(U).T) + bias with the second product in fp32. */
FK_API size_t fk_littlebit_popcount_mm_workspace_size(int64_t n, int64_t in, int nterms,
                                                      const fk_littlebit_term* terms);
FK_API fk_status fk_littlebit_popcount_mm(fk_dtype dtype, int64_t n, int64_t in, int64_t out,
                                          const void* x, int64_t ldx, int nterms,
                                          const fk_littlebit_term* terms, const void* bias,
                                          void* y, int64_t ldy, void* workspace,
                                          size_t workspace_bytes, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif /* FACTORKERN_H_ */
