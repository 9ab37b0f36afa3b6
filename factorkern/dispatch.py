"""Dispatch: the one place that picks a backend for an op.

Backends: "torch" (the reference, always there), "triton" (factorkern.triton_kernels), "cuda"
(factorkern._C). Kernel modules register themselves with ``register_kernel`` when imported; they are
imported lazily, the first time a backend is asked about, so nothing touches a GPU at import time.

``backend="auto"`` (or ``FACTORKERN_BACKEND=auto``/unset) picks, for CUDA tensors, the first
*proven* kernel (numerics checked on a GPU, ``proven=True`` at registration) that supports the call,
in the order cuda, triton; otherwise the reference. A backend asked for by name that cannot run
raises RuntimeError saying why.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Callable, Optional

BACKENDS = ("torch", "triton", "cuda")
OPS = ("dense_sparse_mm", "sparse_dense_mm", "armor_mm", "littlebit_mm", "monarch_mm",
       "lowrank_mm", "littlebit_mm_popcount", "sparse_mm")
ENV_VAR = "FACTORKERN_BACKEND"

_MODULES = {"triton": "factorkern.triton_kernels", "cuda": "factorkern.cuda"}


@dataclass
class Kernel:
    """A registered kernel. ``fn`` takes the op's arguments as the custom op receives them
    (x flattened to (N, in), factor tensors, bias, extra = the format's prepared layout) and
    returns (N, out). ``supports(x, *args)`` returns None or a reason it cannot take the call."""

    op: str
    backend: str
    fn: Callable
    proven: bool = False
    supports: Optional[Callable] = None
    note: str = ""


_KERNELS: dict[tuple[str, str], Kernel] = {}
_LOAD_ERRORS: dict[str, str] = {}
_LOADED: set[str] = set()


def register_kernel(op: str, backend: str, fn: Callable, *, proven: bool = False,
                    supports: Optional[Callable] = None, note: str = "") -> None:
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}; ops are {OPS}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; backends are {BACKENDS}")
    _KERNELS[(op, backend)] = Kernel(op, backend, fn, proven, supports, note)


def _load(backend: str) -> None:
    if backend in _LOADED or backend == "torch":
        return
    _LOADED.add(backend)
    try:
        importlib.import_module(_MODULES[backend])
    except Exception as e:  # optional backend: record why, never fail the import of factorkern
        _LOAD_ERRORS[backend] = f"{type(e).__name__}: {e}"


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def availability(backend: str) -> tuple[bool, str]:
    """(available, reason) for a backend on this machine."""
    if backend == "torch":
        return True, "pure-torch reference, always available"
    if backend not in BACKENDS:
        return False, f"unknown backend {backend!r}; backends are {BACKENDS}"
    _load(backend)
    if backend in _LOAD_ERRORS:
        what = "triton is not importable" if backend == "triton" else \
            "the CUDA extension factorkern._C is not built or does not load"
        return False, f"{what} ({_LOAD_ERRORS[backend]})"
    if backend == "triton":
        if not (_cuda_available() or _interpret()):
            return False, "no CUDA GPU (set TRITON_INTERPRET=1 to run Triton kernels on the CPU)"
        mode = "interpreter on the CPU" if _interpret() else "CUDA GPU"
    else:
        if not _cuda_available():
            return False, "extension built, but no CUDA GPU"
        mode = "CUDA GPU"
    ops = [op for op in OPS if (op, backend) in _KERNELS]
    if not ops:
        return False, f"{backend} backend loads but registers no kernel yet"
    return True, f"{mode}; kernels: {', '.join(ops)}"


def backends() -> dict[str, dict]:
    """What is available here and why not otherwise::

        {"torch": {"available": True, "reason": ..., "ops": {...}}, "triton": {...}, ...}

    ``ops`` maps each op with a kernel in that backend to "proven" or "unproven" (unproven
    kernels run only when asked for by name, never under ``auto``).
    """
    out = {}
    for b in BACKENDS:
        ok, why = availability(b)
        ops = {op: "reference" for op in OPS} if b == "torch" else {
            op: ("proven" if k.proven else "unproven")
            for (op, bk), k in _KERNELS.items() if bk == b}
        out[b] = {"available": ok, "reason": why, "ops": ops}
    return out


def resolve(op: str, backend: str, x, *args) -> str:
    """The concrete backend ("torch", "triton" or "cuda") that runs ``op`` for this call."""
    if backend is None:
        backend = "auto"
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a str, got {type(backend).__name__}")
    if backend == "auto":
        backend = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
        if backend not in BACKENDS + ("auto",):
            raise ValueError(f"{ENV_VAR}={backend!r}; expected one of auto, torch, triton, cuda")
    if backend == "auto":
        if x.is_cuda and x.shape[0] > 0:
            for b in ("cuda", "triton"):
                _load(b)
                k = _KERNELS.get((op, b))
                if k is not None and k.proven and availability(b)[0] and (
                        k.supports is None or k.supports(x, *args) is None):
                    return b
        return "torch"
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of auto, torch, triton, cuda; got {backend!r}")
    if backend == "torch":
        return backend
    ok, why = availability(backend)
    if not ok:
        raise RuntimeError(f"{op}: backend {backend!r} is not available: {why}")
    k = _KERNELS.get((op, backend))
    if k is None:
        raise RuntimeError(f"{op}: backend {backend!r} has no kernel for this op")
    if backend == "cuda" and not x.is_cuda:
        raise RuntimeError(f"{op}: backend 'cuda' needs CUDA tensors, x is on {x.device}")
    if backend == "triton" and not x.is_cuda and not _interpret():
        raise RuntimeError(f"{op}: backend 'triton' needs CUDA tensors (x is on {x.device}) "
                           "or TRITON_INTERPRET=1")
    if k.supports is not None:
        reason = k.supports(x, *args)
        if reason is not None:
            raise RuntimeError(f"{op}: the {backend} kernel does not take this call: {reason}")
    return backend


def kernel(op: str, backend: str) -> Callable:
    """The function that runs ``op`` on ``backend`` (called inside the custom op)."""
    if backend == "torch":
        return _REFERENCE[op]
    _load(backend)
    k = _KERNELS.get((op, backend))
    if k is None:
        raise RuntimeError(f"{op}: backend {backend!r} has no kernel for this op")
    return k.fn


def _reference_table():
    from . import reference as ref

    return {
        "dense_sparse_mm": lambda x, D, v, m, bias, extra: ref.dense_sparse_mm(x, D, v, m, bias),
        "sparse_dense_mm": lambda x, v, m, D, bias, extra: ref.sparse_dense_mm(x, v, m, D, bias),
        "armor_mm": lambda x, a, v, m, b, bias, extra: ref.armor_mm(x, a, v, m, b, bias),
        "littlebit_mm": lambda x, uw, vw, h, l, g, bias, extra: ref.littlebit_mm(
            x, uw, vw, h, l, g, bias),
        "monarch_mm": lambda x, w1, w2, out_f, bias, extra: ref.monarch_mm(x, w1, w2, out_f, bias),
        "lowrank_mm": lambda x, U, V, bias, extra: ref.lowrank_mm(x, U, V, bias),
        "sparse_mm": lambda x, v, m, bias, extra: ref.sparse_mm(x, v, m, bias),
        # Opt-in quantized-activation LittleBit (littlebit_mm(..., quantize_activations=True)).
        "littlebit_mm_popcount": lambda x, uw, vw, h, l, g, bias, extra:
            _littlebit_quant().littlebit_mm_popcount(x, uw, vw, h, l, g, bias),
    }


def _littlebit_quant():
    from .reference import littlebit_quant

    return littlebit_quant


_REFERENCE = _reference_table()
