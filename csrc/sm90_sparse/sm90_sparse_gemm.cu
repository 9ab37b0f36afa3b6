// Launcher of the sm_90a 2:4 sparse GEMM (see sm90_sparse_gemm.cuh for the kernel and layouts).
// Compiles for every target; the kernel has a body only in the sm_90a image, and the launcher
// refuses (FK_SM90_ERROR_UNSUPPORTED) unless the device is sm_90 and the loaded image is sm_90a.
#include <cuda_runtime.h>
#include <stdarg.h>
#include <stdio.h>

#include "../common/runtime.h"
#include "fk_sm90_sparse.h"
#include "sm90_sparse_gemm.cuh"

namespace {

thread_local char g_msg[512] = "";

int fail(int status, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(g_msg, sizeof(g_msg), fmt, ap);
  va_end(ap);
  return status;
}

// The runtime's record of the error is cleared only when it is ours (fk::ErrorScope).
int cuda_fail(const fk::ErrorScope& scope, cudaError_t e, const char* what) {
  scope.clear_own();
  return fail(FK_SM90_ERROR_CUDA, "fk_sm90_sparse_gemm: %s failed: %s (%s)", what,
              cudaGetErrorString(e), cudaGetErrorName(e));
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

constexpr int kNotSm90a = -1;  // cached "ready" value: the loaded image is not sm_90a

// Once per kernel and device: the image's version, and the shared-memory opt-in.
cudaError_t prepare_kernel(const void* kernel, int, void*, int* ready) {
  const fk::Runtime& rt = fk::runtime();
  cudaFuncAttributes attr;
  cudaError_t e = rt.func_attributes(&attr, kernel);
  if (e != cudaSuccess) return e;
  if (attr.binaryVersion != 90) {
    *ready = kNotSm90a - attr.binaryVersion;  // keeps the version for the message
    return cudaSuccess;
  }
  e = rt.func_set_max_dynamic_smem(kernel, fk_sm90::kSmemBytes);
  if (e != cudaSuccess) return e;
  *ready = 1;
  return cudaSuccess;
}

cudaError_t compute_capability(const void*, int dev, void*, int* cc) {
  const fk::Runtime& rt = fk::runtime();
  int major = 0, minor = 0;
  cudaError_t e = rt.device_attribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
  if (e == cudaSuccess) e = rt.device_attribute(&minor, cudaDevAttrComputeCapabilityMinor, dev);
  if (e != cudaSuccess) return e;
  *cc = 10 * major + minor;
  return cudaSuccess;
}

// FK_SM90_SUCCESS when the current device is sm_90 (*dev set to it), else the failure.
int check_device(const fk::ErrorScope& scope, int* dev) {
  const fk::Runtime& rt = fk::runtime();
  cudaError_t e = rt.get_device(dev);
  if (e != cudaSuccess) return cuda_fail(scope, e, "cudaGetDevice");
  int cc = 0;
  e = fk::cached_fact(nullptr, *dev, fk::Fact::kComputeCapability, &cc, compute_capability,
                      nullptr);
  if (e != cudaSuccess) return cuda_fail(scope, e, "cudaDeviceGetAttribute");
  if (cc != 90)
    return fail(FK_SM90_ERROR_UNSUPPORTED, "fk_sm90_sparse_gemm: needs an sm_90 (Hopper) device, "
                "this is sm_%d", cc);
  return FK_SM90_SUCCESS;
}

template <typename T, bool kArmor>
int check_image(const fk::ErrorScope& scope, int dev) {
  const void* kernel = reinterpret_cast<const void*>(fk_sm90::sparse_gemm_kernel<T, kArmor>);
  int ready = 0;
  const cudaError_t e =
      fk::cached_fact(kernel, dev, fk::Fact::kSm90Ready, &ready, prepare_kernel, nullptr);
  if (e != cudaSuccess) return cuda_fail(scope, e, "preparing the kernel");
  if (ready != 1)
    return fail(FK_SM90_ERROR_UNSUPPORTED, "fk_sm90_sparse_gemm: the loaded kernel image is "
                "sm_%d, not sm_90a (build with -gencode arch=compute_90a,code=sm_90a)",
                kNotSm90a - ready);
  return FK_SM90_SUCCESS;
}

template <typename T, bool kArmor>
int launch(const fk_sm90::Params& p, cudaStream_t stream) {
  const fk::ErrorScope scope;
  int dev = 0;
  int st = check_device(scope, &dev);
  if (st != FK_SM90_SUCCESS) return st;
  st = check_image<T, kArmor>(scope, dev);
  if (st != FK_SM90_SUCCESS) return st;
  const void* kernel = reinterpret_cast<const void*>(fk_sm90::sparse_gemm_kernel<T, kArmor>);
  const dim3 grid((p.m + fk_sm90::kBM - 1) / fk_sm90::kBM, (p.n + fk_sm90::kBN - 1) / fk_sm90::kBN);
  void* args[] = {const_cast<fk_sm90::Params*>(&p)};
  const cudaError_t e = fk::runtime().launch(kernel, grid, dim3(fk_sm90::kThreads), args,
                                             fk_sm90::kSmemBytes, stream, false);
  if (e != cudaSuccess) return cuda_fail(scope, e, "the kernel launch");
  return FK_SM90_SUCCESS;
}

}  // namespace

extern "C" const char* fk_sm90_last_error(void) { return g_msg; }

extern "C" int fk_sm90_sparse_available(void) {
  const fk::ErrorScope scope;
  int dev = 0;
  if (check_device(scope, &dev) != FK_SM90_SUCCESS) return 0;
  return check_image<__nv_bfloat16, false>(scope, dev) == FK_SM90_SUCCESS ? 1 : 0;
}

extern "C" int fk_sm90_sparse_gemm(int dtype, int64_t n, int64_t k, int64_t m, const void* x,
                                   int64_t ldx, const void* a_frag, const uint32_t* e_frag,
                                   int64_t kp, const void* bias, const void* armor,
                                   int64_t armor_block, void* y, int64_t ldy,
                                   cudaStream_t stream) {
  g_msg[0] = '\0';
  if (dtype != 0 && dtype != 1)
    return fail(FK_SM90_ERROR_UNSUPPORTED, "fk_sm90_sparse_gemm: dtype %d: float16 (0) or "
                "bfloat16 (1) only", dtype);
  if (n < 0 || k <= 0 || m <= 0)
    return fail(FK_SM90_ERROR_INVALID_VALUE, "fk_sm90_sparse_gemm: sizes n >= 0, k > 0, m > 0 "
                "(got %lld, %lld, %lld)", (long long)n, (long long)k, (long long)m);
  if (k % 8 != 0 || m % 8 != 0)
    return fail(FK_SM90_ERROR_UNSUPPORTED, "fk_sm90_sparse_gemm: k and m must be multiples of 8 "
                "(16-byte rows), got k = %lld, m = %lld", (long long)k, (long long)m);
  if (kp != (k + fk_sm90::kBK - 1) / fk_sm90::kBK * fk_sm90::kBK)
    return fail(FK_SM90_ERROR_INVALID_VALUE, "fk_sm90_sparse_gemm: kp = %lld, expected k rounded "
                "up to %d (the prepared layout's K)", (long long)kp, fk_sm90::kBK);
  if (n > (1ll << 30) || k > (1ll << 30) || m > (1ll << 30))
    return fail(FK_SM90_ERROR_UNSUPPORTED, "fk_sm90_sparse_gemm: sizes above 2^30");
  if ((n + fk_sm90::kBN - 1) / fk_sm90::kBN > 65535)
    return fail(FK_SM90_ERROR_UNSUPPORTED, "fk_sm90_sparse_gemm: n = %lld above %d tokens",
                (long long)n, 65535 * fk_sm90::kBN);
  if (armor != nullptr && (armor_block != fk_sm90::kBM || m % fk_sm90::kBM != 0))
    return fail(FK_SM90_ERROR_UNSUPPORTED, "fk_sm90_sparse_gemm: the fused ARMOR epilogue takes "
                "A blocks of %d (got %lld) and m a multiple of %d (got %lld)", fk_sm90::kBM,
                (long long)armor_block, fk_sm90::kBM, (long long)m);
  if (n == 0) return FK_SM90_SUCCESS;
  if (!x || !a_frag || !e_frag || !y)
    return fail(FK_SM90_ERROR_INVALID_VALUE, "fk_sm90_sparse_gemm: x, a_frag, e_frag and y must "
                "not be null");
  if (!aligned16(x) || !aligned16(a_frag) || !aligned16(e_frag) || !aligned16(y) ||
      (armor && !aligned16(armor)) || ldx < k || ldx % 8 != 0 || ldy < m || ldy % 8 != 0)
    return fail(FK_SM90_ERROR_UNSUPPORTED, "fk_sm90_sparse_gemm: pointers must be 16-byte "
                "aligned and ldx >= k, ldy >= m multiples of 8 (ldx = %lld, ldy = %lld)",
                (long long)ldx, (long long)ldy);
  fk_sm90::Params p;
  p.n = (int)n; p.k = (int)k; p.m = (int)m; p.kp = (int)kp;
  p.x = x; p.ldx = ldx; p.a_frag = a_frag; p.e_frag = e_frag; p.bias = bias; p.armor = armor;
  p.y = y; p.ldy = ldy;
  if (dtype == 1)
    return armor ? launch<__nv_bfloat16, true>(p, stream) : launch<__nv_bfloat16, false>(p, stream);
  return armor ? launch<__half, true>(p, stream) : launch<__half, false>(p, stream);
}
