"""The library path: backend ``"torch"``, each op as the fastest composite of library calls in
the input dtype (cuBLAS GEMMs with their own fp32 accumulation, torch's semi-structured 2:4
tensor, bmm for block-diagonals and fly's bmm Monarch, LittleBit signs unpacked once), forward
and backward. ``auto`` takes it on the CPU and wherever no kernel is verified faster on the GPU.
The oracle (fp32/fp64 accumulation, factors decoded at each call) stays in
``factorkern.reference``, for tests and verification.

One module per family; this table maps each op to its forward and backward. Adding an op is
one entry here (plus its family module):

- ``forward(x, *args, bias, extra, [layout=key])`` takes the custom op's arguments (x flattened
  to (N, in), extra = the prepared layout) and returns (N, out) in x's dtype;
- ``backward(gy, x, *args, bias, extra, needs, [layout])`` returns one gradient per argument
  (x, *args, bias), None (or a list of None) where there is none or ``needs`` says it is not
  needed;
- ``sparse=True`` when the op's format is a Sparse24 whose layout key picks the product
  (``_sparse24``): the key travels as the custom op's backend string ("torch",
  "torch:cusparselt", "torch:cutlass").

Prepared layouts (``prepare(key)``, built once per factor and cached): the 2:4 factor
(``_sparse24``) and LittleBit's folded signs (``littlebit``). Block-diagonal, Monarch and
low-rank factors are used as they are.

On the CPU, fp16/bf16 inputs are computed in fp32 (``_common.compute_dtype``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Optional

from ..formats import register_layout
from . import _sparse24, armor, dense_sparse, littlebit, lowrank, monarch, sparse
from ._common import compute_dtype


@dataclass(frozen=True)
class LibraryOp:
    forward: Callable
    backward: Callable
    sparse: bool = False      # a Sparse24 format: the layout key picks the 2:4 product


LIBRARY: dict[str, LibraryOp] = {
    "dense_sparse_mm": LibraryOp(dense_sparse.dense_sparse_mm,
                                 dense_sparse.dense_sparse_mm_backward, sparse=True),
    "sparse_dense_mm": LibraryOp(dense_sparse.sparse_dense_mm,
                                 dense_sparse.sparse_dense_mm_backward, sparse=True),
    "armor_mm": LibraryOp(armor.armor_mm, armor.armor_mm_backward, sparse=True),
    "littlebit_mm": LibraryOp(littlebit.littlebit_mm, littlebit.littlebit_mm_backward),
    "littlebit_mm_popcount": LibraryOp(littlebit.littlebit_mm_popcount,
                                       littlebit.littlebit_mm_popcount_backward),
    "monarch_mm": LibraryOp(monarch.monarch_mm, monarch.monarch_mm_backward),
    "lowrank_mm": LibraryOp(lowrank.lowrank_mm, lowrank.lowrank_mm_backward),
    # The plain 2:4 op (its custom op lives with the importers); used once it is in
    # dispatch.OPS.
    "sparse_mm": LibraryOp(sparse.sparse_mm, sparse.sparse_mm_backward, sparse=True),
}


def is_library(backend: str) -> bool:
    """True for "torch" and its layout variants ("torch:cusparselt", ...)."""
    return backend == "torch" or backend.startswith("torch:")


def layout_key(op: str, fmt) -> str:
    """The library backend string (and prepare key) for a call of ``op`` with format ``fmt``:
    "torch", or a semi-structured 2:4 layout where one applies (``_sparse24.mode_for``)."""
    return layout_choice(op, fmt)[0]


def layout_choice(op: str, fmt) -> tuple[str, str]:
    """(layout key, why)."""
    entry = LIBRARY.get(op)
    if entry is None or not entry.sparse or fmt is None:
        return "torch", "library path"
    import torch

    if torch.compiler.is_compiling():
        # Under torch.compile prepare() is not cached (it runs in the graph), so the layout is
        # the plain dense decode, which traces without building a tensor subclass.
        return _sparse24.DENSE, "under torch.compile: the 2:4 factor is decoded densely"
    return _sparse24.mode_for(fmt.values, fmt.cols)


def _contiguous(fn):
    # Every implementation of a custom op returns a contiguous (N, out): the fake impl says so,
    # and compiled code trusts it.
    @functools.wraps(fn)
    def run(*args, **kwargs):
        return fn(*args, **kwargs).contiguous()
    return run


def kernel(op: str, backend: str = "torch") -> Callable:
    """The library forward of ``op`` for the backend string ``backend`` (a layout key)."""
    entry = LIBRARY.get(op)
    if entry is None:
        raise RuntimeError(f"{op}: the library path has no implementation of this op")
    if entry.sparse:
        return _contiguous(functools.partial(entry.forward, layout=backend))
    if backend != "torch":
        raise RuntimeError(f"{op}: unknown library layout {backend!r}")
    return _contiguous(entry.forward)


def backward(op: str, backend: Optional[str] = None) -> Callable:
    """The library backward of ``op``; ``backend`` is the string the forward ran with (its
    prepared layout is only reused when it was the library's)."""
    entry = LIBRARY[op]
    if entry.sparse:
        key = backend if backend is not None and is_library(backend) else _sparse24.DENSE
        return functools.partial(entry.backward, layout=key)
    return entry.backward


def _sparse24_layout(key):
    def build(S):
        if key == _sparse24.DENSE:
            return (_sparse24.decoded(S.values, S.meta, S.cols,
                                      compute_dtype(S.values.dtype, S.values.device)),)
        return _sparse24.compress(S.values, S.meta, S.cols, key)
    return build


for _key in _sparse24.LAYOUTS:
    register_layout("Sparse24", _key, _sparse24_layout(_key))
register_layout("LittleBitFactors", "torch", littlebit.layout)

__all__ = ["LIBRARY", "LibraryOp", "kernel", "backward", "layout_key", "layout_choice",
           "is_library", "compute_dtype"]
