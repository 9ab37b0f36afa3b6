"""Roofline arithmetic: useful FLOPs and minimum bytes of every op, and the device's ceilings.

All counts are for one call ``y = x @ W.T`` with x (M, in), y (M, out), no bias. ``sizes`` are
the factor sizes of the op (the keys each function documents). The counting rules:

- FLOPs are *useful* FLOPs: 2 per multiply-add of the factored product. A 2:4 factor counts half
  its dense products (only the kept values multiply). LittleBit's sign products count as dense
  multiply-adds, 2*M*r*(in + out) per term (a sign flip is not free on tensor cores). Elementwise
  scales (LittleBit's h, l, g) are not counted: they are O(M*(in + out + r)), negligible.
- Bytes are the *minimum* traffic of a fully fused kernel: x read once, y written once, every
  factor read once at its stored size, intermediates never leaving the chip. Stored sizes: dense
  values in the dtype; a 2:4 factor as its kept values (half the entries) plus 2 bits of metadata
  per kept value (our Sparse24 meta: a 4-bit nibble per group of 4); a sign as 1 bit (the ideal;
  SignBits pads each row to a multiple of 32 bits); every scale in the dtype.
- Roofline floor time = max(flops / peak_flops, bytes / peak_bandwidth); percent of roofline =
  floor / measured time * 100 (100% means the kernel runs at the hardware limit).

Ceilings (peak bandwidth, dense matmul rate) are measured once per device and dtype (a large
copy, a large matmul) and cached in ``~/.cache/factorkern/roofline.json`` (or
``$FACTORKERN_CACHE_DIR``) keyed by the device name.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
from pathlib import Path

OPS = ("sparse_mm", "dense_sparse_mm", "sparse_dense_mm", "armor_mm", "littlebit_mm",
       "monarch_mm", "lowrank_mm")

DTYPE_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}


def _numel(shape) -> int:
    return int(math.prod(shape))


def flops(op: str, m: int, out_f: int, in_f: int, **sizes) -> int:
    """Useful FLOPs of one call, x (m, in_f) -> y (m, out_f).

    - ``dense`` (F.linear): 2*m*out*in
    - ``sparse_mm`` (W = S (out, in) 2:4): 2*m*out*in/2
    - ``dense_sparse_mm`` (D (out, k), S (k, in) 2:4), sizes k: 2*m*(k*in/2 + out*k)
    - ``sparse_dense_mm`` (S (out, k) 2:4, D (k, in)), sizes k: 2*m*(k*in + out*k/2)
    - ``armor_mm`` (A blocks of block_a, S (out, in) 2:4, B blocks of block_b), sizes block_a,
      block_b: 2*m*(in*block_b + out*in/2 + out*block_a)
    - ``littlebit_mm`` (terms of U (out, r), V (in, r) signs), sizes rank, terms:
      terms * 2*m*rank*(in + out)
    - ``monarch_mm`` (w1 (k, q, p), w2 (l, s, r)), sizes w1, w2 (shapes): 2*m*(k*q*p + l*s*r)
    - ``lowrank_mm`` (U (out, r), V (in, r)), sizes rank: 2*m*rank*(in + out)
    """
    if op == "dense":
        return 2 * m * out_f * in_f
    if op == "sparse_mm":
        return m * out_f * in_f
    if op == "dense_sparse_mm":
        k = sizes["k"]
        return 2 * m * (k * in_f // 2 + out_f * k)
    if op == "sparse_dense_mm":
        k = sizes["k"]
        return 2 * m * (k * in_f + out_f * k // 2)
    if op == "armor_mm":
        return 2 * m * (in_f * sizes["block_b"] + out_f * in_f // 2 + out_f * sizes["block_a"])
    if op == "littlebit_mm":
        return sizes["terms"] * 2 * m * sizes["rank"] * (in_f + out_f)
    if op == "monarch_mm":
        return 2 * m * (_numel(sizes["w1"]) + _numel(sizes["w2"]))
    if op == "lowrank_mm":
        return 2 * m * sizes["rank"] * (in_f + out_f)
    raise ValueError(f"unknown op {op!r}")


def sparse24_bytes(rows: int, cols: int, dtype_bytes: int) -> float:
    """A 2:4 (rows, cols) matrix: rows*cols/2 kept values in the dtype plus 2 bits of metadata
    per kept value (rows*cols/8 bytes)."""
    kept = rows * cols // 2
    return kept * dtype_bytes + kept * 2 / 8


def factor_bytes(op: str, out_f: int, in_f: int, dtype_bytes: int, **sizes) -> float:
    """Stored bytes of the factors (the weight), at the sizes ``flops`` documents.

    - ``dense``: out*in*b
    - ``sparse_mm``: sparse24(out, in)
    - ``dense_sparse_mm``: out*k*b (D) + sparse24(k, in)
    - ``sparse_dense_mm``: sparse24(out, k) + k*in*b (D)
    - ``armor_mm``: out*block_a*b (A) + sparse24(out, in) + in*block_b*b (B)
    - ``littlebit_mm``: per term rank*(out + in)/8 (signs, 1 bit) + (out + rank + in)*b (h, l, g)
    - ``monarch_mm``: (numel(w1) + numel(w2))*b
    - ``lowrank_mm``: rank*(out + in)*b
    where b = dtype_bytes and sparse24(rows, cols) = rows*cols/2*b + rows*cols/8.
    """
    b = dtype_bytes
    if op == "dense":
        return out_f * in_f * b
    if op == "sparse_mm":
        return sparse24_bytes(out_f, in_f, b)
    if op == "dense_sparse_mm":
        k = sizes["k"]
        return out_f * k * b + sparse24_bytes(k, in_f, b)
    if op == "sparse_dense_mm":
        k = sizes["k"]
        return sparse24_bytes(out_f, k, b) + k * in_f * b
    if op == "armor_mm":
        return (out_f * sizes["block_a"] * b + sparse24_bytes(out_f, in_f, b)
                + in_f * sizes["block_b"] * b)
    if op == "littlebit_mm":
        r = sizes["rank"]
        return sizes["terms"] * (r * (out_f + in_f) / 8 + (out_f + r + in_f) * b)
    if op == "monarch_mm":
        return (_numel(sizes["w1"]) + _numel(sizes["w2"])) * b
    if op == "lowrank_mm":
        return sizes["rank"] * (out_f + in_f) * b
    raise ValueError(f"unknown op {op!r}")


def min_bytes(op: str, m: int, out_f: int, in_f: int, dtype_bytes: int, **sizes) -> float:
    """Minimum bytes of one call: x read once (m*in*b), y written once (m*out*b), the factors
    read once (``factor_bytes``)."""
    return dtype_bytes * m * (in_f + out_f) + factor_bytes(op, out_f, in_f, dtype_bytes, **sizes)


def compression(op: str, out_f: int, in_f: int, dtype_bytes: int, **sizes) -> float:
    """Dense weight bytes over factor bytes (2.0 = the factors take half the memory of W)."""
    return factor_bytes("dense", out_f, in_f, dtype_bytes) / factor_bytes(
        op, out_f, in_f, dtype_bytes, **sizes)


def floor_seconds(n_flops: float, n_bytes: float, peak_tflops: float, peak_gbps: float) -> float:
    """Roofline floor: max(flops / peak_flops, bytes / peak_bandwidth), in seconds."""
    return max(n_flops / (peak_tflops * 1e12), n_bytes / (peak_gbps * 1e9))


# ---------------------------------------------------------------------------------------------
# Measured ceilings, cached per device
# ---------------------------------------------------------------------------------------------
def cache_path(cache_dir: str | os.PathLike | None = None) -> Path:
    base = cache_dir or os.environ.get("FACTORKERN_CACHE_DIR") or (
        Path.home() / ".cache" / "factorkern")
    return Path(base) / "roofline.json"


def device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"cpu: {cpu}, {torch.get_num_threads()} threads"


def _measure_bandwidth_gbps(device) -> float:
    """Device-memory bandwidth of a large copy: 2 * size bytes (read + write) per copy."""
    import torch

    from .timing import time_fn

    n = (1 << 28) if device.type == "cuda" else (1 << 24)  # 1 GiB / 64 MiB of float32
    src = torch.ones(n, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    t = time_fn([lambda: dst.copy_(src)], device, rep_ms=200 if device.type == "cuda" else 100,
                use_graph=False)
    del src, dst
    return 2 * n * 4 / t.median_s / 1e9


def _measure_matmul_tflops(device, dtype) -> float:
    """Dense matmul rate: one n x n x n matmul in ``dtype`` (n = 8192 on a GPU)."""
    import torch

    from .timing import time_fn

    if device.type == "cuda":
        n = 8192
    else:
        n = 1024 if dtype in (torch.float32, torch.float64) else 512
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    t = time_fn([lambda: a @ b], device, rep_ms=300 if device.type == "cuda" else 100,
                use_graph=False)
    return 2 * n ** 3 / t.median_s / 1e12


def peaks(device, dtype, cache_dir=None, remeasure: bool = False) -> dict:
    """{"device", "bandwidth_gbps", "matmul_tflops", "cached"} for this device and dtype:
    measured the first time (a few seconds on a GPU), read from the cache after."""
    path = cache_path(cache_dir)
    name = device_name(device)
    dname = str(dtype).replace("torch.", "")
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        cache = {}
    entry = cache.get(name, {})
    cached = not remeasure and "bandwidth_gbps" in entry and dname in entry.get(
        "matmul_tflops", {})
    if not cached:
        import torch

        if remeasure or "bandwidth_gbps" not in entry:
            entry["bandwidth_gbps"] = _measure_bandwidth_gbps(device)
            entry["matmul_tflops"] = {}
        entry.setdefault("matmul_tflops", {})[dname] = _measure_matmul_tflops(device, dtype)
        entry["measured"] = datetime.date.today().isoformat()
        entry["torch"] = torch.__version__
        cache[name] = entry
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(cache, indent=1, sort_keys=True))
        except OSError:
            pass  # a read-only home still benchmarks; it only measures again next time
    return {"device": name, "bandwidth_gbps": entry["bandwidth_gbps"],
            "matmul_tflops": entry["matmul_tflops"][dname], "cached": cached}
