"""LowRankLinear: W = U @ V.T."""

from __future__ import annotations

import torch
from torch import nn

from .. import ops
from ._base import FactorizedLinear


class LowRankLinear(FactorizedLinear):
    """y = x @ (U @ V.T).T + bias with ``U`` (out, r) and ``V`` (in, r)."""

    _factor_names = ("U", "V")

    def __init__(self, in_features, out_features, r, bias=True, device=None, dtype=None):
        super().__init__(in_features, out_features, bias, device, dtype)
        if r <= 0:
            raise ValueError(f"r must be positive, got {r}")
        self.r = int(r)
        dt = dtype or torch.float32
        self.U = nn.Parameter(self._kaiming((out_features, r), r, device, dt))
        self.V = nn.Parameter(self._kaiming((in_features, r), in_features, device, dt))

    def forward(self, x):
        return ops.lowrank_mm(x, self.U, self.V, self.bias, self.backend)

    def to_dense(self) -> torch.Tensor:
        return self.U @ self.V.T

    def _family_repr(self):
        return f"r={self.r}"

    @classmethod
    def from_linear(cls, linear: nn.Linear, r: int | None = None):
        """Truncated SVD of ``linear.weight`` (``factorkern.factorize.lowrank``); r defaults
        to in // 4."""
        from ..factorize import lowrank

        cls._check_linear(linear)
        W = linear.weight.detach()
        r = max(1, linear.in_features // 4) if r is None else r
        res = lowrank(W, r)
        U, V = res.factors
        layer = cls(linear.in_features, linear.out_features, r, linear.bias is not None,
                    W.device, W.dtype)
        with torch.no_grad():
            layer.U.copy_(U)
            layer.V.copy_(V)
        layer._copy_bias(linear)
        layer.factorization_error = res.error
        return layer
