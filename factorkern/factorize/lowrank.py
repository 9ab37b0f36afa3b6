"""Low rank: the truncated SVD, W (out, in) ~ U @ V.T with U (out, r), V (in, r).

Eckart-Young: the best rank-r approximation in Frobenius norm. The singular values are split
evenly, U = U_r sqrt(S_r), V = V_r sqrt(S_r), so both factors have the same scale (better for
half precision and for training them afterwards).
"""

from __future__ import annotations

import torch

from ._common import (Factorization, check_calibration, check_positive_int, check_weight,
                      compute_dtype, result, svd)


def svd_factors(W: torch.Tensor, r: int):
    """(U (out, r), V (in, r)) with U @ V.T the best rank-r approximation of W (W's dtype)."""
    U, S, Vh = svd(W)
    root = S[:r].sqrt()
    return U[:, :r] * root, Vh[:r].T * root


def lowrank(W: torch.Tensor, r: int, X: torch.Tensor | None = None) -> Factorization:
    """Truncated SVD of W (out, in) at rank r (1 <= r <= min(out, in)).

    Returns Factorization(factors=(U (out, r), V (in, r)) in W's dtype, W ~ U @ V.T, error,
    output_error given X (N, in)).
    """
    check_weight(W)
    out_f, in_f = W.shape
    check_positive_int("r", r, min(out_f, in_f), f" (W is {out_f} x {in_f})")
    X = check_calibration(X, in_f)
    U, V = svd_factors(W.to(compute_dtype(W)), r)
    U, V = U.to(W.dtype).contiguous(), V.to(W.dtype).contiguous()
    return result((U, V), W, U.to(torch.float64) @ V.to(torch.float64).T, X)
