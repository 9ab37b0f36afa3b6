"""Helpers shared by the reference implementations."""

from __future__ import annotations

import torch

from ..formats.sparse24 import meta_indices


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: fp32 for half types, the dtype itself otherwise."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def decode24(values: torch.Tensor, meta: torch.Tensor, cols: int, dtype) -> torch.Tensor:
    """Sparse24 (values, meta) -> dense (rows, cols) of ``dtype``."""
    out = torch.zeros(values.shape[0], cols, dtype=dtype, device=values.device)
    return out.scatter(1, meta_indices(meta, cols), values.to(dtype))


def gather24(G: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
    """Gradient of the kept values from the gradient G (rows, cols) of the dense matrix."""
    return G.gather(1, meta_indices(meta, G.shape[1]))


def finish(y: torch.Tensor, bias, dtype) -> torch.Tensor:
    if bias is not None:
        y = y + bias.to(y.dtype)
    return y.to(dtype)


def bias_grad(gy: torch.Tensor, bias):
    return None if bias is None else gy.sum(0).to(bias.dtype)


def wanted(needs, n: int) -> tuple:
    """``needs`` (one bool per gradient, lists meaning "any") or None (all) -> n bools."""
    if needs is None:
        return (True,) * n
    return tuple(bool(any(f) if isinstance(f, (list, tuple)) else f) for f in needs)
