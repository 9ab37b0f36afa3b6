"""ARMOR initialization (Liu et al. 2025, "ARMOR: High-Performance Semi-Structured Pruning via
Adaptive Matrix Factorization", reference repo LawrenceRLiu/ARMOR): W (out, in) ~ A @ S @ B with
A block-diagonal (out, out), S 2:4 along ``in`` and B block-diagonal (in, in), blocks of size
``block``.

Start from A = B = I and S = the 2:4 pruning of W (Wanda scores given X), then block-coordinate
descent on the (activation-weighted) error

    f(A, S, B) = tr(E C E.T),  E = W - A S B,  C = X.T X + damp I  (C = I without X)

(the output error ||X W.T - X W_hat.T||^2, damped by 1 % of C's mean diagonal as SparseGPT
does, so directions X never excites still count a little). Each iteration:

- S-step: the kept values of S (pattern fixed) by conjugate gradients on the normal equations
  A.T A S (B C B.T) = A.T W C B.T;
- A-step: exact least squares per diagonal block of A (rows of A S B of that block);
- B-step: exact least squares per diagonal block of B, one block at a time (C couples them).

Every step lowers f (up to the tiny relative ridge that keeps the solves regular), and the best
iterate by the undamped error is returned, the plain 2:4 pruning itself included: ARMOR is never
worse than plain 2:4 pruning with the same scores. The pattern of S stays the one of that
pruning; only its kept values, A and B move.
"""

from __future__ import annotations

import torch

from ..formats.blockdiag import BlockDiag, blockdiag_apply, blockdiag_apply_t
from ..formats.sparse24 import Sparse24
from ..formats.sparse24 import prune_24 as _prune_pattern
from ._common import (Factorization, check_calibration, check_positive_int, check_weight,
                      compute_dtype, masked_cg, result, ridge, solve_right)
from .sparse24 import wanda_scores

_CG_STEPS = 10
_DAMP = 0.01


def _left(blocks: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """block_diag(blocks) @ M."""
    return blockdiag_apply(M.T, blocks).T


def _product(A, S, B):
    """A @ S @ B with A, B given by their blocks."""
    return blockdiag_apply_t(_left(A, S), B)


class _Metric:
    """Products with C = X.T X + damp I (or the identity without X) and the reported error.

    With fewer calibration rows N than in / 2, M @ C is computed as (M @ X.T) @ X + damp M
    (4 out in N flops instead of 2 out in^2); the B-step needs C's blocks and builds C once.
    """

    def __init__(self, X, n: int, dtype, device):
        self.X = None if X is None else X.to(device=device, dtype=dtype)
        self._C = None
        if self.X is not None:
            self.damp = _DAMP * (self.X * self.X).sum() / n  # 1 % of mean(diag(X.T X))

    @property
    def C(self):
        if self.X is not None and self._C is None:
            n = self.X.shape[1]
            eye = torch.eye(n, dtype=self.X.dtype, device=self.X.device)
            self._C = self.X.T @ self.X + self.damp * eye
        return self._C

    def right(self, M):
        if self.X is None:
            return M
        if 2 * self.X.shape[0] < self.X.shape[1]:
            return (M @ self.X.T) @ self.X + self.damp * M
        return M @ self.C

    def true_error(self, E) -> torch.Tensor:
        """The reported objective: ||E||_F^2, or ||X E.T||_F^2 (undamped), in float64."""
        E = E.to(torch.float64)
        if self.X is not None:
            E = E @ self.X.T.to(torch.float64)
        return (E * E).sum()


def _s_step(W, A, S, B, mask, metric):
    AtA = A.transpose(1, 2) @ A  # blocks of A.T A

    def right(T):  # T @ (B C B.T)
        return blockdiag_apply(metric.right(blockdiag_apply_t(T, B)), B)

    rhs = blockdiag_apply(metric.right(_left(A.transpose(1, 2), W)), B)  # A.T W C B.T
    return masked_cg(S, mask, lambda T: right(_left(AtA, T)), rhs, _CG_STEPS)


def _a_step(W, A, S, B, metric):
    nb, blk, _ = A.shape
    P = blockdiag_apply_t(S, B)  # S B (out, in)
    PC = metric.right(P)
    Pb, PCb, Wb = (t.reshape(nb, blk, -1) for t in (P, PC, W))
    G = Pb @ PCb.transpose(1, 2)  # P_b C P_b.T
    num = Wb @ PCb.transpose(1, 2)  # W_b C P_b.T
    return solve_right(num, G)


def _b_step(W, A, S, B, metric):
    nb, blk, _ = B.shape
    Q = _left(A, S)  # A S (out, in)
    B = B.clone()
    if metric.X is None:
        Qb = Q.reshape(-1, nb, blk).transpose(0, 1)  # (nb, out, blk)
        Wb = W.reshape(-1, nb, blk).transpose(0, 1)
        # (Q B)[:, block b] = Q_b @ B_b: independent least squares per block.
        return torch.linalg.solve(ridge(Qb.transpose(1, 2) @ Qb), Qb.transpose(1, 2) @ Wb)
    C = metric.C
    E = W - blockdiag_apply_t(Q, B)
    EC = E @ C
    for b in range(nb):
        cols = slice(b * blk, (b + 1) * blk)
        Qb = Q[:, cols]
        # argmin over Delta of tr((E - Q_b Delta J_b) C (...).T):
        # Delta = inv(Q_b.T Q_b) Q_b.T (E C)[:, b] inv(C_bb)
        lhs = torch.linalg.solve(ridge(Qb.T @ Qb), Qb.T @ EC[:, cols])
        delta = solve_right(lhs, C[cols, cols])
        B[b] += delta
        step = Qb @ delta  # change of (A S B)[:, block b]
        EC -= step @ C[cols, :]
    return B


def armor(W: torch.Tensor, block: int | tuple[int, int] = 128, X: torch.Tensor | None = None,
          iters: int = 20) -> Factorization:
    """ARMOR factors of W (out, in): A BlockDiag (out, out), S Sparse24 (out, in), B BlockDiag
    (in, in), W ~ A @ S @ B, with square blocks of size ``block`` (dividing out and in;
    in % 4 == 0), or ``block=(bA, bB)``: blocks of size bA for A (dividing out) and bB for B
    (dividing in), as ARMOR's reference code allows. X (N, in): calibration activations
    weighting the fit (and Wanda scores for the initial pattern). ``iters`` >= 0
    block-coordinate descent sweeps.

    Returns Factorization(factors=(A, S, B) in W's dtype, error, output_error given X).
    """
    check_weight(W)
    out_f, in_f = W.shape
    block_a, block_b = (block, block) if not isinstance(block, (tuple, list)) else tuple(block)
    check_positive_int("block", block_a)
    check_positive_int("block", block_b)
    if out_f % block_a or in_f % block_b:
        raise ValueError(f"block={block} must divide both out={out_f} and in={in_f} of W "
                         "(A is (out, out) and B (in, in) in square blocks of that size)")
    if in_f % 4:
        raise ValueError(f"W must have in = W.shape[1] a multiple of 4 for 2:4, got {in_f}")
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 0:
        raise ValueError(f"iters must be an int >= 0, got {iters!r}")
    X = check_calibration(X, in_f)
    dt = compute_dtype(W)
    Wc = W.to(dt)
    metric = _Metric(X, in_f, dt, W.device)
    pattern = _prune_pattern(Wc, wanda_scores(Wc, X))
    S = pattern.to_dense()
    mask = torch.zeros_like(S, dtype=torch.bool).scatter(1, pattern.indices(), True)
    eye_a = torch.eye(block_a, dtype=dt, device=W.device)
    eye_b = torch.eye(block_b, dtype=dt, device=W.device)
    A = eye_a.expand(out_f // block_a, block_a, block_a).clone()
    B = eye_b.expand(in_f // block_b, block_b, block_b).clone()
    best = (metric.true_error(Wc - S), A, S, B)
    for _ in range(iters):
        S = _s_step(Wc, A, S, B, mask, metric)
        A = _a_step(Wc, A, S, B, metric)
        B = _b_step(Wc, A, S, B, metric)
        err = metric.true_error(Wc - _product(A, S, B))
        if not bool(torch.isfinite(err)):
            break
        if err < best[0]:
            best = (err, A, S, B)
    _, A, S, B = best
    A, B = BlockDiag(A.to(W.dtype).contiguous()), BlockDiag(B.to(W.dtype).contiguous())
    S = Sparse24(S.gather(1, pattern.indices()).to(W.dtype).contiguous(), pattern.meta, in_f)
    W_hat = _product(A.blocks.to(torch.float64), S.to_dense().to(torch.float64),
                     B.blocks.to(torch.float64))
    return result((A, S, B), W, W_hat, X)
