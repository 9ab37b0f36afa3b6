"""Library path of DSFormer's dense x 2:4 products (``_sparse24`` says how the 2:4 factor is
multiplied and what is cached).

dense_sparse_mm: y = F.linear(F.linear(x, S), D, bias)     S (k, in) 2:4, D (out, k)
sparse_dense_mm: y = F.linear(F.linear(x, D), S, bias)     D (k, in), S (out, k) 2:4
Two library GEMMs each (the bias fused into the second); the backward runs the oracle's
formulas (``factorkern.reference.dense_sparse``) in the compute dtype with the cached S.
"""

from __future__ import annotations

import torch.nn.functional as F

from .. import reference as ref
from . import _sparse24 as s24
from ._common import cast, ct_of


def dense_sparse_mm(x, D, s_values, s_meta, bias, extra, *, layout=s24.DENSE):
    ct = ct_of(x)
    S = s24.operand(layout, s_values, s_meta, x.shape[1], extra, ct)
    return F.linear(s24.linear(cast(x, ct), S), cast(D, ct), cast(bias, ct)).to(x.dtype)


def dense_sparse_mm_backward(gy, x, D, s_values, s_meta, bias, extra, needs, layout=s24.DENSE):
    ct = ct_of(x)
    S = s24.dense_operand(layout, s_values, s_meta, x.shape[1], extra, ct)
    dx, dD, dv, db = ref.dense_sparse_mm_backward(gy, x, D, s_values, s_meta, bias, ct=ct, S=S,
                                                  needs=(needs[0], needs[1], needs[2], needs[4]))
    return dx, dD, dv, None, db


def sparse_dense_mm(x, s_values, s_meta, D, bias, extra, *, layout=s24.DENSE):
    ct = ct_of(x)
    S = s24.operand(layout, s_values, s_meta, D.shape[0], extra, ct)
    return s24.linear(F.linear(cast(x, ct), cast(D, ct)), S, cast(bias, ct)).to(x.dtype)


def sparse_dense_mm_backward(gy, x, s_values, s_meta, D, bias, extra, needs, layout=s24.DENSE):
    ct = ct_of(x)
    S = s24.dense_operand(layout, s_values, s_meta, D.shape[0], extra, ct)
    dx, dv, dD, db = ref.sparse_dense_mm_backward(gy, x, s_values, s_meta, D, bias, ct=ct, S=S,
                                                  needs=(needs[0], needs[1], needs[3], needs[4]))
    return dx, dv, None, dD, db
