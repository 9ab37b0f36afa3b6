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
                      compute_dtype, masked_cg, result, ridge, solve_right)
from .lowrank import svd_factors

_CG_STEPS = 8


def _pattern_mask(M: torch.Tensor, scores: torch.Tensor | None = None) -> torch.Tensor:
    """Boolean 2:4 mask of M (kept entries of prune_24(M, scores)), exact zeros included."""
    kept = _prune_pattern(M, scores).indices()
    return torch.zeros_like(M, dtype=torch.bool).scatter(1, kept, True)


def _better(best, residual, *factors):
    """Keep the iterate with the smallest residual (every step is checked, so more iterations
    never return a worse fit)."""
    err = torch.linalg.matrix_norm(residual)
    return (err, *factors) if err < best[0] else best


def _init(W: torch.Tensor, k: int, random_side: int):
    """Truncated-SVD start (U (out, k), V (in, k)), W ~ U V.T. When k exceeds rank(W)'s bound
    min(out, in), the extra directions start at zero on one side and random (seeded) on the
    other (``random_side`` 0: U, 1: V), so the first least-squares step puts them to use."""
    U, V = svd_factors(W, min(k, *W.shape))
    extra = k - U.shape[1]
    if extra > 0:
        g = torch.Generator(device=W.device).manual_seed(0)
        scale = float(U.norm() + V.norm()) / (U.shape[1] * (U.shape[0] + V.shape[0])) ** 0.5
        pads = [torch.zeros(n, extra, dtype=W.dtype, device=W.device) for n in (U.shape[0],
                                                                                V.shape[0])]
        pads[random_side] = scale * torch.randn(pads[random_side].shape, generator=g,
                                                dtype=W.dtype, device=W.device)
        U, V = torch.cat([U, pads[0]], 1), torch.cat([V, pads[1]], 1)
    return U, V


def _fit_ds(W: torch.Tensor, k: int, iters: int):
    """W (out, in) ~ D (out, k) @ S (k, in), S 2:4 along in. Returns (D, S dense)."""
    U, V = _init(W, k, random_side=1)
    D, S = U, _prune_pattern(V.T.contiguous()).to_dense()
    best = (torch.linalg.matrix_norm(W - D @ S), D, S)
    for _ in range(iters):
        D = solve_right(W @ S.T, S @ S.T)
        best = _better(best, W - D @ S, D, S)
        G = D.T @ D
        S_free = torch.linalg.solve(ridge(G), D.T @ W)
        # Pruning S[i, j] costs about |S_ij| ||D[:, i]||: constant inside a group of S's row i,
        # so plain magnitude.
        mask = _pattern_mask(S_free)
        S = masked_cg(S_free * mask, mask, lambda T: G @ T, D.T @ W, _CG_STEPS)
        best = _better(best, W - D @ S, D, S)
    return best[1], best[2]


def _fit_sd(W: torch.Tensor, k: int, iters: int):
    """W (out, in) ~ S (out, k) @ D (k, in), S 2:4 along k. Returns (S dense, D)."""
    U, V = _init(W, k, random_side=0)
    S, D = _prune_pattern(U).to_dense(), V.T.contiguous()
    best = (torch.linalg.matrix_norm(W - S @ D), S, D)
    for _ in range(iters):
        D = torch.linalg.solve(ridge(S.T @ S), S.T @ W)
        best = _better(best, W - S @ D, S, D)
        G = D @ D.T
        WD = W @ D.T
        S_free = solve_right(WD, G)
        # Pruning S[i, j] costs about |S_ij| ||D[j, :]||, which varies inside a group.
        scores = S_free.abs() * torch.linalg.vector_norm(D, dim=1)
        mask = _pattern_mask(S_free, scores)
        S = masked_cg(S_free * mask, mask, lambda T: T @ G, WD, _CG_STEPS)
        best = _better(best, W - S @ D, S, D)
    return best[1], best[2]


def dense_sparse(W: torch.Tensor, k: int, order: str = "ds", iters: int = 10,
                 X: torch.Tensor | None = None) -> Factorization:
    """Fit a dense and a 2:4 sparse factor to W (out, in) with inner dimension k.

    order "ds": factors (D (out, k), S Sparse24 (k, in)), W ~ D @ S (in % 4 == 0).
    order "sd": factors (S Sparse24 (out, k), D (k, in)), W ~ S @ D (k % 4 == 0).
    k >= 1 (a multiple of 4 for "sd"); k > min(out, in) is allowed (the sparse factor holds
    only half its entries), its extra directions start random.
    iters >= 0 alternating steps. X (N, in): only for the output error.
    """
    check_weight(W)
    out_f, in_f = W.shape
    if order not in ("ds", "sd"):
        raise ValueError(f"order must be 'ds' (W ~ D @ S) or 'sd' (W ~ S @ D), got {order!r}")
    check_positive_int("k", k)
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
