"""Library path of Monarch: fly's bmm algorithm (``blockdiag_butterfly_multiply``): one bmm per
block-diagonal factor, the permutation between them a copy, in the compute dtype. The backward
is the oracle's formulas (``factorkern.reference.monarch``, bmm-based) in that dtype."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import reference as ref
from ._common import cast, ct_of


def monarch_bmm(x, w1, w2, out_features):
    """y = x @ W.T for W the Monarch matrix of w1 (k, q, p), w2 (l, s, r); x (N, in) with
    in <= k * p (zero-padded like fly's StructuredLinear). Returns (N, out_features)."""
    n = x.shape[0]
    k, q, p = w1.shape
    l, s, r = w2.shape
    if x.shape[1] < k * p:
        x = F.pad(x, (0, k * p - x.shape[1]))
    t = torch.bmm(x.reshape(n, k, p).transpose(0, 1), w1.transpose(1, 2))      # (k, n, q)
    t = t.transpose(0, 1).reshape(n, r, l).permute(2, 0, 1).contiguous()       # (l, n, r)
    u = torch.bmm(t, w2.transpose(1, 2))                                       # (l, n, s)
    return u.permute(1, 2, 0).reshape(n, s * l)[:, :out_features]


def monarch_mm(x, w1, w2, out_features, bias, extra):
    ct = ct_of(x)
    y = monarch_bmm(cast(x, ct), cast(w1, ct), cast(w2, ct), out_features)
    if bias is not None:
        y = y + cast(bias, ct)
    return y.to(x.dtype)


def monarch_mm_backward(gy, x, w1, w2, out_features, bias, extra, needs):
    dx, d1, d2, db = ref.monarch_mm_backward(gy, x, w1, w2, out_features, bias, ct=ct_of(x),
                                             needs=(needs[0], needs[1], needs[2], needs[4]))
    return dx, d1, d2, None, db
