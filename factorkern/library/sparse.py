"""Library path of the plain 2:4 product ``sparse_mm`` (W = S, a Sparse24 (out, in)):
y = F.linear(x, S, bias), S as in ``_sparse24`` (torch's semi-structured tensor or the dense
decode). The backward is the oracle's formulas (``factorkern.reference.sparse``) in the compute
dtype with the prepared S."""

from __future__ import annotations

from .. import reference as ref
from . import _sparse24 as s24
from ._common import cast, ct_of


def sparse_mm(x, s_values, s_meta, bias, extra, *, layout=s24.DENSE):
    ct = ct_of(x)
    S = s24.operand(layout, s_values, s_meta, x.shape[1], extra, ct)
    return s24.linear(cast(x, ct), S, cast(bias, ct)).to(x.dtype)


def sparse_mm_backward(gy, x, s_values, s_meta, bias, extra, needs, layout=s24.DENSE):
    ct = ct_of(x)
    S = s24.dense_operand(layout, s_values, s_meta, x.shape[1], extra, ct) if needs[0] else None
    dx, dv, db = ref.sparse_mm_backward(gy, x, s_values, s_meta, bias, ct=ct, S=S,
                                        needs=(needs[0], needs[1], needs[3]))
    return dx, dv, None, db
