/* factorkern sm_90a 2:4 sparse GEMM (wgmma.mma_async.sp), C API. No torch headers.
 *
 *   y (n, m) = x (n, k) @ S.T (+ bias)                      armor == NULL
 *   y (n, m) = (x (n, k) @ S.T) @ A.T (+ bias)               armor != NULL, A = blockdiag of 128 x 128
 *
 * S (m, k) is 2:4 along k, given in the prepared layout of Sparse24.prepare("cuda_sm90")
 * (a_frag: (ceil(m/128)*2, kp/32, 128, 8) elements, e_frag: uint32 (ceil(m/128)*2, kp/32, 64),
 * kp = k rounded up to 64). armor: A's blocks in the prepared fragment layout
 * (m/128, 2, 8, 128, 8) elements, armor_block must be 128 (one output tile = one block).
 * x (n, ldx) and y (n, ldy) row-major; every pointer 16-byte aligned; k, m, ldx, ldy multiples
 * of 8. Asynchronous on `stream`; no workspace; never synchronizes.
 *
 * Status values match factorkern.h's fk_status (0 success, 1 invalid value, 2 unsupported,
 * 3 CUDA error); fk_sm90_last_error() gives the message of the last failure on this thread.
 */
#ifndef FK_SM90_SPARSE_H_
#define FK_SM90_SPARSE_H_

#include <stdint.h>
#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Exported from libfactorkern.so (built with -fvisibility=hidden). */
#if defined(_WIN32)
#define FK_SM90_API __declspec(dllexport)
#else
#define FK_SM90_API __attribute__((visibility("default")))
#endif

#define FK_SM90_SUCCESS 0
#define FK_SM90_ERROR_INVALID_VALUE 1
#define FK_SM90_ERROR_UNSUPPORTED 2
#define FK_SM90_ERROR_CUDA 3

/* dtype: 0 = float16, 1 = bfloat16 (factorkern.h's fk_dtype). */
FK_SM90_API int fk_sm90_sparse_gemm(int dtype, int64_t n, int64_t k, int64_t m, const void* x,
                                    int64_t ldx, const void* a_frag, const uint32_t* e_frag,
                                    int64_t kp, const void* bias, const void* armor,
                                    int64_t armor_block, void* y, int64_t ldy, cudaStream_t stream);

/* 1 when this build holds the sm_90a kernel and the current device can run it, else 0. */
FK_SM90_API int fk_sm90_sparse_available(void);

FK_SM90_API const char* fk_sm90_last_error(void);

#ifdef __cplusplus
}
#endif

#endif /* FK_SM90_SPARSE_H_ */
