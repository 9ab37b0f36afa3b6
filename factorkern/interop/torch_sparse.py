"""torch's ``SparseSemiStructuredTensor`` <-> Sparse24, both of torch's layouts.

CUTLASS (``SparseSemiStructuredTensorCUTLASS``, float16/bfloat16): ``packed`` (rows, cols / 2)
holds the kept values exactly as Sparse24's ``values`` do, and ``meta`` is Sparse24's canonical
meta (one nibble idx0 | idx1 << 2 per group, 4 per int16 word) scattered into CUTLASS's
interleaved column-major order. torch documents that reorder in
``torch.sparse._semi_structured_conversions._calculate_meta_reordering_scatter_offsets`` (the
port of CUTLASS's ``reorder_meta``); it is pure torch, so both directions run on any device,
the CPU included, and never build the dense matrix. Groups with fewer than two nonzeros may
come back with other (equally valid) index pairs than ``Sparse24.from_dense`` picks: the
explicit zeros sit where torch put them.

float32: torch's CUTLASS path stores float32 as 1:2 (one kept value of every pair of columns),
which silently drops a 2:4 group's second value when both kept values share a pair; and
cuSPARSELt takes no float32. A float32 Sparse24 is refused unless ``dtype=`` asks for a cast.

cuSPARSELt (``SparseSemiStructuredTensorCUSPARSELT``): one opaque buffer, the kept values
followed by metadata in cuSPARSELt's own layout, made only by ``torch._cslt_compress`` on a GPU.
Its layout is not documented, so both directions go through the dense matrix on the GPU:
``to_torch_semi_structured`` compresses ``S.to_dense()`` with torch, and
``from_torch_semi_structured`` reads ``t.to_dense()`` back into Sparse24.
"""

from __future__ import annotations

import torch

from ..formats.sparse24 import Sparse24

BACKENDS = ("cutlass", "cusparselt")


def _classes():
    from torch.sparse import (SparseSemiStructuredTensor, SparseSemiStructuredTensorCUSPARSELT,
                              SparseSemiStructuredTensorCUTLASS)

    return SparseSemiStructuredTensor, SparseSemiStructuredTensorCUTLASS, \
        SparseSemiStructuredTensorCUSPARSELT


def _reorder_offsets(rows: int, meta_cols: int, device) -> torch.Tensor:
    """Scatter offsets of CUTLASS's meta reorder for int16 meta (torch's own function)."""
    try:
        from torch.sparse._semi_structured_conversions import \
            _calculate_meta_reordering_scatter_offsets as offsets
    except ImportError as e:  # a torch that moved it: say so instead of guessing the layout
        raise RuntimeError("this torch has no torch.sparse._semi_structured_conversions."
                           "_calculate_meta_reordering_scatter_offsets (CUTLASS's meta "
                           f"reorder): {e}") from e
    return offsets(rows, meta_cols, torch.int16, device)


def default_backend() -> str:
    """The layout ``torch.sparse.to_sparse_semi_structured`` would pick here."""
    base, _, _ = _classes()
    if base._FORCE_CUTLASS:
        return "cutlass"
    try:
        return "cusparselt" if torch.backends.cusparselt.is_available() else "cutlass"
    except AttributeError:
        return "cutlass"


def to_torch_semi_structured(S: Sparse24, backend: str | None = None, dtype=None):
    """Sparse24 (rows, cols) -> ``torch.sparse.SparseSemiStructuredTensor``.

    Args:
        S: the 2:4 matrix; rows and cols must meet torch's shape rules for the layout
            (CUTLASS float16/bfloat16: rows % 32 == 0 and cols % 64 == 0; cuSPARSELt: 16, 16).
        backend: "cutlass" (no dense matrix built; any device), "cusparselt" (through the dense
            matrix, CUDA only: its layout is opaque) or None: torch's own choice here.
        dtype: cast the values first (float16 or bfloat16). Needed for a float32 S, which is
            refused otherwise (see the module docstring).
    Returns:
        a SparseSemiStructuredTensor of S's shape, device and (cast) dtype; ``y = x @ t.T``
        (``F.linear(x, t)``) runs torch's 2:4 matmul on a GPU.
    """
    if not isinstance(S, Sparse24):
        raise TypeError(f"S must be a Sparse24, got {type(S).__name__}")
    backend = default_backend() if backend is None else backend
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None, got {backend!r}")
    if dtype is not None:
        S = S.to(dtype)
    if S.dtype not in (torch.float16, torch.bfloat16):
        raise TypeError(f"to_torch_semi_structured: S is {S.dtype}; torch's semi-structured "
                        "tensors take float16 or bfloat16 here (its CUTLASS path stores float32 "
                        "as 1:2 and would drop kept values of a 2:4 matrix); pass "
                        "dtype=torch.float16 or torch.bfloat16 to cast")
    _, cutlass, cusparselt = _classes()
    cls = cutlass if backend == "cutlass" else cusparselt
    rows, cols = S.shape
    rule = cls._DTYPE_SHAPE_CONSTRAINTS[S.dtype]
    if rows % rule.sparse_min_rows or cols % rule.sparse_min_cols:
        raise ValueError(f"to_torch_semi_structured: torch's {backend} layout needs rows a "
                         f"multiple of {rule.sparse_min_rows} and cols of "
                         f"{rule.sparse_min_cols} for {S.dtype}, S is {S.shape}")
    if backend == "cusparselt":
        if S.device.type != "cuda":
            raise RuntimeError("to_torch_semi_structured: cuSPARSELt compresses on a CUDA GPU "
                               f"only, S is on {S.device}")
        return cls.from_dense(S.to_dense().contiguous())
    meta = S.meta.contiguous()
    reordered = torch.empty_like(meta).view(-1).scatter_(
        0, _reorder_offsets(rows, meta.shape[1], meta.device), meta.view(-1))
    return cls(torch.Size((rows, cols)), packed=S.values.contiguous(),
               meta=reordered.view(rows, -1), packed_t=None, meta_t=None,
               compressed_swizzled_bitmask=None)


def from_torch_semi_structured(t) -> Sparse24:
    """``torch.sparse.SparseSemiStructuredTensor`` -> Sparse24 (same shape, dtype, device).

    CUTLASS: the values and the meta taken back out of CUTLASS's order (no dense matrix).
    cuSPARSELt: through ``t.to_dense()`` (needs the GPU the tensor lives on).
    """
    base, cutlass, cusparselt = _classes()
    if not isinstance(t, base):
        raise TypeError(f"t must be a torch.sparse.SparseSemiStructuredTensor, got "
                        f"{type(t).__name__}")
    rows, cols = t.shape
    if isinstance(t, cutlass) and t.packed is not None and t.meta is not None \
            and t.meta.dim() == 2:
        if t.dtype not in (torch.float16, torch.bfloat16):
            raise TypeError(f"from_torch_semi_structured: a CUTLASS tensor of {t.dtype} is not "
                            "2:4 (torch stores float32 as 1:2 and int8 with other metadata)")
        meta = t.meta.reshape(-1).gather(0, _reorder_offsets(rows, t.meta.shape[1],
                                                             t.meta.device))
        return Sparse24(t.packed.contiguous(), meta.view(rows, -1).contiguous(), cols)
    return Sparse24.from_dense(t.to_dense())
