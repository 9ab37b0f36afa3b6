"""What every factorizer shares: the result type, argument checks, the compute dtype and the
error measures (always computed in float64)."""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..formats._common import check_float


class Factorization(NamedTuple):
    """A factorizer's result.

    ``factors``: the family's factors (see each function). ``error``:
    ``||W - W_hat||_F / ||W||_F``. ``output_error``: ``||X W.T - X W_hat.T||_F / ||X W.T||_F``
    when calibration activations X were given, else None. Both computed in float64.
    """

    factors: object
    error: float
    output_error: float | None


def check_weight(W) -> None:
    check_float("W", W)
    if W.dim() != 2 or W.numel() == 0:
        raise ValueError(f"W must be a non-empty 2-D (out, in) matrix, got shape "
                         f"{tuple(W.shape)}")
    if not bool(torch.isfinite(W).all()):
        raise ValueError("W has NaN or Inf entries")


def check_calibration(X, in_features: int):
    """X (..., in) float or None -> X flattened to (N, in), or None."""
    if X is None:
        return None
    check_float("X", X)
    if X.dim() < 1 or X.shape[-1] != in_features or X.numel() == 0:
        raise ValueError(f"X must be calibration activations (N, {in_features}) (or (..., "
                         f"{in_features})), got shape {tuple(X.shape)}")
    return X.reshape(-1, in_features)


def check_positive_int(name: str, value, upper: int | None = None, what: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1 or (upper is not None and value > upper):
        rng = f"1..{upper}" if upper is not None else ">= 1"
        raise ValueError(f"{name}={value} must be in {rng}{what}")
    return value


def compute_dtype(W: torch.Tensor) -> torch.dtype:
    """float64 stays float64; every other dtype is factorized in float32."""
    return torch.float64 if W.dtype == torch.float64 else torch.float32


def rel_error(W: torch.Tensor, W_hat: torch.Tensor) -> float:
    W64 = W.to(torch.float64)
    den = torch.linalg.matrix_norm(W64)
    num = torch.linalg.matrix_norm(W64 - W_hat.to(device=W.device, dtype=torch.float64))
    return float(num / den) if den > 0 else float(num)


def rel_output_error(W: torch.Tensor, W_hat: torch.Tensor, X) -> float | None:
    if X is None:
        return None
    X64 = X.to(device=W.device, dtype=torch.float64)
    W64 = W.to(torch.float64)
    den = torch.linalg.matrix_norm(X64 @ W64.T)
    num = torch.linalg.matrix_norm(X64 @ (W64 - W_hat.to(device=W.device,
                                                          dtype=torch.float64)).T)
    return float(num / den) if den > 0 else float(num)


def result(factors, W: torch.Tensor, W_hat: torch.Tensor, X) -> Factorization:
    return Factorization(factors, rel_error(W, W_hat), rel_output_error(W, W_hat, X))


def svd(W: torch.Tensor):
    """Thin SVD (U, S, Vh) of a (batched) matrix."""
    return torch.linalg.svd(W, full_matrices=False)


def ridge(G: torch.Tensor, rel: float | None = None) -> torch.Tensor:
    """G + eps I (G symmetric PSD, batched too) with eps relative to G's largest diagonal entry:
    keeps normal equations solvable when a factor is rank deficient (a pruned-away direction),
    negligible otherwise."""
    if rel is None:
        rel = 10 * torch.finfo(G.dtype).eps
    scale = G.diagonal(dim1=-2, dim2=-1).abs().amax(-1).clamp_min(1e-30)
    eye = torch.eye(G.shape[-1], dtype=G.dtype, device=G.device)
    return G + (rel * scale)[..., None, None] * eye


def solve_right(B: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """B @ inv(G) for symmetric PSD G (batched too), with a relative ridge."""
    return torch.linalg.solve(ridge(G), B.transpose(-1, -2)).transpose(-1, -2)


def masked_cg(S: torch.Tensor, mask: torch.Tensor, apply, rhs: torch.Tensor,
              steps: int) -> torch.Tensor:
    """Minimize 0.5 <S, apply(S)> - <rhs, S> over S with support ``mask`` by conjugate
    gradients started from S (``apply`` symmetric PSD, S zero off the mask). Every step lowers
    the objective and S stays zero off the mask."""
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
