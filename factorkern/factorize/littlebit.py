"""LittleBit's Dual-SVID initialization (Lee et al. 2025, "LittleBit: Ultra Low-Bit Quantization
via Latent Factorization"), with its residual term.

One term approximates W (out, in) as ``diag(h) sign(U) diag(l) sign(V).T diag(g)``:

1. truncated SVD W ~ U' V'.T with U' = U_r sqrt(S_r) (out, r), V' = V_r sqrt(S_r) (in, r);
2. the signs: sign(U'), sign(V') (sign(0) = +1, as SignBits packs them);
3. the magnitudes by rank-1 approximations (leading singular pair, non-negative by
   Perron-Frobenius): |U'| ~ h lu.T, |V'| ~ g lv.T, so l = lu * lv (the paper's u1 = h,
   v2 = g, u2 * v1 = l);
4. (ours, never worse) h is refitted row by row by least squares given everything else: the
   rank-1 magnitude fits ignore how the signs recombine, and the refit recovers most of that.

The residual term (``residual=True``, the paper's second path of the same form and rank) is
the same construction on what remains, W - W_hat_1. The factors are an initialization: the
paper then trains the latent U, V (SmoothSign straight-through) and the scales (QAT).
"""

from __future__ import annotations

import torch

from ..formats.littlebit import LittleBitFactors
from ._common import (Factorization, check_calibration, check_positive_int, check_weight,
                      compute_dtype, result, svd)
from .lowrank import svd_factors


def _rank1_nonneg(M: torch.Tensor):
    """Best rank-1 approximation a b.T of a non-negative matrix M, with a, b >= 0."""
    U, S, Vh = svd(M)
    a, b = U[:, 0].abs(), Vh[0].abs()
    return a * S[0].sqrt(), b * S[0].sqrt()


def _term(W: torch.Tensor, r: int):
    """One Dual-SVID term of W: real (U', V') carrying the signs, scales h, l, g, and W_hat."""
    Ur, Vr = svd_factors(W, r)
    h, lu = _rank1_nonneg(Ur.abs())
    g, lv = _rank1_nonneg(Vr.abs())
    l = lu * lv
    su = torch.where(Ur >= 0, 1.0, -1.0).to(W.dtype)
    sv = torch.where(Vr >= 0, 1.0, -1.0).to(W.dtype)
    core = (su * l) @ (sv * g[:, None]).T  # W_hat = diag(h) core
    # Least-squares h per row: argmin_h ||W_i - h_i core_i||.
    num = (W * core).sum(1)
    den = (core * core).sum(1)
    h = torch.where(den > 0, num / den.clamp_min(torch.finfo(W.dtype).tiny), h)
    # The sign carried by h (rare: a row whose refit flips) goes into U's signs so h >= 0.
    flip = h < 0
    su = torch.where(flip[:, None], -su, su)
    h = h.abs()
    return su, sv, h, l, g, h[:, None] * core


def littlebit(W: torch.Tensor, r: int, residual: bool = True,
              X: torch.Tensor | None = None) -> Factorization:
    """Dual-SVID initialization of LittleBit factors of W (out, in) at rank r
    (1 <= r <= min(out, in)), with the residual term when ``residual``.

    Returns Factorization(factors=LittleBitFactors (1 or 2 terms, scales in W's dtype), error,
    output_error given X (N, in)).
    """
    check_weight(W)
    out_f, in_f = W.shape
    check_positive_int("r", r, min(out_f, in_f), f" (W is {out_f} x {in_f})")
    if not isinstance(residual, bool):
        raise TypeError(f"residual must be a bool, got {type(residual).__name__}")
    X = check_calibration(X, in_f)
    Wc = W.to(compute_dtype(W))
    terms, W_hat = [], torch.zeros_like(Wc)
    for _ in range(2 if residual else 1):
        su, sv, h, l, g, Wt = _term(Wc - W_hat, r)
        W_hat = W_hat + Wt
        terms.append((su.to(W.dtype), sv.to(W.dtype), h.to(W.dtype), l.to(W.dtype),
                      g.to(W.dtype)))
    F = LittleBitFactors.from_real(terms)
    return result(F, W, F.to(torch.float64).to_dense(), X)
