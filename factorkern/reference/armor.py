"""ARMOR: W = A @ S @ B, A (out, out) and B (in, in) block-diagonal, S (out, in) 2:4 along in.

y = ((x @ B.T) @ S.T) @ A.T, x: (N, in) -> y: (N, out). FLOPs (useful): 2N(in*bB + out*in/2 +
out*bA) for block sizes bB, bA.
"""

from __future__ import annotations

from ..formats.blockdiag import blockdiag_apply, blockdiag_apply_t, blockdiag_grad
from ._common import bias_grad, compute_dtype, decode24, finish, gather24


def armor_mm(x, a_blocks, s_values, s_meta, b_blocks, bias=None):
    ct = compute_dtype(x.dtype)
    S = decode24(s_values, s_meta, x.shape[1], ct)
    u = blockdiag_apply(x.to(ct), b_blocks.to(ct))
    v = u @ S.T
    return finish(blockdiag_apply(v, a_blocks.to(ct)), bias, x.dtype)


def armor_mm_backward(gy, x, a_blocks, s_values, s_meta, b_blocks, bias):
    """Returns (dx, dA_blocks, d_values, dB_blocks, dbias)."""
    ct = compute_dtype(x.dtype)
    A, B = a_blocks.to(ct), b_blocks.to(ct)
    S = decode24(s_values, s_meta, x.shape[1], ct)
    gy, xc = gy.to(ct), x.to(ct)
    u = blockdiag_apply(xc, B)
    v = u @ S.T
    gv = blockdiag_apply_t(gy, A)
    dA = blockdiag_grad(gy, v, A.shape)
    gu = gv @ S
    dvals = gather24(gv.T @ u, s_meta)
    dx = blockdiag_apply_t(gu, B)
    dB = blockdiag_grad(gu, xc, B.shape)
    return (dx.to(x.dtype), dA.to(a_blocks.dtype), dvals.to(s_values.dtype),
            dB.to(b_blocks.dtype), bias_grad(gy, bias))
