// Calls factorkern from C++ through the C API: y = (x @ S.T) @ D.T with S 2:4 sparse, checked
// against a CPU computation. Exit status: 0 match, 1 mismatch, 2 the call failed (for example no
// GPU: the message says why). See README.md beside this file for how to build it.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "factorkern.h"

static float lcg(uint32_t& s) {  // deterministic values in [-1, 1)
  s = s * 1664525u + 1013904223u;
  return (s >> 8) * (2.0f / 16777216.0f) - 1.0f;
}

int main() {
  const int64_t n = 4, in = 256, k = 64, out = 96;
  uint32_t seed = 1234;

  // S (k, in) in the canonical Sparse24 layout: per group of 4 columns, the kept pair (i0 < i1),
  // values (k, in/2) and int16 meta (k, in/16) with one nibble i0 | i1 << 2 per group.
  const int pairs[6][2] = {{0, 1}, {0, 2}, {0, 3}, {1, 2}, {1, 3}, {2, 3}};
  std::vector<__half> s_values(k * in / 2);
  std::vector<int16_t> s_meta(k * in / 16, 0);
  std::vector<double> S(k * in, 0.0);
  for (int64_t r = 0; r < k; ++r)
    for (int64_t g = 0; g < in / 4; ++g) {
      const int* p = pairs[(r * 7 + g * 3) % 6];
      for (int e = 0; e < 2; ++e) {
        const __half v = __float2half(lcg(seed));
        s_values[r * in / 2 + 2 * g + e] = v;
        S[r * in + 4 * g + p[e]] = __half2float(v);
      }
      const uint16_t nib = static_cast<uint16_t>(p[0] | (p[1] << 2));
      uint16_t& w = reinterpret_cast<uint16_t&>(s_meta[r * in / 16 + g / 4]);
      w = static_cast<uint16_t>(w | (nib << (4 * (g % 4))));
    }
  std::vector<__half> D(out * k), x(n * in), y(n * out);
  for (auto& v : D) v = __float2half(lcg(seed) * 0.25f);
  for (auto& v : x) v = __float2half(lcg(seed));

  // CPU reference in double from the same fp16 numbers.
  std::vector<double> t(n * k, 0.0), ref(n * out, 0.0);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t r = 0; r < k; ++r)
      for (int64_t c = 0; c < in; ++c) t[i * k + r] += __half2float(x[i * in + c]) * S[r * in + c];
  for (int64_t i = 0; i < n; ++i)
    for (int64_t o = 0; o < out; ++o)
      for (int64_t r = 0; r < k; ++r) ref[i * out + o] += t[i * k + r] * __half2float(D[o * k + r]);

  void *dx, *dd, *dv, *dm, *dy, *dws;
  const size_t ws = fk_dense_sparse_mm_workspace_size(n, in, k, out);
  cudaError_t e = cudaMalloc(&dx, x.size() * 2);
  if (e != cudaSuccess) {
    std::fprintf(stderr, "no usable GPU: %s\n", cudaGetErrorString(e));
    return 2;
  }
  cudaMalloc(&dd, D.size() * 2);
  cudaMalloc(&dv, s_values.size() * 2);
  cudaMalloc(&dm, s_meta.size() * 2);
  cudaMalloc(&dy, y.size() * 2);
  cudaMalloc(&dws, ws);
  cudaMemcpy(dx, x.data(), x.size() * 2, cudaMemcpyHostToDevice);
  cudaMemcpy(dd, D.data(), D.size() * 2, cudaMemcpyHostToDevice);
  cudaMemcpy(dv, s_values.data(), s_values.size() * 2, cudaMemcpyHostToDevice);
  cudaMemcpy(dm, s_meta.data(), s_meta.size() * 2, cudaMemcpyHostToDevice);

  const fk_status st = fk_dense_sparse_mm(FK_FLOAT16, n, in, k, out, dx, in, dd, dv,
                                          static_cast<const int16_t*>(dm), nullptr, dy, out, dws,
                                          ws, /*stream=*/0);
  if (st != FK_SUCCESS) {
    std::fprintf(stderr, "fk_dense_sparse_mm: %s: %s\n", fk_status_string(st), fk_last_error());
    return 2;
  }
  e = cudaMemcpy(y.data(), dy, y.size() * 2, cudaMemcpyDeviceToHost);
  if (e != cudaSuccess) {
    std::fprintf(stderr, "kernel failed: %s\n", cudaGetErrorString(e));
    return 2;
  }
  double num = 0, den = 0;
  for (size_t i = 0; i < y.size(); ++i) {
    const double d = __half2float(y[i]) - ref[i];
    num += d * d;
    den += ref[i] * ref[i];
  }
  const double rel = std::sqrt(num / den);
  std::printf("%s\nfk_dense_sparse_mm (n=%lld, in=%lld, k=%lld, out=%lld): rel. error %.2e\n",
              fk_build_info(), (long long)n, (long long)in, (long long)k, (long long)out, rel);
  return rel < 1e-2 ? 0 : 1;
}
