// Host side shared by every launcher (decode kernels and the sm_90a GEMM): the CUDA runtime calls
// they make, per (kernel, device) launch facts computed once, the "last error" hygiene and the
// device guard. Plain C++ (no device code), no torch headers.
//
// Every runtime call goes through one table (Runtime) so that a build without a GPU can swap in
// a fake runtime and test the host logic: which kernel a call launches with which grid, which
// device is current while it runs, what is cached, which errors are left pending
// (factorkern._C._testing does this; see tests/test_cuda_launch.py).
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

namespace fk {

struct Runtime {
  cudaError_t (*get_device)(int* dev);
  cudaError_t (*set_device)(int dev);
  cudaError_t (*device_attribute)(int* value, cudaDeviceAttr attr, int dev);
  // Resident CTAs per SM of `kernel` at `threads` threads and `smem` dynamic shared memory
  // (on the current device).
  cudaError_t (*occupancy)(int* ctas, const void* kernel, int threads, size_t smem);
  cudaError_t (*func_attributes)(cudaFuncAttributes* attr, const void* kernel);
  cudaError_t (*func_set_max_dynamic_smem)(const void* kernel, int bytes);
  // A plain (cooperative = false) or cooperative launch; returns the launch error itself, so no
  // launcher ever has to read (and consume) the thread's "last error" to learn it.
  cudaError_t (*launch)(const void* kernel, dim3 grid, dim3 block, void** args, size_t smem,
                        cudaStream_t stream, bool cooperative);
  cudaError_t (*peek_at_last_error)();
  cudaError_t (*get_last_error)();
};

// The table in use: the CUDA runtime unless set_runtime() installed another.
const Runtime& runtime();
// Install `rt` (nullptr: the CUDA runtime again). Also empties the launch-facts cache, whose
// values came from the previous runtime. Not for use while launches run on other threads.
void set_runtime(const Runtime* rt);

// Launch facts are computed once per (kernel, device, kind) and cached (thread-safe). A kernel
// is a distinct template instantiation, so every token bucket, dtype and op has its own entry.
enum class Fact : int {
  kCoresidentCtas = 0,  // occupancy x SMs: the most CTAs a cooperative launch may use
  kSm90Ready = 1,       // the sm_90a image is loaded and its shared-memory limit raised
  kComputeCapability = 2,  // 10 * major + minor of the device (kernel = nullptr)
  kSmCount = 3,            // multiprocessors of the device (kernel = nullptr)
};
// The cached value, or compute() (returns cudaSuccess and sets *value, or an error that is
// returned and not cached).
cudaError_t cached_fact(const void* kernel, int dev, Fact fact, int* value,
                        cudaError_t (*compute)(const void* kernel, int dev, void* ctx, int* value),
                        void* ctx);
// Number of cached entries (for tests).
int cached_fact_count();

// Errors: a failing runtime call also records its error as the thread's "last error" of this
// runtime instance. A launcher clears that record only when the error is its own: if an error
// was already pending when it started, that error belongs to other code and is left for it.
class ErrorScope {
 public:
  ErrorScope() : pending_(runtime().peek_at_last_error() != cudaSuccess) {}
  // Forget the error a failing call of this launcher just recorded (when it is ours).
  void clear_own() const {
    if (!pending_) runtime().get_last_error();
  }

 private:
  bool pending_;
};

// Makes `dev` the current device for its lifetime (dev < 0: leave the current device), and
// restores the previous one. The launchers run on the current device, the one a stream of the
// caller's tensors belongs to may differ (x on cuda:1 while cuda:0 is current).
class DeviceGuard {
 public:
  explicit DeviceGuard(int dev);
  ~DeviceGuard();
  // cudaSuccess, or the error of switching to the device.
  cudaError_t status() const { return status_; }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int prev_ = -1;
  cudaError_t status_ = cudaSuccess;
};

}  // namespace fk
