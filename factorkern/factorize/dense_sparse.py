"""Dense x 2:4-sparse factorization by alternating least squares with re-pruning.

order "ds": W (out, in) ~ D @ S with D (out, k) dense and S (k, in) 2:4 along ``in``;
order "sd": W ~ S @ D with S (out, k) 2:4 along ``k`` and D (k, in) dense. (2:4 is always along
the reduction axis of the product S is used in: ``x @ S.T`` in "ds", ``(x @ D.T) @ S.T`` in "sd".)

This is the task-unaware initialization DSFormer (Dense basis x Semi-structured sparse
coefficients) starts from; DSFormer's Straight-Through Factorizer then trains D and S end to end
on the task loss (sparse pattern re-chosen in the forward pass, gradients passed straight
through). Here, the fit of ||W - W_hat||_F:

    init: truncated SVD at rank k, the singular values split between the factors, S pruned
    repeat ``iters`` times:
      D-step: exact least squares for D given S
      S-step: unconstrained least squares for S given D, re-pruned to 2:4 (score |S| times the
              norm of the D vector it multiplies), then its kept values refined by conjugate
              gradients on the fixed pattern
    return the best iterate seen (so more iterations never make it worse).

Given X (N, in) only the output error is reported: the fit itself is unweighted.
"""

from __future__ import annotations

import torch

from ..formats.sparse24 import Sparse24
from ..formats.sparse24 import prune_24 as _prune_pattern
from ._common import (Factorization, check_calibration, check_positive_int, check_weight,
                      compute_dtype, result)
from .lowrank import svd_factors

_CG_STEPS = 8


def _ridge(G: torch.Tensor) -> torch.Tensor:
    """G + eps I with eps relative to G's scale: keeps the normal equations solvable when a
    factor is rank deficient (a pruned-away direction), negligible otherwise."""
    eps = torch.finfo(G.dtype).eps * 10 * G.diagonal().abs().max().clamp_min(1e-30)
    return G + eps * torch.eye(G.shape[0], dtype=G.dtype, device=G.device)


def _solve_right(B: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """B @ inv(G) for symmetric PSD G."""
    return torch.linalg.solve(_ridge(G), B.T).T


def masked_cg(S: torch.Tensor, mask: torch.Tensor, apply, rhs: torch.Tensor,
              steps: int) -> torch.Tensor:
    """Minimize 0.5 <S, apply(S)> - <rhs, S> over S with support ``mask`` by conjugate
    gradients from S (``apply`` symmetric PSD). Each step lowers the objective."""
    m = mask.to(S.dtype)
    res = (rhs - apply(S)) * m
    d = res.clone()
    rr = (res * res).sum()
    for _ in range(steps):
        if rr <= 0:
            break
        Ad = apply(d) * m
        dAd = (d * Ad).sum()
        if dAd <= 0:
            break
        alpha = rr / dAd
        S = S + alpha * d
        res = res - alpha * Ad
        rr_new = (res * res).sum()
        d = res + (rr_new / rr) * d
        rr = rr_new
    return S


def _fit_ds(W: torch.Tensor, k: int, iters: int):
    """W (out, in) ~ D (out, k) @ S (k, in), S 2:4 along in. Returns (D, S dense)."""
    U, V = svd_factors(W, k)
    D, S = U, _prune_pattern(V.T.contiguous()).to_dense()
    best = (torch.linalg.matrix_norm(W - D @ S), D, S)
    for _ in range(iters):
        D = _solve_right(W @ S.T, S @ S.T)
        G = D.T @ D
        S_free = torch.linalg.solve(_ridge(G), D.T @ W)
        # Pruning S[i, j] costs about |S_ij| ||D[:, i]||: constant inside a group of S's row i,
        # so plain magnitude.
        S = _prune_pattern(S_free).to_dense()
        S = masked_cg(S, S != 0, lambda T: G @ T, D.T @ W, _CG_STEPS)
        err = torch.linalg.matrix_norm(W - D @ S)
        if err < best[0]:
            best = (err, D, S)
    return best[1], best[2]


def _fit_sd(W: torch.Tensor, k: int, iters: int):
    """W (out, in) ~ S (out, k) @ D (k, in), S 2:4 along k. Returns (S dense, D)."""
    U, V = svd_factors(W, k)
    S, D = _prune_pattern(U).to_dense(), V.T.contiguous()
    best = (torch.linalg.matrix_norm(W - S @ D), S, D)
    for _ in range(iters):
        D = torch.linalg.solve(_ridge(S.T @ S), S.T @ W)
        G = D @ D.T
        WD = W @ D.T
        S_free = _solve_right(WD, G)
        # Pruning S[i, j] costs about |S_ij| ||D[j, :]||, which varies inside a group.
        scores = S_free.abs() * torch.linalg.vector_norm(D, dim=1)
        mask = _prune_pattern(S_free, scores).to_dense() != 0
        S = masked_cg(S_free * mask, mask, lambda T: T @ G, WD, _CG_STEPS)
        err = torch.linalg.matrix_norm(W - S @ D)
        if err < best[0]:
            best = (err, S, D)
    return best[1], best[2]


def dense_sparse(W: torch.Tensor, k: int, order: str = "ds", iters: int = 10,
                 X: torch.Tensor | None = None) -> Factorization:
    """Fit a dense and a 2:4 sparse factor to W (out, in) with inner dimension k.

    order "ds": factors (D (out, k), S Sparse24 (k, in)), W ~ D @ S (in % 4 == 0).
    order "sd": factors (S Sparse24 (out, k), D (k, in)), W ~ S @ D (k % 4 == 0).
    k in 1..min(out, in) (and a multiple of 4 for "sd").
    iters >= 0 alternating steps. X (N, in): only for the output error.
    """
    check_weight(W)
    out_f, in_f = W.shape
    if order not in ("ds", "sd"):
        raise ValueError(f"order must be 'ds' (W ~ D @ S) or 'sd' (W ~ S @ D), got {order!r}")
    check_positive_int("k", k, min(out_f, in_f), f" (W is {out_f} x {in_f})")
    if order == "ds":
        if in_f % 4:
            raise ValueError(f"order='ds' puts the 2:4 groups along in: W.shape[1] = {in_f} must "
                             "be a multiple of 4")
    elif k % 4:
        raise ValueError(f"order='sd' puts the 2:4 groups along k: k={k} must be a multiple of 4")
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 0:
        raise ValueError(f"iters must be an int >= 0, got {iters!r}")
    X = check_calibration(X, in_f)
    Wc = W.to(compute_dtype(W))
    if order == "ds":
        D, S = _fit_ds(Wc, k, iters)
        D, S = D.to(W.dtype).contiguous(), S.to(W.dtype)
        factors = (D, Sparse24.from_dense(S))
        W_hat = D.to(torch.float64) @ S.to(torch.float64)
    else:
        S, D = _fit_sd(Wc, k, iters)
        S, D = S.to(W.dtype), D.to(W.dtype).contiguous()
        factors = (Sparse24.from_dense(S), D)
        W_hat = S.to(torch.float64) @ D.to(torch.float64)
    return result(factors, W, W_hat, X)
