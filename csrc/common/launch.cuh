// Host side shared by the launchers: errors with messages, argument checks, and the cooperative
// launch of a persistent kernel whose stages are separated by grid-wide barriers.
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

#include <algorithm>
#include <type_traits>

#include "factorkern.h"
#include "device.cuh"
#include "runtime.h"

namespace fk {

// Record a message for fk_last_error() and return status (printf-style).
fk_status fail(fk_status status, const char* fmt, ...);

// A runtime call of `op` failed with e: record the message, and clear the runtime's record of
// the error when it is this launcher's own (scope: see ErrorScope in runtime.h).
inline fk_status cuda_fail(const ErrorScope& scope, cudaError_t e, const char* op,
                           const char* what) {
  scope.clear_own();
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

// Co-resident CTAs of one kernel on one device (occupancy at kThreads threads x SMs).
inline cudaError_t sm_count(const void*, int dev, void*, int* sms) {
  return runtime().device_attribute(sms, cudaDevAttrMultiProcessorCount, dev);
}
inline cudaError_t coresident_ctas(const void* kernel, int dev, void*, int* ctas) {
  const Runtime& rt = runtime();
  int coop = 0, sms = 0, per_sm = 0;
  cudaError_t e = rt.device_attribute(&coop, cudaDevAttrCooperativeLaunch, dev);
  if (e != cudaSuccess) return e;
  if (!coop) return cudaErrorNotSupported;
  e = rt.device_attribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  if (e != cudaSuccess) return e;
  e = rt.occupancy(&per_sm, kernel, kThreads, 0);
  if (e != cudaSuccess) return e;
  if (per_sm < 1) return cudaErrorInvalidConfiguration;  // does not fit on an SM
  *ctas = per_sm * sms;
  return cudaSuccess;
}

// CTAs for warp_items warps (kWarpsPerCta per CTA), at least one per SM: a smaller stage then
// spreads one warp per SM instead of filling a few SMs (work items go to warp slots CTA-minor,
// see Grid). Both launchers below size their grids with it.
inline int64_t ctas_for(int64_t warp_items, int sms) {
  const int64_t want = (warp_items + kWarpsPerCta - 1) / kWarpsPerCta;
  return want < sms ? sms : want;
}

// Launch a persistent cooperative kernel: as many CTAs as the largest stage has work for
// (warp_items warps), but at least one per SM (a smaller stage then spreads one warp per SM
// instead of filling a few SMs: work items go to warp slots CTA-minor, see Grid), at most what
// fits on the GPU at once (co-residency is what makes the grid-wide barriers between stages
// legal). The co-resident count is queried once per kernel (each token bucket, dtype and op is
// its own kernel with its own register count) and device.
template <typename Params>
fk_status launch_cooperative(void (*kernel)(Params), const Params& params, int64_t warp_items,
                             cudaStream_t stream, const char* op) {
  const ErrorScope scope;
  const Runtime& rt = runtime();
  const void* fn = reinterpret_cast<const void*>(kernel);
  int dev = 0, ctas = 0, sms = 0;
  cudaError_t e = rt.get_device(&dev);
  if (e != cudaSuccess) return cuda_fail(scope, e, op, "cudaGetDevice");
  e = cached_fact(fn, dev, Fact::kCoresidentCtas, &ctas, coresident_ctas, nullptr);
  if (e == cudaErrorNotSupported)
    return fail(FK_ERROR_UNSUPPORTED, "%s: device %d has no cooperative launch", op, dev);
  if (e != cudaSuccess) return cuda_fail(scope, e, op, "the occupancy query");
  e = cached_fact(nullptr, dev, Fact::kSmCount, &sms, sm_count, nullptr);
  if (e != cudaSuccess) return cuda_fail(scope, e, op, "cudaDeviceGetAttribute");
  const int64_t want = ctas_for(warp_items, sms);
  const unsigned grid = static_cast<unsigned>(want < ctas ? want : ctas);
  void* args[] = {const_cast<Params*>(&params)};
  e = rt.launch(fn, dim3(grid), dim3(kThreads), args, 0, stream, true);
  if (e != cudaSuccess) return cuda_fail(scope, e, op, "cudaLaunchCooperativeKernel");
  return FK_SUCCESS;
}

// Launch a single-stage kernel (no grid barrier, so no co-residency needed): a plain launch of
// one CTA per kWarpsPerCta warp items, at least one per SM (a smaller stage then spreads one
// warp per SM, as above). The kernel walks the items with the same grid stride as the
// persistent ones, so the two launches share the device code.
template <typename Params>
fk_status launch_grid(void (*kernel)(Params), const Params& params, int64_t warp_items,
                      cudaStream_t stream, const char* op) {
  const ErrorScope scope;
  const Runtime& rt = runtime();
  const void* fn = reinterpret_cast<const void*>(kernel);
  int dev = 0, sms = 0;
  cudaError_t e = rt.get_device(&dev);
  if (e != cudaSuccess) return cuda_fail(scope, e, op, "cudaGetDevice");
  e = cached_fact(nullptr, dev, Fact::kSmCount, &sms, sm_count, nullptr);
  if (e != cudaSuccess) return cuda_fail(scope, e, op, "cudaDeviceGetAttribute");
  const int64_t want = ctas_for(warp_items, sms);
  void* args[] = {const_cast<Params*>(&params)};
  e = rt.launch(fn, dim3(static_cast<unsigned>(want)), dim3(kThreads), args, 0, stream, false);
  if (e != cudaSuccess) return cuda_fail(scope, e, op, "cudaLaunchKernel");
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
