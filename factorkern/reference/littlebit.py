"""LittleBit: W = sum_t diag(h_t) sign(U_t) diag(l_t) sign(V_t).T diag(g_t).

Per term: y += h * ((((x * g) @ sign(V)) * l) @ sign(U).T). Signs come from SignBits words:
U (out, r) packed along r, V.T (r, in) packed along in. x: (N, in) -> y: (N, out).
FLOPs (as dense multiply-adds of the sign products) 2N r (in + out) per term. The backward's
keyword-only options (``ct``, ``needs``) are those of ``factorkern.reference.dense_sparse``.
"""

from __future__ import annotations

from ..formats.signbits import unpack_signs
from ._common import bias_grad, compute_dtype, finish, wanted


def _signs(u_words, v_words, r, n_in, ct):
    sU = unpack_signs(u_words, r, ct)        # (out, r)
    sVt = unpack_signs(v_words, n_in, ct)    # (r, in)
    return sU, sVt


def littlebit_mm(x, u_words, v_words, h, l, g, bias=None):
    ct = compute_dtype(x.dtype)
    xc = x.to(ct)
    y = None
    for uw, vw, ht, lt, gt in zip(u_words, v_words, h, l, g):
        sU, sVt = _signs(uw, vw, lt.shape[0], x.shape[1], ct)
        yt = (((xc * gt.to(ct)) @ sVt.T) * lt.to(ct)) @ sU.T * ht.to(ct)
        y = yt if y is None else y + yt
    return finish(y, bias, x.dtype)


def littlebit_mm_backward(gy, x, u_words, v_words, h, l, g, bias, *, ct=None, needs=None):
    """Returns (dx, dh list, dl list, dg list, dbias); ``needs`` = (x, h, l, g, bias) (a list
    gradient not needed comes back as a list of None)."""
    ct = ct or compute_dtype(x.dtype)
    nx, nh, nl, ng, nb = wanted(needs, 5)
    xc, gy = x.to(ct), gy.to(ct)
    dx = None
    dh, dl, dg = [], [], []
    for uw, vw, ht, lt, gt in zip(u_words, v_words, h, l, g):
        sU, sVt = _signs(uw, vw, lt.shape[0], x.shape[1], ct)
        a = (xc * gt.to(ct)) @ sVt.T if (nh or nl) else None        # (N, r)
        dh.append((gy * ((a * lt.to(ct)) @ sU.T)).sum(0).to(ht.dtype) if nh else None)
        if not (nl or ng or nx):
            continue
        gb = (gy * ht.to(ct)) @ sU              # (N, r)
        dl.append((gb * a).sum(0).to(lt.dtype) if nl else None)
        if not (ng or nx):
            continue
        gxg = (gb * lt.to(ct)) @ sVt            # (N, in)
        dg.append((gxg * xc).sum(0).to(gt.dtype) if ng else None)
        if nx:
            term = gxg * gt.to(ct)
            dx = term if dx is None else dx + term
    n = len(u_words)
    dl += [None] * (n - len(dl))
    dg += [None] * (n - len(dg))
    return (dx.to(x.dtype) if nx else None), dh, dl, dg, (bias_grad(gy, bias) if nb else None)
