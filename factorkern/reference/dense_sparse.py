"""Dense-sparse (DSFormer): W = D @ S or W = S @ D with S 2:4 sparse.

dense_sparse_mm: D (out, k) dense, S (k, in) 2:4:   y = (x @ S.T) @ D.T
sparse_dense_mm: S (out, k) 2:4, D (k, in) dense:   y = (x @ D.T) @ S.T
x: (N, in) -> y: (N, out). FLOPs (useful, 2:4 counted at half): 2N(k*in/2 + out*k) and
2N(k*in + out*k/2).
"""

from __future__ import annotations

from ._common import bias_grad, compute_dtype, decode24, finish, gather24


def dense_sparse_mm(x, D, s_values, s_meta, bias=None):
    ct = compute_dtype(x.dtype)
    S = decode24(s_values, s_meta, x.shape[1], ct)
    return finish((x.to(ct) @ S.T) @ D.to(ct).T, bias, x.dtype)


def dense_sparse_mm_backward(gy, x, D, s_values, s_meta, bias):
    """Returns (dx, dD, d_values, dbias)."""
    ct = compute_dtype(x.dtype)
    S = decode24(s_values, s_meta, x.shape[1], ct)
    gy, xc = gy.to(ct), x.to(ct)
    t = xc @ S.T                       # (N, k)
    gt = gy @ D.to(ct)                 # (N, k)
    dx = gt @ S
    dD = gy.T @ t
    dvals = gather24(gt.T @ xc, s_meta)
    return (dx.to(x.dtype), dD.to(D.dtype), dvals.to(s_values.dtype), bias_grad(gy, bias))


def sparse_dense_mm(x, s_values, s_meta, D, bias=None):
    ct = compute_dtype(x.dtype)
    S = decode24(s_values, s_meta, D.shape[0], ct)
    return finish((x.to(ct) @ D.to(ct).T) @ S.T, bias, x.dtype)


def sparse_dense_mm_backward(gy, x, s_values, s_meta, D, bias):
    """Returns (dx, d_values, dD, dbias)."""
    ct = compute_dtype(x.dtype)
    Dc = D.to(ct)
    S = decode24(s_values, s_meta, D.shape[0], ct)
    gy, xc = gy.to(ct), x.to(ct)
    t = xc @ Dc.T                      # (N, k)
    gt = gy @ S                        # (N, k)
    dvals = gather24(gy.T @ t, s_meta)
    dD = gt.T @ xc
    dx = gt @ Dc
    return (dx.to(x.dtype), dvals.to(s_values.dtype), dD.to(D.dtype), bias_grad(gy, bias))
