"""Dense-sparse (DSFormer): W = D @ S or W = S @ D with S 2:4 sparse.

dense_sparse_mm: D (out, k) dense, S (k, in) 2:4:   y = (x @ S.T) @ D.T
sparse_dense_mm: S (out, k) 2:4, D (k, in) dense:   y = (x @ D.T) @ S.T
x: (N, in) -> y: (N, out). FLOPs (useful, 2:4 counted at half): 2N(k*in/2 + out*k) and
2N(k*in + out*k/2).

The backward functions take keyword-only options the library path (``factorkern.library``) uses
to run the same formulas its own way: ``ct`` the compute dtype (default: fp32 for half inputs,
the input dtype otherwise), ``S`` the dense 2:4 factor already decoded in ``ct`` (default: decoded
here), ``needs`` one bool per returned gradient (default: all; a False one comes back None and
its products are skipped).
"""

from __future__ import annotations

from ._common import bias_grad, compute_dtype, decode24, finish, gather24, wanted


def dense_sparse_mm(x, D, s_values, s_meta, bias=None):
    ct = compute_dtype(x.dtype)
    S = decode24(s_values, s_meta, x.shape[1], ct)
    return finish((x.to(ct) @ S.T) @ D.to(ct).T, bias, x.dtype)


def dense_sparse_mm_backward(gy, x, D, s_values, s_meta, bias, *, ct=None, S=None, needs=None):
    """Returns (dx, dD, d_values, dbias); ``needs`` = (x, D, values, bias)."""
    ct = ct or compute_dtype(x.dtype)
    nx, nD, nv, nb = wanted(needs, 4)
    S = decode24(s_values, s_meta, x.shape[1], ct) if S is None else S
    gy, xc = gy.to(ct), x.to(ct)
    gt = gy @ D.to(ct) if (nx or nv) else None        # (N, k)
    dx = (gt @ S).to(x.dtype) if nx else None
    dD = (gy.T @ (xc @ S.T)).to(D.dtype) if nD else None
    dvals = gather24(gt.T @ xc, s_meta).to(s_values.dtype) if nv else None
    return dx, dD, dvals, bias_grad(gy, bias) if nb else None


def sparse_dense_mm(x, s_values, s_meta, D, bias=None):
    ct = compute_dtype(x.dtype)
    S = decode24(s_values, s_meta, D.shape[0], ct)
    return finish((x.to(ct) @ D.to(ct).T) @ S.T, bias, x.dtype)


def sparse_dense_mm_backward(gy, x, s_values, s_meta, D, bias, *, ct=None, S=None, needs=None):
    """Returns (dx, d_values, dD, dbias); ``needs`` = (x, values, D, bias)."""
    ct = ct or compute_dtype(x.dtype)
    nx, nv, nD, nb = wanted(needs, 4)
    Dc = D.to(ct)
    S = decode24(s_values, s_meta, D.shape[0], ct) if S is None else S
    gy, xc = gy.to(ct), x.to(ct)
    gt = gy @ S if (nx or nD) else None               # (N, k)
    dvals = gather24(gy.T @ (xc @ Dc.T), s_meta).to(s_values.dtype) if nv else None
    dD = (gt.T @ xc).to(D.dtype) if nD else None
    dx = (gt @ Dc).to(x.dtype) if nx else None
    return dx, dvals, dD, bias_grad(gy, bias) if nb else None
