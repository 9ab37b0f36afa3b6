"""ARMOR: W = A @ S @ B, A (out, out) and B (in, in) block-diagonal, S (out, in) 2:4 along in.

y = ((x @ B.T) @ S.T) @ A.T, x: (N, in) -> y: (N, out). FLOPs (useful): 2N(in*bB + out*in/2 +
out*bA) for block sizes bB, bA. The backward's keyword-only options (``ct``, ``S``, ``needs``)
are those of ``factorkern.reference.dense_sparse``.
"""

from __future__ import annotations

from ..formats.blockdiag import blockdiag_apply, blockdiag_apply_t, blockdiag_grad
from ._common import bias_grad, compute_dtype, decode24, finish, gather24, wanted


def armor_mm(x, a_blocks, s_values, s_meta, b_blocks, bias=None):
    ct = compute_dtype(x.dtype)
    S = decode24(s_values, s_meta, x.shape[1], ct)
    u = blockdiag_apply(x.to(ct), b_blocks.to(ct))
    v = u @ S.T
    return finish(blockdiag_apply(v, a_blocks.to(ct)), bias, x.dtype)


def armor_mm_backward(gy, x, a_blocks, s_values, s_meta, b_blocks, bias, *, ct=None, S=None,
                      needs=None):
    """Returns (dx, dA_blocks, d_values, dB_blocks, dbias); ``needs`` = (x, A, values, B,
    bias)."""
    ct = ct or compute_dtype(x.dtype)
    nx, nA, nv, nB, nb = wanted(needs, 5)
    A, B = a_blocks.to(ct), b_blocks.to(ct)
    S = decode24(s_values, s_meta, x.shape[1], ct) if S is None else S
    gy, xc = gy.to(ct), x.to(ct)
    u = blockdiag_apply(xc, B) if (nA or nv) else None
    gv = blockdiag_apply_t(gy, A)
    dA = blockdiag_grad(gy, u @ S.T, A.shape).to(a_blocks.dtype) if nA else None
    gu = gv @ S if (nx or nB) else None
    dvals = gather24(gv.T @ u, s_meta).to(s_values.dtype) if nv else None
    dx = blockdiag_apply_t(gu, B).to(x.dtype) if nx else None
    dB = blockdiag_grad(gu, xc, B.shape).to(b_blocks.dtype) if nB else None
    return dx, dA, dvals, dB, bias_grad(gy, bias) if nb else None
