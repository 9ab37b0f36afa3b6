"""Monarch projection: the closest Monarch matrix to W in Frobenius norm (Dao et al. 2022,
"Monarch: Expressive Structured Matrices", fly's ``blockdiag_butterfly_project``).

In fly's convention (factorkern.formats.monarch) with w1 (k, q, p) and w2 (l, s, r), every
middle channel c in [0, k q) is one row of a w1 block and one column of a w2 block:
c = a q + j (row j of w1[a]) = rr l + ll (column rr of w2[ll]). Writing out
y = x @ W.T gives

    W[m l + ll, a p + i] = sum over c with c // q = a and c % l = ll of w2[ll, m, rr] w1[a, j, i]

so the (s, p) block B[ll, a][m, i] = W[m l + ll, a p + i] is a sum of |C(a, ll)| rank-1 terms
and no parameter is shared between blocks. The optimal projection is therefore one truncated SVD
per block: keep the |C(a, ll)| leading singular triplets and hand one to each channel of
C(a, ll) (split as sqrt(sigma) u into w2, sqrt(sigma) v into w1). For the paper's square case
(n = b^2, nblocks = b) every block has rank 1, fly's rank-1 projection.

rank > 1 (our choice, documented): the middle dimension is widened ``rank`` times, w1
(k, rank q, p) and w2 (l, s, rank r) with fly's (k, q, p), (l, s, r) for rank 1; every block then
holds ``rank`` times as many channels (in the square case nblocks = sqrt(n): rank ``rank`` per
block), like fly's rank-r Monarch, and the projection stays one SVD per block.

Features that are not multiples of nblocks are padded like fly's StructuredLinear: W is
zero-padded to (l s, k p) before the projection (the padded rows and columns are never used, so
this is a valid but not always the optimal fit of the unpadded W).
"""

from __future__ import annotations

import torch

from ..formats.monarch import MonarchFactors
from ._common import (Factorization, check_calibration, check_positive_int, check_weight,
                      compute_dtype, result, svd)


def monarch_shapes(in_features: int, out_features: int, nblocks: int, rank: int = 1):
    """Shapes (w1, w2) of the projection: fly's MonarchLinear shapes with the middle dimension
    widened ``rank`` times."""
    (k, q, p), (l, s, r) = MonarchFactors.fly_shapes(in_features, out_features, nblocks)
    return (k, rank * q, p), (l, s, rank * r)


def project(W: torch.Tensor, w1_shape, w2_shape):
    """Optimal (w1, w2) of the given shapes for W (l s, k p) (already padded), W's dtype."""
    k, q, p = w1_shape
    l, s, r = w2_shape
    if l * r != k * q or W.shape != (l * s, k * p):
        raise ValueError(f"Monarch shapes w1 {tuple(w1_shape)}, w2 {tuple(w2_shape)} do not fit "
                         f"W of shape {tuple(W.shape)}")
    # blocks[ll, a] (s, p) = W[m l + ll, a p + i]
    blocks = W.reshape(s, l, k, p).permute(1, 2, 0, 3)
    U, S, Vh = svd(blocks)  # (l, k, s, t), (l, k, t), (l, k, t, p), t = min(s, p)
    t_max = S.shape[-1]
    c = torch.arange(k * q, device=W.device)
    a, j = c // q, c % q
    rr, ll = c // l, c % l
    # Position of channel c among the channels of its block pair (a, ll), in increasing c.
    pair = ll * k + a
    order = torch.argsort(pair * (k * q) + c)
    first = torch.searchsorted(pair[order], pair[order])
    slot = torch.empty_like(c)
    slot[order] = torch.arange(k * q, device=W.device) - first
    # A pair with more channels than min(s, p) gets zero channels beyond its full rank.
    live = slot < t_max
    slot = slot.clamp(max=t_max - 1)
    root = S[ll, a, slot].sqrt() * live  # (K,)
    cols = U[ll, a, :, slot] * root[:, None]  # (K, s): column rr of w2[ll]
    rows = Vh[ll, a, slot, :] * root[:, None]  # (K, p): row j of w1[a]
    w1 = W.new_zeros(k, q, p)
    w1[a, j] = rows
    w2 = W.new_zeros(l, s, r)
    w2[ll, :, rr] = cols
    return w1, w2


def monarch(W: torch.Tensor, nblocks: int = 4, rank: int = 1,
            X: torch.Tensor | None = None) -> Factorization:
    """Project W (out, in) onto Monarch matrices with ``nblocks`` blocks (fly's MonarchLinear
    shapes for rank 1; the middle dimension widened ``rank`` times otherwise).

    Returns Factorization(factors=MonarchFactors in W's dtype, error, output_error given X).
    """
    check_weight(W)
    out_f, in_f = W.shape
    check_positive_int("nblocks", nblocks, min(out_f, in_f), f" (W is {out_f} x {in_f})")
    check_positive_int("rank", rank)
    X = check_calibration(X, in_f)
    s1, s2 = monarch_shapes(in_f, out_f, nblocks, rank)
    k, _, p = s1
    l, s, _ = s2
    Wc = W.to(compute_dtype(W))
    Wc = torch.nn.functional.pad(Wc, (0, k * p - in_f, 0, l * s - out_f))
    w1, w2 = project(Wc, s1, s2)
    M = MonarchFactors(w1.to(W.dtype), w2.to(W.dtype), in_f, out_f)
    return result(M, W, M.to(torch.float64).to_dense(), X)
