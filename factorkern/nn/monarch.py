"""MonarchLinear: fly's Monarch layer (same parameter names, so fly checkpoints load)."""

from __future__ import annotations

import torch
from torch import nn

from .. import ops
from ..formats import MonarchFactors
from ._base import FactorizedLinear


class MonarchLinear(FactorizedLinear):
    """y = x @ W.T + bias with W Monarch (fly's convention). Parameters ``blkdiag1`` (w1, (k, q,
    p)) and ``blkdiag2`` (w2, (l, s, r)) have fly's MonarchLinear names and shapes, so a
    ``state_dict`` saved by fly's ``MonarchLinear(in, out, nblocks=...)`` loads unchanged.
    """

    _factor_names = ("blkdiag1", "blkdiag2")

    def __init__(self, in_features, out_features, nblocks=4, bias=True, device=None, dtype=None):
        super().__init__(in_features, out_features, bias, device, dtype)
        if nblocks <= 0:
            raise ValueError(f"nblocks must be positive, got {nblocks}")
        self.nblocks = int(nblocks)
        s1, s2 = MonarchFactors.fly_shapes(in_features, out_features, nblocks)
        dt = dtype or torch.float32
        self.blkdiag1 = nn.Parameter(self._kaiming(s1, s1[2], device, dt))
        self.blkdiag2 = nn.Parameter(self._kaiming(s2, s2[2], device, dt))

    def _formats(self, get):
        return {"M": MonarchFactors(get("blkdiag1"), get("blkdiag2"), self.in_features,
                                    self.out_features, check=False)}

    @property
    def M(self) -> MonarchFactors:
        return self._format("M")

    def forward(self, x):
        return ops.monarch_mm(x, self.M, self.bias, self.backend)

    def to_dense(self) -> torch.Tensor:
        return self.M.to_dense()

    def _family_repr(self):
        return f"nblocks={self.nblocks}"

    @classmethod
    def from_linear(cls, linear: nn.Linear, nblocks: int = 4):
        """fly's optimal Monarch projection of ``linear.weight``
        (``factorkern.factorize.monarch``, rank 1)."""
        from ..factorize import monarch

        cls._check_linear(linear)
        W = linear.weight.detach()
        res = monarch(W, nblocks=nblocks, rank=1)
        M = res.factors
        layer = cls(linear.in_features, linear.out_features, nblocks, linear.bias is not None,
                    W.device, W.dtype)
        if layer.blkdiag1.shape != M.w1.shape or layer.blkdiag2.shape != M.w2.shape:
            raise ValueError(f"factorize.monarch returned shapes {tuple(M.w1.shape)}, "
                             f"{tuple(M.w2.shape)}; MonarchLinear needs fly's "
                             f"{tuple(layer.blkdiag1.shape)}, {tuple(layer.blkdiag2.shape)}")
        with torch.no_grad():
            layer.blkdiag1.copy_(M.w1)
            layer.blkdiag2.copy_(M.w2)
        layer._copy_bias(linear)
        layer.factorization_error = res.error
        return layer
