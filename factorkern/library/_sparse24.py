"""2:4 factors on the library path.

Where torch's semi-structured sparse tensor applies (``semi_structured_mode``), the factor is
compressed once into torch's layout and multiplied with ``F.linear`` (cuSPARSELt, or torch's
CUTLASS kernels on Ampere-class GPUs); everywhere else it is decoded once into a dense matrix in
the compute dtype and multiplied with a dense GEMM. Either way the layout is built by
``Sparse24.prepare(key)`` and cached, one per factor, under one of three keys:

- ``"torch"``: the dense decode, one tensor (rows, cols) in the compute dtype. Memory: rows *
  cols elements, i.e. 1.78x the Sparse24 itself in fp16/bf16 (values + meta are 0.5625 of dense).
- ``"torch:cusparselt"``: torch's cuSPARSELt layout, one tensor (values and metadata in one
  buffer, about the size of the Sparse24).
- ``"torch:cutlass"``: torch's CUTLASS layout, two tensors (values, reordered metadata), about
  the size of the Sparse24.

The key is the custom op's backend string, so the op knows which layout ``extra`` holds without
inspecting it, and torch.compile sees it as a constant. The semi-structured tensor itself (a
tensor subclass) never crosses the custom op's boundary: its plain inner tensors do, and it is
rebuilt inside the op.

``FACTORKERN_SEMI_STRUCTURED=0`` turns the semi-structured path off (the dense decode is used).
"""

from __future__ import annotations

import os
from typing import Optional

import torch
import torch.nn.functional as F

from ..reference._common import decode24

ENV_VAR = "FACTORKERN_SEMI_STRUCTURED"
DENSE, CUSPARSELT, CUTLASS = "torch", "torch:cusparselt", "torch:cutlass"
LAYOUTS = (DENSE, CUSPARSELT, CUTLASS)
_HALF = (torch.float16, torch.bfloat16)


def semi_structured_mode(device_type: str, dtype: torch.dtype, rows: int, cols: int,
                         capability: Optional[tuple], cusparselt: bool,
                         enabled: bool = True) -> tuple[str, str]:
    """(layout key, why) for a 2:4 factor (rows, cols) whose 2:4 groups run along cols.

    Pure function of the static facts, so tests can ask it about any GPU. The rules are torch's
    own limits (``SparseSemiStructuredTensor._DTYPE_SHAPE_CONSTRAINTS``), plus one of ours:
    torch's CUTLASS kernels are Ampere ``mma.sp`` kernels, measured at 0.62x of dense on an
    H100, so they are used on sm_8x only.
    """
    if not enabled:
        return DENSE, f"{ENV_VAR}=0: the 2:4 factor is decoded once into a dense matrix"
    if device_type != "cuda":
        return DENSE, ("torch's semi-structured 2:4 runs on CUDA only: the 2:4 factor is decoded "
                       "once into a dense matrix")
    if dtype not in _HALF:
        return DENSE, (f"{str(dtype)[6:]}: torch's semi-structured 2:4 is used for float16 and "
                       "bfloat16 only; the factor is decoded once into a dense matrix")
    if capability is None or tuple(capability) < (8, 0):
        return DENSE, "sparse tensor cores need sm_80 or newer: the factor is decoded once"
    if cusparselt:
        if rows % 16 or cols % 16:
            return DENSE, (f"cuSPARSELt needs both sizes of the 2:4 factor to be multiples of 16, "
                           f"got ({rows}, {cols}): the factor is decoded once")
        return CUSPARSELT, "torch's semi-structured 2:4 tensor on cuSPARSELt"
    if capability[0] == 8:
        if rows % 32 or cols % 64:
            return DENSE, (f"torch's CUTLASS 2:4 kernels need rows % 32 == 0 and cols % 64 == 0, "
                           f"got ({rows}, {cols}): the factor is decoded once")
        return CUTLASS, "torch's semi-structured 2:4 tensor on CUTLASS (no cuSPARSELt here)"
    return DENSE, ("no cuSPARSELt in this torch build, and torch's CUTLASS 2:4 kernels (Ampere "
                   "mma.sp) are slower than dense on this GPU: the factor is decoded once")


def _cusparselt_available() -> bool:
    try:
        from torch.sparse import SparseSemiStructuredTensor

        return (not SparseSemiStructuredTensor._FORCE_CUTLASS
                and torch.backends.cusparselt.is_available())
    except Exception:  # an old torch without the flag or the backend: CUTLASS rules apply
        return False


def mode_for(values: torch.Tensor, cols: int) -> tuple[str, str]:
    """(layout key, why) for the Sparse24 with these ``values`` (rows, cols / 2)."""
    dev = values.device
    cap = torch.cuda.get_device_capability(dev) if dev.type == "cuda" else None
    enabled = os.environ.get(ENV_VAR, "1").strip() != "0"
    return semi_structured_mode(dev.type, values.dtype, int(values.shape[0]), int(cols), cap,
                                dev.type == "cuda" and _cusparselt_available(), enabled)


def decoded(values, meta, cols: int, ct) -> torch.Tensor:
    """The 2:4 factor as a dense (rows, cols) matrix in ``ct`` (no autograd history)."""
    with torch.no_grad():
        return decode24(values, meta, cols, ct)


def _classes():
    from torch.sparse import (SparseSemiStructuredTensorCUSPARSELT,
                              SparseSemiStructuredTensorCUTLASS)

    return {CUSPARSELT: SparseSemiStructuredTensorCUSPARSELT,
            CUTLASS: SparseSemiStructuredTensorCUTLASS}


def compress(values, meta, cols: int, key: str) -> tuple:
    """prepare(key) of a Sparse24 for the semi-structured keys: torch's inner tensors."""
    with torch.no_grad():
        dense = decode24(values, meta, cols, values.dtype)
        t = _classes()[key].from_dense(dense)
    return (t.packed,) if key == CUSPARSELT else (t.packed, t.meta)


def operand(key: str, values, meta, cols: int, extra, ct):
    """The factor as ``F.linear`` takes it: the semi-structured tensor rebuilt from ``extra``,
    or the dense decode (``extra[0]`` when prepared, decoded now otherwise)."""
    if key == DENSE:
        if len(extra) == 1:
            return extra[0]
        return decoded(values, meta, cols, ct)
    if key not in LAYOUTS:
        raise ValueError(f"unknown 2:4 layout {key!r}; layouts are {LAYOUTS}")
    if not extra:
        extra = compress(values, meta, cols, key)
    shape = torch.Size((int(values.shape[0]), int(cols)))
    packed, meta_t = extra[0], (extra[1] if key == CUTLASS else None)
    return _classes()[key](shape, packed=packed, meta=meta_t, packed_t=None, meta_t=None,
                           compressed_swizzled_bitmask=None)


def dense_operand(key: str, values, meta, cols: int, extra, ct) -> torch.Tensor:
    """The factor as a dense matrix (the backward needs S itself, not only x @ S.T)."""
    if key == DENSE and len(extra) == 1:
        return extra[0]
    return decoded(values, meta, cols, ct)


def linear(x: torch.Tensor, S, bias=None) -> torch.Tensor:
    """x @ S.T (+ bias) for S dense or semi-structured (which wants a contiguous x)."""
    from torch.sparse import SparseSemiStructuredTensor

    if isinstance(S, SparseSemiStructuredTensor):
        return F.linear(x.contiguous(), S, bias)
    return F.linear(x, S, bias)
