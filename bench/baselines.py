"""Baselines: what a user would run instead of a factorkern kernel, timed in the same process.

- ``dense``: cuBLAS ``F.linear(x, W)`` at the same (out, in), W a random dense matrix. Every
  speedup column is relative to it (ratios, not absolute times).
- ``composite``: the unfused torch composite of the same factors in the benchmark dtype, the way a
  model written in plain torch computes it (2:4 factors stored dense with their zeros, LittleBit
  signs unpacked once to +-1 in the dtype, block-diagonals as bmm).
- ``torch-2:4``: the composite with the 2:4 factor as torch's semi-structured sparse tensor
  (``to_sparse_semi_structured``: cuSPARSELt where torch has it, CUTLASS otherwise); CUDA, fp16
  and bf16 only.
- ``fly-bmm``: Monarch as fly's ``blockdiag_butterfly_multiply`` computes it: bmm, a permute copy,
  bmm, a permute (``factorkern.library.monarch.monarch_bmm``, which the library path also runs).

``build(name, case, factors, dtype, device, gen)`` returns ``fn(x) -> y`` (its own prepared
weights bound in), after ``applies(name, op, device, dtype)`` returned None.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from factorkern.formats.blockdiag import blockdiag_apply
from factorkern.library.monarch import monarch_bmm  # fly's algorithm, also the library path

NAMES = ("dense", "composite", "torch-2:4", "fly-bmm")
ALIASES = {"torch24": "torch-2:4", "2:4": "torch-2:4", "semi": "torch-2:4", "fly": "fly-bmm",
           "bmm": "fly-bmm", "cublas": "dense", "linear": "dense"}
_SPARSE_OPS = ("sparse_mm", "dense_sparse_mm", "sparse_dense_mm", "armor_mm")


def applies(name: str, op: str, device, dtype) -> str | None:
    """None when baseline ``name`` computes ``op`` here, else why not (not an error)."""
    if name == "dense":
        return None
    if name == "composite":
        # fly's bmm algorithm *is* the plain-torch composite of Monarch.
        return "Monarch's composite is fly-bmm" if op == "monarch_mm" else None
    if name == "fly-bmm":
        return None if op == "monarch_mm" else "Monarch only"
    if name == "torch-2:4":
        if op not in _SPARSE_OPS:
            return "2:4 ops only"
        if device.type != "cuda":
            return "needs a CUDA GPU"
        if dtype not in (torch.float16, torch.bfloat16):
            return "fp16/bf16 only"
        if torch.cuda.get_device_capability(device) < (8, 0):
            return "needs sm_80 or newer"
        return None
    raise ValueError(f"unknown baseline {name!r}; baselines are {NAMES}")


def semi_structured_backend() -> str:
    try:
        from torch.sparse import SparseSemiStructuredTensor

        if (not SparseSemiStructuredTensor._FORCE_CUTLASS
                and torch.backends.cusparselt.is_available()):
            return "cuSPARSELt"
    except Exception:
        pass
    return "CUTLASS"


def build(name: str, case, factors: dict, dtype, device, gen):
    """fn(x) -> y for baseline ``name`` over one factor set."""
    op = case.op
    if name == "dense":
        out_f, in_f = case.shape.out, case.shape.inp
        W = (torch.randn(out_f, in_f, generator=gen, device=device) / math.sqrt(in_f)).to(dtype)
        return lambda x: F.linear(x, W)

    if name == "fly-bmm":
        M = factors["M"]
        w1, w2, out_f = M.w1, M.w2, M.out_features
        return lambda x: monarch_bmm(x, w1, w2, out_f)

    if name in ("composite", "torch-2:4"):
        if op in _SPARSE_OPS:
            dense_s = factors["S"].to_dense()
            if name == "torch-2:4":
                from torch.sparse import to_sparse_semi_structured

                S = to_sparse_semi_structured(dense_s)
            else:
                S = dense_s
            if op == "sparse_mm":
                if name == "torch-2:4":  # the semi-structured matmul wants a contiguous operand
                    return lambda x: F.linear(x.contiguous(), S)
                return lambda x: F.linear(x, S)
            if op == "dense_sparse_mm":
                D = factors["D"]
                return lambda x: F.linear(F.linear(x, S), D)
            if op == "sparse_dense_mm":
                D = factors["D"]
                return lambda x: F.linear(F.linear(x, D), S)
            A, B = factors["A"].blocks, factors["B"].blocks
            if name == "torch-2:4":  # the semi-structured matmul wants a contiguous operand
                return lambda x: blockdiag_apply(F.linear(blockdiag_apply(x, B).contiguous(), S),
                                                 A)
            return lambda x: blockdiag_apply(F.linear(blockdiag_apply(x, B), S), A)
        if op == "littlebit_mm":
            terms = [(U.unpack(dtype), V.unpack(dtype), h, l, g)
                     for U, V, h, l, g in factors["F"].terms]

            def littlebit(x):
                y = None
                for sU, sVt, h, l, g in terms:
                    yt = F.linear(F.linear(x * g, sVt) * l, sU) * h
                    y = yt if y is None else y + yt
                return y
            return littlebit
        if op == "lowrank_mm":
            U, Vt = factors["U"], factors["V"].T.contiguous()  # nn.Linear(in, r) stores V.T
            return lambda x: F.linear(F.linear(x, Vt), U)
    raise ValueError(f"baseline {name!r} does not compute {op}")
