// factorkern._C._testing: a fake CUDA runtime for tests on machines without a GPU. Installed, it
// replaces every runtime call of the launchers (csrc/common/runtime.h), so the host logic runs
// to the launch: the co-resident grid and its cache, the current device during the launch, the
// attributes set once per kernel and device, the errors left pending, the GIL released while a
// launch is in progress. It records what each call did; nothing touches a GPU. Not for use
// while a real launch runs on another thread.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <chrono>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "../common/runtime.h"

namespace py = pybind11;

namespace {

struct Event {
  std::string what;  // "occupancy", "func_attributes", "set_max_smem", "launch", "set_device"
  int kernel;        // id of the kernel (order of first appearance), -1 if none
  int device;        // current device at the call (for set_device: the new one)
  unsigned grid[3];
  unsigned block;
  size_t smem;
  bool cooperative;
};

struct Fake {
  std::mutex mu;
  int device = 0;
  int devices = 2;
  int sms = 132;
  std::vector<int> occupancy;  // answers to successive occupancy queries, then `occupancy_rest`
  size_t next_occupancy = 0;
  int occupancy_rest = 1;
  int cc = 90;
  int binary_version = 90;
  int launch_sleep_ms = 0;
  cudaError_t launch_error = cudaSuccess;
  cudaError_t pending = cudaSuccess;  // the thread's "last error" of the fake runtime
  std::map<const void*, int> ids;
  std::vector<Event> events;

  int id(const void* k) {
    auto it = ids.find(k);
    if (it != ids.end()) return it->second;
    const int i = static_cast<int>(ids.size());
    ids[k] = i;
    return i;
  }
  void record(const char* what, const void* k, dim3 g = dim3(0, 0, 0), unsigned block = 0,
              size_t smem = 0, bool coop = false) {
    events.push_back(Event{what, k ? id(k) : -1, device, {g.x, g.y, g.z}, block, smem, coop});
  }
  cudaError_t error(cudaError_t e) {  // a failing call records its error, as the runtime does
    if (e != cudaSuccess) pending = e;
    return e;
  }
};

Fake* g_fake = nullptr;

cudaError_t get_device(int* dev) {
  std::lock_guard<std::mutex> l(g_fake->mu);
  *dev = g_fake->device;
  return cudaSuccess;
}
cudaError_t set_device(int dev) {
  std::lock_guard<std::mutex> l(g_fake->mu);
  if (dev < 0 || dev >= g_fake->devices) return g_fake->error(cudaErrorInvalidDevice);
  g_fake->device = dev;
  g_fake->record("set_device", nullptr);
  return cudaSuccess;
}
cudaError_t device_attribute(int* value, cudaDeviceAttr attr, int dev) {
  std::lock_guard<std::mutex> l(g_fake->mu);
  if (dev < 0 || dev >= g_fake->devices) return g_fake->error(cudaErrorInvalidDevice);
  switch (attr) {
    case cudaDevAttrMultiProcessorCount: *value = g_fake->sms; break;
    case cudaDevAttrCooperativeLaunch: *value = 1; break;
    case cudaDevAttrComputeCapabilityMajor: *value = g_fake->cc / 10; break;
    case cudaDevAttrComputeCapabilityMinor: *value = g_fake->cc % 10; break;
    default: return g_fake->error(cudaErrorInvalidValue);
  }
  return cudaSuccess;
}
cudaError_t occupancy(int* ctas, const void* kernel, int threads, size_t smem) {
  std::lock_guard<std::mutex> l(g_fake->mu);
  Fake& f = *g_fake;
  *ctas = f.next_occupancy < f.occupancy.size() ? f.occupancy[f.next_occupancy++]
                                                : f.occupancy_rest;
  f.record("occupancy", kernel, dim3(0, 0, 0), static_cast<unsigned>(threads), smem);
  return cudaSuccess;
}
cudaError_t func_attributes(cudaFuncAttributes* attr, const void* kernel) {
  std::lock_guard<std::mutex> l(g_fake->mu);
  *attr = cudaFuncAttributes{};
  attr->binaryVersion = g_fake->binary_version;
  g_fake->record("func_attributes", kernel);
  return cudaSuccess;
}
cudaError_t set_max_smem(const void* kernel, int bytes) {
  std::lock_guard<std::mutex> l(g_fake->mu);
  g_fake->record("set_max_smem", kernel, dim3(0, 0, 0), 0, static_cast<size_t>(bytes));
  return cudaSuccess;
}
cudaError_t launch(const void* kernel, dim3 grid, dim3 block, void**, size_t smem, cudaStream_t,
                   bool cooperative) {
  int sleep_ms = 0;
  {
    std::lock_guard<std::mutex> l(g_fake->mu);
    g_fake->record("launch", kernel, grid, block.x, smem, cooperative);
    sleep_ms = g_fake->launch_sleep_ms;
  }
  // Stands in for a launch that blocks (a full launch queue): other Python threads must run.
  if (sleep_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(sleep_ms));
  std::lock_guard<std::mutex> l(g_fake->mu);
  return g_fake->error(g_fake->launch_error);
}
cudaError_t peek_at_last_error() {
  std::lock_guard<std::mutex> l(g_fake->mu);
  return g_fake->pending;
}
cudaError_t get_last_error() {
  std::lock_guard<std::mutex> l(g_fake->mu);
  const cudaError_t e = g_fake->pending;
  g_fake->pending = cudaSuccess;
  return e;
}

const fk::Runtime kFake = {get_device,      set_device, device_attribute,   occupancy,
                           func_attributes, set_max_smem, launch, peek_at_last_error,
                           get_last_error};

Fake& fake() {
  if (!g_fake) throw std::runtime_error("factorkern._C._testing: no fake runtime installed");
  return *g_fake;
}

}  // namespace

void register_testing(py::module_& m) {
  py::module_ t = m.def_submodule(
      "_testing", "A fake CUDA runtime for tests without a GPU (see csrc/python/testing.cpp).");
  t.def(
      "install",
      [](int sms, std::vector<int> occupancy, int occupancy_rest, int devices, int device, int cc,
         int binary_version, int launch_sleep_ms, int launch_error, int pending_error) {
        fk::set_runtime(nullptr);
        delete g_fake;
        g_fake = new Fake();
        {
          Fake& f = *g_fake;
          f.sms = sms;
          f.occupancy = std::move(occupancy);
          f.occupancy_rest = occupancy_rest;
          f.devices = devices;
          f.device = device;
          f.cc = cc;
          f.binary_version = binary_version;
          f.launch_sleep_ms = launch_sleep_ms;
          f.launch_error = static_cast<cudaError_t>(launch_error);
          f.pending = static_cast<cudaError_t>(pending_error);
        }
        fk::set_runtime(&kFake);  // also empties the launch-facts cache
      },
      py::arg("sms") = 132, py::arg("occupancy") = std::vector<int>{},
      py::arg("occupancy_rest") = 1, py::arg("devices") = 2, py::arg("device") = 0,
      py::arg("cc") = 90, py::arg("binary_version") = 90, py::arg("launch_sleep_ms") = 0,
      py::arg("launch_error") = 0, py::arg("pending_error") = 0);
  t.def("uninstall", [] { fk::set_runtime(nullptr); });
  t.def("events", [] {
    Fake& f = fake();
    std::vector<Event> ev;
    {
      std::lock_guard<std::mutex> l(f.mu);
      ev = f.events;
    }
    py::list out;
    for (const Event& e : ev) {
      py::dict d;
      d["what"] = e.what;
      d["kernel"] = e.kernel;
      d["device"] = e.device;
      d["grid"] = py::make_tuple(e.grid[0], e.grid[1], e.grid[2]);
      d["block"] = e.block;
      d["smem"] = e.smem;
      d["cooperative"] = e.cooperative;
      out.append(d);
    }
    return out;
  });
  t.def("pending_error", [] {
    Fake& f = fake();
    std::lock_guard<std::mutex> l(f.mu);
    return static_cast<int>(f.pending);
  });
  t.def("current_device", [] {
    Fake& f = fake();
    std::lock_guard<std::mutex> l(f.mu);
    return f.device;
  });
  t.def("cached_facts", [] { return fk::cached_fact_count(); });
  t.attr("COOPERATIVE_LAUNCH_TOO_LARGE") = static_cast<int>(cudaErrorCooperativeLaunchTooLarge);
  t.attr("LAUNCH_FAILURE") = static_cast<int>(cudaErrorLaunchFailure);
}
