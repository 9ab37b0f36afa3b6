"""2:4 pruning of a dense W (out, in): keep 2 of every 4 consecutive weights of each row.

Scores: ``|W|`` (magnitude), or, given calibration activations X (N, in), Wanda's
``|W_ij| * ||X[:, j]||_2`` (Sun et al. 2023, "A Simple and Effective Pruning Approach for LLMs"):
a weight matters as much as the inputs it multiplies. The 2:4 groups run along ``in``, the
reduction axis of ``x @ W.T``, the orientation sparse tensor cores accelerate.
"""

from __future__ import annotations

import torch

from ..formats.sparse24 import prune_24 as _prune_pattern
from ._common import Factorization, check_calibration, check_weight, result


def wanda_scores(W: torch.Tensor, X) -> torch.Tensor:
    """|W| times the column norms of X (N, in), in float64; plain |W| when X is None."""
    scores = W.abs().to(torch.float64)
    if X is not None:
        scores = scores * torch.linalg.vector_norm(
            X.to(device=W.device, dtype=torch.float64), dim=0)
    return scores


def prune_24(W: torch.Tensor, X: torch.Tensor | None = None) -> Factorization:
    """Prune W (out, in) to 2:4 along ``in`` (in % 4 == 0).

    X: optional calibration activations (N, in) (or (..., in)): Wanda-style scores and the
    output error. Returns Factorization(factors=Sparse24 (out, in) in W's dtype, error,
    output_error).
    """
    check_weight(W)
    if W.shape[1] % 4:
        raise ValueError(f"W must have in = W.shape[1] a multiple of 4 for 2:4 pruning, got "
                         f"shape {tuple(W.shape)}")
    X = check_calibration(X, W.shape[1])
    S = _prune_pattern(W, wanda_scores(W, X))
    return result(S, W, S.to_dense(), X)
