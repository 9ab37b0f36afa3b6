"""Low-rank: W = U @ V.T, U (out, r), V (in, r). y = (x @ V) @ U.T; FLOPs 2N r (in + out).
The backward's keyword-only options (``ct``, ``needs``) are those of
``factorkern.reference.dense_sparse``."""

from __future__ import annotations

from ._common import bias_grad, compute_dtype, finish, wanted


def lowrank_mm(x, U, V, bias=None):
    ct = compute_dtype(x.dtype)
    return finish((x.to(ct) @ V.to(ct)) @ U.to(ct).T, bias, x.dtype)


def lowrank_mm_backward(gy, x, U, V, bias, *, ct=None, needs=None):
    """Returns (dx, dU, dV, dbias); ``needs`` = (x, U, V, bias)."""
    ct = ct or compute_dtype(x.dtype)
    nx, nU, nV, nb = wanted(needs, 4)
    Uc, Vc, gy, xc = U.to(ct), V.to(ct), gy.to(ct), x.to(ct)
    gt = gy @ Uc if (nx or nV) else None
    return ((gt @ Vc.T).to(x.dtype) if nx else None,
            (gy.T @ (xc @ Vc)).to(U.dtype) if nU else None,
            (xc.T @ gt).to(V.dtype) if nV else None,
            bias_grad(gy, bias) if nb else None)
