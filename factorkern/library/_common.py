"""What the library path's families share: the compute dtype and casts."""

from __future__ import annotations

import torch

_HALF = (torch.float16, torch.bfloat16)


def compute_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """The dtype the library path computes in: the input dtype (cuBLAS accumulates half
    products in fp32 itself), except fp16/bf16 on the CPU, computed in fp32: CPUs without
    half-precision matrix units run half GEMMs slower than fp32 ones (on an AVX2 CPU a
    16 x 1024 x 1024 F.linear took 17 ms in fp16 and 11 ms in bf16 against 6 ms in fp32, the
    conversions included), and fp32 is also the more accurate choice."""
    if device.type == "cpu" and dtype in _HALF:
        return torch.float32
    return dtype


def ct_of(x: torch.Tensor) -> torch.dtype:
    return compute_dtype(x.dtype, x.device)


def cast(t, ct):
    """t in the compute dtype (None stays None; no copy when it already is)."""
    return t if t is None or t.dtype == ct else t.to(ct)
