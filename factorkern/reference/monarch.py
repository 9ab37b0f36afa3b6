"""Monarch (fly convention, see factorkern.formats.monarch): two block-diagonal products with
permutations between. x: (N, in) -> y: (N, out). FLOPs 2N(k q p + l s r)."""

from __future__ import annotations

import torch

from ..formats.blockdiag import blockdiag_apply, blockdiag_apply_t, blockdiag_grad
from ..formats.monarch import monarch_apply
from ._common import bias_grad, compute_dtype, finish


def monarch_mm(x, w1, w2, out_features, bias=None):
    ct = compute_dtype(x.dtype)
    return finish(monarch_apply(x.to(ct), w1.to(ct), w2.to(ct), out_features), bias, x.dtype)


def monarch_mm_backward(gy, x, w1, w2, out_features, bias):
    """Returns (dx, dw1, dw2, dbias)."""
    ct = compute_dtype(x.dtype)
    W1, W2, gy, xc = w1.to(ct), w2.to(ct), gy.to(ct), x.to(ct)
    k, q, p = W1.shape
    l, s, r = W2.shape
    n, n_in = xc.shape
    if n_in < k * p:
        xc = torch.nn.functional.pad(xc, (0, k * p - n_in))
    t = blockdiag_apply(xc, W1).reshape(n, r, l).transpose(1, 2).reshape(n, l * r)
    # Forward of the output: u (N, l*s) -> y = u.view(l, s).T[:, :out]; undo for the gradient.
    gfull = gy.new_zeros(n, s * l)
    gfull[:, :out_features] = gy
    gu = gfull.reshape(n, s, l).transpose(1, 2).reshape(n, l * s)
    dW2 = blockdiag_grad(gu, t, W2.shape)
    gt = blockdiag_apply_t(gu, W2).reshape(n, l, r).transpose(1, 2).reshape(n, k * q)
    dW1 = blockdiag_grad(gt, xc, W1.shape)
    dx = blockdiag_apply_t(gt, W1)[:, :n_in]
    return (dx.to(x.dtype), dW1.to(w1.dtype), dW2.to(w2.dtype), bias_grad(gy, bias))
