"""DenseSparseLinear (W = D @ S) and SparseDenseLinear (W = S @ D), S 2:4 sparse."""

from __future__ import annotations

import torch
from torch import nn

from .. import ops
from ..formats import Sparse24
from ..formats.sparse24 import prune_24
from ._base import FactorizedLinear


def _sparse_init(rows, cols, device, dtype):
    """Kept values (rows, cols/2) and int16 meta of a random 2:4 matrix. On the meta device
    (an empty skeleton to load factors into) only the shapes are made: no pruning runs."""
    if torch.empty(0, device=device).is_meta:
        return (torch.empty(rows, cols // 2, device="meta", dtype=dtype),
                torch.empty(rows, -(-cols // 16), device="meta", dtype=torch.int16))
    W = FactorizedLinear._kaiming((rows, cols), cols // 2, device, torch.float32)
    S = prune_24(W)
    return S.values.to(dtype), S.meta


class DenseSparseLinear(FactorizedLinear):
    """y = x @ (D @ S).T + bias with D (out, k) dense and S (k, in) 2:4 sparse (DSFormer).

    Parameters: ``D`` (out, k), ``s_values`` (k, in/2) (the kept values; the pattern in the
    buffer ``s_meta`` (k, ceil(in/16)) int16 stays fixed while training). in % 4 == 0.
    """

    _factor_names = ("D", "s_values", "s_meta")

    def __init__(self, in_features, out_features, k, bias=True, device=None, dtype=None):
        super().__init__(in_features, out_features, bias, device, dtype)
        if in_features % 4:
            raise ValueError(f"in_features={in_features} must be a multiple of 4 (2:4 groups)")
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        self.k = int(k)
        self.D = nn.Parameter(self._kaiming((out_features, k), k, device, dtype or torch.float32))
        v, m = _sparse_init(k, in_features, device, dtype or torch.float32)
        self.s_values = nn.Parameter(v)
        self.register_buffer("s_meta", m)

    def _formats(self, get):
        return {"S": Sparse24(get("s_values"), get("s_meta"), self.in_features, check=False)}

    @property
    def S(self) -> Sparse24:
        return self._format("S")

    def forward(self, x):
        return ops.dense_sparse_mm(x, self.D, self.S, self.bias, self.backend)

    def to_dense(self) -> torch.Tensor:
        return self.D @ self.S.to_dense()

    def _family_repr(self):
        return f"k={self.k}"

    @classmethod
    def from_linear(cls, linear: nn.Linear, k: int | None = None, iters: int = 10, X=None):
        """Factorize ``linear.weight`` (out, in) with ``factorkern.factorize.dense_sparse``
        (k defaults to in // 2). ``X`` (N, in): optional calibration activations."""
        from ..factorize import dense_sparse

        cls._check_linear(linear)
        W = linear.weight.detach()
        k = linear.in_features // 2 if k is None else k
        res = dense_sparse(W, k, order="ds", iters=iters, X=X)
        D, S = res.factors
        layer = cls(linear.in_features, linear.out_features, k, linear.bias is not None,
                    W.device, W.dtype)
        with torch.no_grad():
            layer.D.copy_(D)
            layer.s_values.copy_(S.values)
            layer.s_meta.copy_(S.meta)
        layer._copy_bias(linear)
        layer.factorization_error = res.error
        return layer


class SparseDenseLinear(FactorizedLinear):
    """y = x @ (S @ D).T + bias with S (out, k) 2:4 sparse and D (k, in) dense (DSFormer).

    Parameters: ``s_values`` (out, k/2) with the fixed pattern buffer ``s_meta``, ``D`` (k, in).
    k % 4 == 0.
    """

    _factor_names = ("s_values", "s_meta", "D")

    def __init__(self, in_features, out_features, k, bias=True, device=None, dtype=None):
        super().__init__(in_features, out_features, bias, device, dtype)
        if k <= 0 or k % 4:
            raise ValueError(f"k={k} must be a positive multiple of 4 (2:4 groups)")
        self.k = int(k)
        v, m = _sparse_init(out_features, k, device, dtype or torch.float32)
        self.s_values = nn.Parameter(v)
        self.register_buffer("s_meta", m)
        self.D = nn.Parameter(self._kaiming((k, in_features), in_features, device,
                                            dtype or torch.float32))

    def _formats(self, get):
        return {"S": Sparse24(get("s_values"), get("s_meta"), self.k, check=False)}

    @property
    def S(self) -> Sparse24:
        return self._format("S")

    def forward(self, x):
        return ops.sparse_dense_mm(x, self.S, self.D, self.bias, self.backend)

    def to_dense(self) -> torch.Tensor:
        return self.S.to_dense() @ self.D

    def _family_repr(self):
        return f"k={self.k}"

    @classmethod
    def from_linear(cls, linear: nn.Linear, k: int | None = None, iters: int = 10, X=None):
        """Factorize ``linear.weight`` with ``factorkern.factorize.dense_sparse(order="sd")``
        (k defaults to in // 2 rounded down to a multiple of 4)."""
        from ..factorize import dense_sparse

        cls._check_linear(linear)
        W = linear.weight.detach()
        k = (linear.in_features // 2) // 4 * 4 if k is None else k
        res = dense_sparse(W, k, order="sd", iters=iters, X=X)
        S, D = res.factors
        layer = cls(linear.in_features, linear.out_features, k, linear.bias is not None,
                    W.device, W.dtype)
        with torch.no_grad():
            layer.s_values.copy_(S.values)
            layer.s_meta.copy_(S.meta)
            layer.D.copy_(D)
        layer._copy_bias(linear)
        layer.factorization_error = res.error
        return layer
