"""Calibration for ``fk.nn.convert``: each layer's input statistics, collected with forward
hooks in bounded memory, handed to the factorizers that weigh by activations.

What a factorizer needs from the inputs X (N, in) of a layer is, at most, the Gram matrix
X.T X: Wanda's 2:4 scores use its diagonal (the column norms of X), ARMOR's fit weighs the error
by X.T X, and the dense-sparse factorizers report the output error ||X (W - W_hat).T||, which
X.T X gives too. So per layer this keeps

- ``"norms"`` (Wanda-only families): the running sum of squares per input feature, (in,);
- ``"gram"``: the rows themselves while there are at most ``in`` of them, then the running
  X.T X (in, in): never more than in * in numbers, however many batches are seen.

``Stats.X()`` returns an X_eff with the same statistics for the factorizers: the rows kept, or
a square root of X.T X (X_eff.T X_eff = X.T X, from its eigendecomposition), or one row of
column norms for ``"norms"`` (its output errors mean nothing, and are not reported).
Accumulation is float32 (float64 for float64 models).
"""

from __future__ import annotations

import sys

import torch
from torch import nn

# What each family's from_linear does with X: "norms" (Wanda scores only) or "gram".
CALIBRATED = {"sparse24": "norms", "armor": "gram", "dense_sparse": "gram",
              "sparse_dense": "gram"}


class Stats:
    """Running input statistics of one layer (see the module docstring)."""

    def __init__(self, in_features: int, mode: str):
        if mode not in ("norms", "gram"):
            raise ValueError(f"mode must be 'norms' or 'gram', got {mode!r}")
        self.in_features, self.mode = in_features, mode
        self.rows = 0
        self.sumsq = None   # (in,) for "norms"
        self.sample = []    # kept rows for "gram" while rows <= in
        self.gram = None    # (in, in) once rows > in

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, self.in_features)
        dt = torch.float64 if x.dtype == torch.float64 else torch.float32
        x = x.to(dt)
        self.rows += x.shape[0]
        if self.mode == "norms":
            s = (x * x).sum(0)
            self.sumsq = s if self.sumsq is None else self.sumsq + s
            return
        if self.gram is None:
            self.sample.append(x)
            if self.rows <= self.in_features:
                return
            x = torch.cat(self.sample)
            self.sample = []
            self.gram = torch.zeros(self.in_features, self.in_features, dtype=dt,
                                    device=x.device)
        self.gram += x.T @ x

    def nbytes(self) -> int:
        ts = [self.sumsq, self.gram, *self.sample]
        return sum(t.numel() * t.element_size() for t in ts if t is not None)

    def X(self) -> torch.Tensor | None:
        """X_eff (rows, in) with X_eff.T X_eff = X.T X (column norms only for "norms")."""
        if self.rows == 0:
            return None
        if self.mode == "norms":
            return self.sumsq.sqrt()[None, :]
        if self.gram is None:
            return torch.cat(self.sample)
        lam, Q = torch.linalg.eigh(self.gram.to(torch.float64))
        return (lam.clamp_min(0).sqrt()[:, None] * Q.T).to(self.gram.dtype)


def _call(model, batch):
    if isinstance(batch, dict):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


@torch.no_grad()
def collect(model: nn.Module, layers: dict[str, tuple[nn.Module, str]], batches,
            log=None) -> dict[str, Stats]:
    """Run ``model`` on every batch (a tensor, a tuple of positional arguments or a dict of
    keyword arguments) with a forward pre-hook on each of ``layers`` ({name: (module,
    mode)}), and return {name: Stats}. Hooks are removed afterwards, even on error."""
    stats = {n: Stats(m.in_features, mode) for n, (m, mode) in layers.items()}
    handles = [m.register_forward_pre_hook(lambda mod, args, n=n: stats[n].add(args[0]))
               for n, (m, _) in layers.items()]
    try:
        for i, batch in enumerate(batches):
            _call(model, batch)
            if log is not None:
                log(f"calibration: batch {i + 1}")
    finally:
        for h in handles:
            h.remove()
    return stats


class Progress:
    """A one-line progress bar over the layers on stderr: ``[####----] 12/36 name (family)``."""

    def __init__(self, total: int, enabled: bool, stream=None):
        self.total, self.enabled = total, enabled and total > 0
        self.stream = stream or sys.stderr
        self.done = 0

    def show(self, text: str) -> None:
        if self.enabled:
            width = 20
            fill = width * self.done // self.total
            self.stream.write(f"\r[{'#' * fill}{'-' * (width - fill)}] {self.done}/{self.total} "
                              f"{text}\033[K")
            self.stream.flush()

    def step(self, text: str) -> None:
        self.done += 1
        self.show(text)

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()
