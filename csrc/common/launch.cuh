// Host side shared by the launchers: errors with messages, argument checks, and the cooperative
// launch of a persistent kernel whose stages are separated by grid-wide barriers.
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

#include <type_traits>

#include "factorkern.h"
#include "device.cuh"

namespace fk {

// Record a message for fk_last_error() and return status (printf-style).
fk_status fail(fk_status status, const char* fmt, ...);

inline fk_status cuda_fail(cudaError_t e, const char* op, const char* what) {
  cudaGetLastError();  // clear the (non-sticky) error so the next call starts clean
  return fail(FK_ERROR_CUDA, "%s: %s failed: %s (%s)", op, what, cudaGetErrorString(e),
              cudaGetErrorName(e));
}

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

inline size_t round_up(size_t v, size_t m) { return (v + m - 1) / m * m; }

// Common checks of the activations and output; returns FK_SUCCESS or the failure.
inline fk_status check_io(const char* op, fk_dtype dtype, int64_t n, int64_t in, int64_t out,
                          const void* x, int64_t ldx, const void* y, int64_t ldy) {
  if (dtype != FK_FLOAT16 && dtype != FK_BFLOAT16)
    return fail(FK_ERROR_UNSUPPORTED, "%s: dtype %d: the kernels take float16 (0) or bfloat16 (1)",
                op, (int)dtype);
  if (n < 0 || in <= 0 || out <= 0)
    return fail(FK_ERROR_INVALID_VALUE, "%s: sizes must be n >= 0, in > 0, out > 0 (got %lld, "
                "%lld, %lld)", op, (long long)n, (long long)in, (long long)out);
  if (n > FK_MAX_TOKENS)
    return fail(FK_ERROR_UNSUPPORTED, "%s: n = %lld tokens; these decode kernels take n <= %d",
                op, (long long)n, FK_MAX_TOKENS);
  if (in > INT32_MAX / 2 || out > INT32_MAX / 2)
    return fail(FK_ERROR_UNSUPPORTED, "%s: in/out above 2^30", op);
  if (n == 0) return FK_SUCCESS;
  if (!x || !y) return fail(FK_ERROR_INVALID_VALUE, "%s: x and y must not be null", op);
  if (!aligned16(x) || ldx < in || ldx % 8 != 0)
    return fail(FK_ERROR_UNSUPPORTED, "%s: x must be 16-byte aligned with a row stride ldx >= in "
                "and a multiple of 8 elements (got ldx = %lld)", op, (long long)ldx);
  if (ldy < out)
    return fail(FK_ERROR_INVALID_VALUE, "%s: ldy = %lld < out = %lld", op, (long long)ldy,
                (long long)out);
  return FK_SUCCESS;
}

inline fk_status check_factor(const char* op, const char* name, const void* p) {
  if (!p) return fail(FK_ERROR_INVALID_VALUE, "%s: %s must not be null", op, name);
  if (!aligned16(p))
    return fail(FK_ERROR_UNSUPPORTED, "%s: %s must be 16-byte aligned (16-byte loads)", op, name);
  return FK_SUCCESS;
}

inline fk_status check_workspace(const char* op, const void* ws, size_t have, size_t need) {
  if (need == 0) return FK_SUCCESS;
  if (!ws || have < need)
    return fail(FK_ERROR_WORKSPACE, "%s: needs a device workspace of %zu bytes, got %zu at %p",
                op, need, have, ws);
  if ((reinterpret_cast<uintptr_t>(ws) & 255u) != 0)
    return fail(FK_ERROR_WORKSPACE, "%s: workspace must be 256-byte aligned", op);
  return FK_SUCCESS;
}

#define FK_CHECK(expr)                        \
  do {                                        \
    const fk_status fk_s_ = (expr);           \
    if (fk_s_ != FK_SUCCESS) return fk_s_;    \
  } while (0)

// Launch a persistent cooperative kernel: as many CTAs as the largest stage has work for
// (warp_items warps), at most what fits on the GPU at once (co-residency is what makes the
// grid-wide barriers between stages legal). Occupancy is queried once per kernel and device.
template <typename Params>
fk_status launch_cooperative(void (*kernel)(Params), const Params& params, int64_t warp_items,
                             cudaStream_t stream, const char* op) {
  constexpr int kMaxDevices = 64;
  static int cached_ctas[kMaxDevices] = {0};
  int dev = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e != cudaSuccess) return cuda_fail(e, op, "cudaGetDevice");
  int ctas = dev < kMaxDevices ? cached_ctas[dev] : 0;
  if (ctas == 0) {
    int coop = 0, sms = 0, per_sm = 0;
    e = cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, dev);
    if (e != cudaSuccess) return cuda_fail(e, op, "cudaDeviceGetAttribute");
    if (!coop) return fail(FK_ERROR_UNSUPPORTED, "%s: device %d has no cooperative launch", op, dev);
    e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
    if (e != cudaSuccess) return cuda_fail(e, op, "cudaDeviceGetAttribute");
    e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, 0);
    if (e != cudaSuccess) return cuda_fail(e, op, "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
    if (per_sm < 1) return fail(FK_ERROR_CUDA, "%s: the kernel does not fit on an SM", op);
    ctas = per_sm * sms;
    if (dev < kMaxDevices) cached_ctas[dev] = ctas;
  }
  int64_t want = (warp_items + kWarpsPerCta - 1) / kWarpsPerCta;
  if (want < 1) want = 1;
  const unsigned grid = static_cast<unsigned>(want < ctas ? want : ctas);
  void* args[] = {const_cast<Params*>(&params)};
  e = cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(kernel), dim3(grid),
                                  dim3(kThreads), args, 0, stream);
  if (e != cudaSuccess) return cuda_fail(e, op, "cudaLaunchCooperativeKernel");
  return FK_SUCCESS;
}

// Pick the token bucket NT (a compile-time upper bound on n: 1, 4 or 16) and call
// f(std::integral_constant<int, NT>{}). Three buckets keep the build small; tokens past n are
// clamped loads whose results are never stored.
template <typename F>
fk_status with_token_bucket(int64_t n, F&& f) {
  if (n <= 1) return f(std::integral_constant<int, 1>{});
  if (n <= 4) return f(std::integral_constant<int, 4>{});
  return f(std::integral_constant<int, 16>{});
}

}  // namespace fk
