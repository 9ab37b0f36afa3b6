// The runtime table (runtime.h): the CUDA runtime's functions, the launch-facts cache and the
// device guard.
#include <atomic>
#include <map>
#include <mutex>
#include <tuple>

#include "runtime.h"

namespace fk {
namespace {

cudaError_t occupancy(int* ctas, const void* kernel, int threads, size_t smem) {
  return cudaOccupancyMaxActiveBlocksPerMultiprocessor(ctas, kernel, threads, smem);
}
cudaError_t func_set_max_dynamic_smem(const void* kernel, int bytes) {
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
}
cudaError_t launch(const void* kernel, dim3 grid, dim3 block, void** args, size_t smem,
                   cudaStream_t stream, bool cooperative) {
  return cooperative ? cudaLaunchCooperativeKernel(kernel, grid, block, args, smem, stream)
                     : cudaLaunchKernel(kernel, grid, block, args, smem, stream);
}

const Runtime kCuda = {cudaGetDevice,
                       cudaSetDevice,
                       cudaDeviceGetAttribute,
                       occupancy,
                       cudaFuncGetAttributes,
                       func_set_max_dynamic_smem,
                       launch,
                       cudaPeekAtLastError,
                       cudaGetLastError};

std::atomic<const Runtime*> g_runtime{&kCuda};

using Key = std::tuple<const void*, int, int>;
std::mutex g_mutex;
std::map<Key, int>& facts() {
  static std::map<Key, int> m;  // function-local: no static-initialization order issue
  return m;
}

}  // namespace

const Runtime& runtime() { return *g_runtime.load(std::memory_order_acquire); }

void set_runtime(const Runtime* rt) {
  std::lock_guard<std::mutex> lock(g_mutex);
  facts().clear();
  g_runtime.store(rt ? rt : &kCuda, std::memory_order_release);
}

cudaError_t cached_fact(const void* kernel, int dev, Fact fact, int* value,
                        cudaError_t (*compute)(const void*, int, void*, int*), void* ctx) {
  const Key key{kernel, dev, static_cast<int>(fact)};
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    auto it = facts().find(key);
    if (it != facts().end()) {
      *value = it->second;
      return cudaSuccess;
    }
  }
  // Computed outside the lock (runtime queries can be slow); two threads racing on the first
  // call both compute the same value.
  int v = 0;
  const cudaError_t e = compute(kernel, dev, ctx, &v);
  if (e != cudaSuccess) return e;
  std::lock_guard<std::mutex> lock(g_mutex);
  facts()[key] = v;
  *value = v;
  return cudaSuccess;
}

int cached_fact_count() {
  std::lock_guard<std::mutex> lock(g_mutex);
  return static_cast<int>(facts().size());
}

DeviceGuard::DeviceGuard(int dev) {
  if (dev < 0) return;
  const ErrorScope scope;
  int cur = -1;
  status_ = runtime().get_device(&cur);
  if (status_ == cudaSuccess && cur != dev) {
    status_ = runtime().set_device(dev);
    if (status_ == cudaSuccess) prev_ = cur;
  }
  if (status_ != cudaSuccess) scope.clear_own();
}

DeviceGuard::~DeviceGuard() {
  if (prev_ < 0) return;
  const ErrorScope scope;
  if (runtime().set_device(prev_) != cudaSuccess) scope.clear_own();
}

}  // namespace fk
