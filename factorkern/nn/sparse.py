"""Sparse24Linear: W = S, a plain 2:4 sparse weight (the baseline of every 2:4 method)."""

from __future__ import annotations

import torch
from torch import nn

from .. import ops
from ..formats import Sparse24
from ._base import FactorizedLinear
from .dense_sparse import _sparse_init


class Sparse24Linear(FactorizedLinear):
    """y = x @ S.T + bias with S (out, in) 2:4 sparse along in.

    Parameter ``s_values`` (out, in/2): the kept values; buffer ``s_meta`` int16
    (out, ceil(in/16)): the pattern (Sparse24's canonical layout), fixed while training.
    in % 4 == 0.
    """

    _factor_names = ("s_values", "s_meta")

    def __init__(self, in_features, out_features, bias=True, device=None, dtype=None):
        super().__init__(in_features, out_features, bias, device, dtype)
        if in_features % 4:
            raise ValueError(f"in_features={in_features} must be a multiple of 4 (2:4 groups)")
        v, m = _sparse_init(out_features, in_features, device, dtype or torch.float32)
        self.s_values = nn.Parameter(v)
        self.register_buffer("s_meta", m)

    def _formats(self, get):
        return {"S": Sparse24(get("s_values"), get("s_meta"), self.in_features, check=False)}

    @property
    def S(self) -> Sparse24:
        return self._format("S")

    def forward(self, x):
        return ops.sparse_mm(x, self.S, self.bias, self.backend)

    def to_dense(self) -> torch.Tensor:
        return self.S.to_dense()

    def _family_repr(self):
        return "pattern=2:4"

    @classmethod
    def from_sparse24(cls, S: Sparse24, bias: torch.Tensor | None = None) -> "Sparse24Linear":
        """A layer holding ``S`` (out, in) itself (its tensors are used, not copied) and the
        optional ``bias`` (out,). Used by the importers (factorkern.interop)."""
        if not isinstance(S, Sparse24):
            raise TypeError(f"S must be a Sparse24, got {type(S).__name__}")
        out_f, in_f = S.shape
        if bias is not None and tuple(bias.shape) != (out_f,):
            raise ValueError(f"bias must have shape ({out_f},), got {tuple(bias.shape)}")
        layer = cls(in_f, out_f, bias is not None, device="meta", dtype=S.dtype)
        layer.s_values = nn.Parameter(S.values)
        layer.s_meta = S.meta
        if bias is not None:
            layer.bias = nn.Parameter(bias.to(S.dtype))
        return layer

    @classmethod
    def from_linear(cls, linear: nn.Linear, X: torch.Tensor | None = None):
        """2:4-prune ``linear.weight`` along in (``factorkern.factorize.prune_24``): magnitude
        scores |W| without ``X``, Wanda scores |W_ij| * ||X[:, j]|| given calibration
        activations ``X`` (N, in) (or (..., in)). The pruned weight is exactly the layer's W."""
        from ..factorize import prune_24

        cls._check_linear(linear)
        W = linear.weight.detach()
        res = prune_24(W, X)
        # Built around the pruned tensors (no random init to overwrite).
        layer = cls.from_sparse24(res.factors, None if linear.bias is None
                                  else linear.bias.detach().clone())
        layer.factorization_error = res.error
        return layer
