"""Library path of the plain 2:4 product ``sparse_mm`` (W = S, a Sparse24 (out, in)):
y = F.linear(x, S, bias), S as in ``_sparse24`` (torch's semi-structured tensor or the dense
decode). Backward in the compute dtype: dx = gy @ S, d_values = the kept entries of gy.T @ x."""

from __future__ import annotations

import torch.nn.functional as F

from ..reference._common import bias_grad, gather24, wanted
from . import _sparse24 as s24
from ._common import cast, ct_of


def sparse_mm(x, s_values, s_meta, bias, extra, *, layout=s24.DENSE):
    ct = ct_of(x)
    S = s24.operand(layout, s_values, s_meta, x.shape[1], extra, ct)
    return s24.linear(cast(x, ct), S, cast(bias, ct)).to(x.dtype)


def sparse_mm_backward(gy, x, s_values, s_meta, bias, extra, needs, layout=s24.DENSE):
    ct = ct_of(x)
    nx, nv, nb = wanted((needs[0], needs[1], needs[3]), 3)
    gy = cast(gy, ct)
    dx = dv = None
    if nx:
        dx = F.linear(gy, s24.dense_operand(layout, s_values, s_meta, x.shape[1], extra, ct).T)
        dx = dx.to(x.dtype)
    if nv:
        dv = gather24(gy.T @ cast(x, ct), s_meta).to(s_values.dtype)
    return dx, dv, None, bias_grad(gy, bias) if nb else None
