// factorkern._C: pybind11 bindings of the C API (csrc/include/factorkern.h). No torch headers:
// Python passes data_ptr() integers, sizes, strides, the raw cudaStream_t of the current torch
// stream and the index of the tensors' device, so the module does not depend on torch's C++ ABI.
// Every launch runs with that device current (restored after) and without the GIL (argument
// conversion happens before it is released). A failing status raises RuntimeError carrying
// fk_last_error(). Importing the module never touches the GPU.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>
#include <tuple>
#include <vector>

#include "../common/runtime.h"
#include "../common/tiles.h"
#include "factorkern.h"

// The sm_90a 2:4 GEMM (csrc/sm90_sparse, its own C API) is compiled into the same module when
// present; factorkern/cuda_sm90/launch.py calls it as _C.sm90_sparse_gemm (returns the status).
#if __has_include("../sm90_sparse/fk_sm90_sparse.h")
#include "../sm90_sparse/fk_sm90_sparse.h"
#define FK_HAVE_SM90_SPARSE 1
#endif

namespace py = pybind11;

namespace {

template <typename P>
const P* cptr(std::uintptr_t p) { return reinterpret_cast<const P*>(p); }
void* mptr(std::uintptr_t p) { return reinterpret_cast<void*>(p); }
cudaStream_t stream_of(std::uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }

void check(fk_status s) {
  if (s != FK_SUCCESS)
    throw std::runtime_error(std::string(fk_last_error()) + " [factorkern status " +
                             std::to_string(static_cast<int>(s)) + ": " + fk_status_string(s) +
                             "]");
}

fk_dtype dtype_of(int d) { return static_cast<fk_dtype>(d); }

// Run launch() with `device` current (device < 0: the current one). Called without the GIL.
template <typename F>
auto on_device(int device, F&& launch) -> decltype(launch()) {
  fk::DeviceGuard guard(device);
  if (guard.status() != cudaSuccess)
    throw std::runtime_error("factorkern: cannot make CUDA device " + std::to_string(device) +
                             " current: " + cudaGetErrorString(guard.status()) +
                             " [factorkern status 3: " + fk_status_string(FK_ERROR_CUDA) + "]");
  return launch();
}

using release_gil = py::call_guard<py::gil_scoped_release>;

// (u_words, v_words, h, l, g, rank, ldu) as pointers/ints.
using Term = std::tuple<std::uintptr_t, std::uintptr_t, std::uintptr_t, std::uintptr_t,
                        std::uintptr_t, int64_t, int64_t>;

std::vector<fk_littlebit_term> terms_of(const std::vector<Term>& ts) {
  std::vector<fk_littlebit_term> out;
  for (const auto& t : ts)
    out.push_back(fk_littlebit_term{cptr<int32_t>(std::get<0>(t)), cptr<int32_t>(std::get<1>(t)),
                                    cptr<void>(std::get<2>(t)), cptr<void>(std::get<3>(t)),
                                    cptr<void>(std::get<4>(t)), std::get<5>(t), std::get<6>(t)});
  return out;
}

}  // namespace

// The fake CUDA runtime for tests without a GPU (testing.cpp).
void register_testing(py::module_& m);

PYBIND11_MODULE(_C, m) {
  m.doc() = "factorkern CUDA kernels (decode, N <= 16 tokens); see csrc/README.md";
  m.attr("MAX_TOKENS") = FK_MAX_TOKENS;
  m.attr("MAX_TERMS") = FK_MAX_TERMS;
  m.attr("FLOAT16") = static_cast<int>(FK_FLOAT16);
  m.attr("BFLOAT16") = static_cast<int>(FK_BFLOAT16);
  m.def("build_info", &fk_build_info);
  m.def("tiles", [] {
    // The decode stages' tile parameters per token bucket (csrc/common/tiles.h), for
    // bench/model.py.
    namespace t = fk::tiles;
    py::dict out;
    for (int nt : t::kBuckets) {
      py::dict d;
      d["sparse24"] = py::dict(py::arg("rows") = t::sparse24_rows(nt),
                               py::arg("unroll") = t::sparse24_batch(nt),
                               py::arg("expand") = t::sparse24_expand(nt));
      d["dense"] = py::dict(py::arg("rows") = t::dense_rows(nt),
                            py::arg("unroll") = t::dense_unroll(nt));
      d["sign"] = py::dict(py::arg("rows") = t::sign_rows(nt), py::arg("unroll") = t::sign_unroll(nt),
                           py::arg("q_trips") = t::sign_q_trips(nt));
      d["sign_terms"] = py::dict(py::arg("rows") = t::sign_rows(nt), py::arg("unroll") = 1,
                                 py::arg("q_trips") = t::sign_q_trips(nt));
      d["popcount"] = py::dict(py::arg("rows") = t::popcount_rows(nt),
                               py::arg("unroll") = t::popcount_unroll(nt),
                               py::arg("q_trips") = t::popcount_q_trips(nt));
      out[py::int_(nt)] = d;
    }
    return out;
  });
  m.def("lanes_per_row", [](int64_t chunks, int64_t rows, int k_rows) {
    return fk::lanes_per_row(chunks, rows, k_rows);
  });
  m.def("status_string", [](int s) { return std::string(fk_status_string(static_cast<fk_status>(s))); });

  m.def("dense_sparse_mm_workspace_size", &fk_dense_sparse_mm_workspace_size);
  m.def("dense_sparse_mm",
        [](int dtype, int64_t n, int64_t in, int64_t k, int64_t out, std::uintptr_t x,
           int64_t ldx, std::uintptr_t d, std::uintptr_t sv, std::uintptr_t sm,
           std::uintptr_t bias, std::uintptr_t y, int64_t ldy, std::uintptr_t ws,
           std::size_t ws_bytes, std::uintptr_t stream, int device) {
          check(on_device(device, [&] {
            return fk_dense_sparse_mm(dtype_of(dtype), n, in, k, out, cptr<void>(x), ldx,
                                      cptr<void>(d), cptr<void>(sv), cptr<int16_t>(sm),
                                      cptr<void>(bias), mptr(y), ldy, mptr(ws), ws_bytes,
                                      stream_of(stream));
          }));
        },
        release_gil());

  m.def("sparse_dense_mm_workspace_size", &fk_sparse_dense_mm_workspace_size);
  m.def("sparse_dense_mm",
        [](int dtype, int64_t n, int64_t in, int64_t k, int64_t out, std::uintptr_t x,
           int64_t ldx, std::uintptr_t sv, std::uintptr_t sm, std::uintptr_t d,
           std::uintptr_t bias, std::uintptr_t y, int64_t ldy, std::uintptr_t ws,
           std::size_t ws_bytes, std::uintptr_t stream, int device) {
          check(on_device(device, [&] {
            return fk_sparse_dense_mm(dtype_of(dtype), n, in, k, out, cptr<void>(x), ldx,
                                      cptr<void>(sv), cptr<int16_t>(sm), cptr<void>(d),
                                      cptr<void>(bias), mptr(y), ldy, mptr(ws), ws_bytes,
                                      stream_of(stream));
          }));
        },
        release_gil());

  m.def("armor_mm_workspace_size", &fk_armor_mm_workspace_size);
  m.def("armor_mm",
        [](int dtype, int64_t n, int64_t in, int64_t out, std::uintptr_t x, int64_t ldx,
           std::uintptr_t a, int64_t block_a, std::uintptr_t sv, std::uintptr_t sm,
           std::uintptr_t b, int64_t block_b, std::uintptr_t bias, std::uintptr_t y, int64_t ldy,
           std::uintptr_t ws, std::size_t ws_bytes, std::uintptr_t stream, int device) {
          check(on_device(device, [&] {
            return fk_armor_mm(dtype_of(dtype), n, in, out, cptr<void>(x), ldx, cptr<void>(a),
                               block_a, cptr<void>(sv), cptr<int16_t>(sm), cptr<void>(b), block_b,
                               cptr<void>(bias), mptr(y), ldy, mptr(ws), ws_bytes,
                               stream_of(stream));
          }));
        },
        release_gil());

#ifdef FK_HAVE_SM90_SPARSE
  m.def("sm90_sparse_gemm",
        [](int dtype, int64_t n, int64_t k, int64_t mm, std::uintptr_t x, int64_t ldx,
           std::uintptr_t a_frag, std::uintptr_t e_frag, int64_t kp, std::uintptr_t bias,
           std::uintptr_t armor, int64_t armor_block, std::uintptr_t y, int64_t ldy,
           std::uintptr_t stream, int device) {
          return on_device(device, [&] {
            return fk_sm90_sparse_gemm(dtype, n, k, mm, cptr<void>(x), ldx, cptr<void>(a_frag),
                                       cptr<uint32_t>(e_frag), kp, cptr<void>(bias),
                                       cptr<void>(armor), armor_block, mptr(y), ldy,
                                       stream_of(stream));
          });
        },
        release_gil());
  m.def("sm90_sparse_available", [](int device) {
    return on_device(device, [] { return fk_sm90_sparse_available(); });
  }, py::arg("device") = -1, release_gil());
  m.def("sm90_last_error", []() { return std::string(fk_sm90_last_error()); });
#endif

  m.def("littlebit_mm_workspace_size",
        [](int64_t n, int64_t in, bool popcount, const std::vector<Term>& ts) {
          auto terms = terms_of(ts);
          const int nt = static_cast<int>(terms.size());
          return popcount ? fk_littlebit_popcount_mm_workspace_size(n, in, nt, terms.data())
                          : fk_littlebit_mm_workspace_size(n, in, nt, terms.data());
        });
  m.def("littlebit_mm",
        [](int dtype, int64_t n, int64_t in, int64_t out, std::uintptr_t x, int64_t ldx,
           const std::vector<Term>& ts, std::uintptr_t bias, std::uintptr_t y, int64_t ldy,
           std::uintptr_t ws, std::size_t ws_bytes, std::uintptr_t stream, bool popcount,
           int device) {
          auto terms = terms_of(ts);
          const int nt = static_cast<int>(terms.size());
          auto fn = popcount ? &fk_littlebit_popcount_mm : &fk_littlebit_mm;
          check(on_device(device, [&] {
            return fn(dtype_of(dtype), n, in, out, cptr<void>(x), ldx, nt, terms.data(),
                      cptr<void>(bias), mptr(y), ldy, mptr(ws), ws_bytes, stream_of(stream));
          }));
        },
        release_gil());

  register_testing(m);
}
