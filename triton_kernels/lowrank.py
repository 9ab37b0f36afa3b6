"""Triton kernel for the low-rank product: U (out, r), V (in, r), y = (x @ V) @ U.T + bias.

The chained product of ``_chain`` with P = V.T (read through V's strides, no transpose copy) and
Q = U. For r <= 256 the prefill kernel keeps the rank-r intermediate t = x @ V of a row tile on chip
(``T_RESIDENT``) and sweeps the output tiles with it: x, V and U are each read once per row tile
and t never touches HBM. For r > 256 t is computed in chunks of r, recomputed per output tile (see
``_chain``). At decode (M <= 16) the phased kernel splits r across programs for x @ V and out across
programs for t @ U.T in one launch, with t (M x r elements) through L2.

Counts for x (M, in), element size e bytes: FLOPs 2M*r*(in + out);
bytes (minimum) e*(M*in + r*in + r*out + M*out).
Baseline to beat: two cuBLAS matmuls (x @ V, then @ U.T), which also write and read t.
"""

from __future__ import annotations

from factorkern.dispatch import register_kernel

from ._chain import chain_mm
from ._common import dtype_reason, span_reason


def lowrank_mm(x, U, V, bias, extra):
    """x (N, in) -> (N, out)."""
    # P[j, c] = V[c, j]: row stride of P is V's column stride and vice versa.
    return chain_mm(x, V, None, U, None, bias, U.shape[0], p_sparse=False, q_sparse=False,
                    p_strides=(V.stride(1), V.stride(0)), name="lowrank_mm")


def _supports(x, U, V, *_):
    return dtype_reason(x) or span_reason(x, U=U, V=V)


register_kernel("lowrank_mm", "triton", lowrank_mm, proven=False, supports=_supports,
                note="rank-r intermediate on chip (r <= 256); decode: phased single launch")
