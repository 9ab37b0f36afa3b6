"""Low-rank: W = U @ V.T, U (out, r), V (in, r). y = (x @ V) @ U.T; FLOPs 2N r (in + out)."""

from __future__ import annotations

from ._common import bias_grad, compute_dtype, finish


def lowrank_mm(x, U, V, bias=None):
    ct = compute_dtype(x.dtype)
    return finish((x.to(ct) @ V.to(ct)) @ U.to(ct).T, bias, x.dtype)


def lowrank_mm_backward(gy, x, U, V, bias):
    """Returns (dx, dU, dV, dbias)."""
    ct = compute_dtype(x.dtype)
    Uc, Vc, gy, xc = U.to(ct), V.to(ct), gy.to(ct), x.to(ct)
    t = xc @ Vc
    gt = gy @ Uc
    return ((gt @ Vc.T).to(x.dtype), (gy.T @ t).to(U.dtype), (xc.T @ gt).to(V.dtype),
            bias_grad(gy, bias))
