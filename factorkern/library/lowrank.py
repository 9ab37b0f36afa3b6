"""Library path of low-rank, W = U @ V.T: y = F.linear(x @ V, U, bias), two GEMMs in the compute
dtype; the backward is the oracle's formulas (``factorkern.reference.lowrank``) in that dtype."""

from __future__ import annotations

import torch.nn.functional as F

from .. import reference as ref
from ._common import cast, ct_of


def lowrank_mm(x, U, V, bias, extra):
    ct = ct_of(x)
    return F.linear(cast(x, ct) @ cast(V, ct), cast(U, ct), cast(bias, ct)).to(x.dtype)


def lowrank_mm_backward(gy, x, U, V, bias, extra, needs):
    return ref.lowrank_mm_backward(gy, x, U, V, bias, ct=ct_of(x), needs=needs[:4])
