"""Monarch (fly convention, see factorkern.formats.monarch): two block-diagonal products with
permutations between. x: (N, in) -> y: (N, out). FLOPs 2N(k q p + l s r). The backward's
keyword-only options (``ct``, ``needs``) are those of ``factorkern.reference.dense_sparse``."""

from __future__ import annotations

import torch

from ..formats.blockdiag import blockdiag_apply, blockdiag_apply_t, blockdiag_grad
from ..formats.monarch import monarch_apply
from ._common import bias_grad, compute_dtype, finish, wanted


def monarch_mm(x, w1, w2, out_features, bias=None):
    ct = compute_dtype(x.dtype)
    return finish(monarch_apply(x.to(ct), w1.to(ct), w2.to(ct), out_features), bias, x.dtype)


def monarch_mm_backward(gy, x, w1, w2, out_features, bias, *, ct=None, needs=None):
    """Returns (dx, dw1, dw2, dbias); ``needs`` = (x, w1, w2, bias)."""
    ct = ct or compute_dtype(x.dtype)
    nx, n1, n2, nb = wanted(needs, 4)
    W1, W2, gy, xc = w1.to(ct), w2.to(ct), gy.to(ct), x.to(ct)
    k, q, p = W1.shape
    l, s, r = W2.shape
    n, n_in = xc.shape
    if n_in < k * p:
        xc = torch.nn.functional.pad(xc, (0, k * p - n_in))
    # Forward of the output: u (N, l*s) -> y = u.view(l, s).T[:, :out]; undo for the gradient.
    gfull = gy.new_zeros(n, s * l)
    gfull[:, :out_features] = gy
    gu = gfull.reshape(n, s, l).transpose(1, 2).reshape(n, l * s)
    dW2 = None
    if n2:
        t = blockdiag_apply(xc, W1).reshape(n, r, l).transpose(1, 2).reshape(n, l * r)
        dW2 = blockdiag_grad(gu, t, W2.shape).to(w2.dtype)
    dx = dW1 = None
    if nx or n1:
        gt = blockdiag_apply_t(gu, W2).reshape(n, l, r).transpose(1, 2).reshape(n, k * q)
        dW1 = blockdiag_grad(gt, xc, W1.shape).to(w1.dtype) if n1 else None
        dx = blockdiag_apply_t(gt, W1)[:, :n_in].to(x.dtype) if nx else None
    return dx, dW1, dW2, bias_grad(gy, bias) if nb else None
