"""ArmorLinear: W = A @ S @ B, A and B block-diagonal, S 2:4 sparse along in."""

from __future__ import annotations

import torch
from torch import nn

from .. import ops
from ..formats import BlockDiag, Sparse24
from .dense_sparse import _sparse_init
from ._base import FactorizedLinear


class ArmorLinear(FactorizedLinear):
    """y = x @ (A @ S @ B).T + bias (ARMOR).

    Parameters: ``a_blocks`` (out/bA, bA, bA), ``s_values`` (out, in/2) with the fixed
    pattern buffer ``s_meta`` (out, ceil(in/16)), ``b_blocks`` (in/bB, bB, bB).
    ``block``: one size for both (bA = bB, dividing in and out; ARMOR's published setting is
    128) or ``(bA, bB)``: bA divides out, bB divides in (ARMOR's code takes them apart).
    in % 4 == 0.
    """

    _factor_names = ("a_blocks", "s_values", "s_meta", "b_blocks")

    def __init__(self, in_features, out_features, block=128, bias=True, device=None, dtype=None):
        super().__init__(in_features, out_features, bias, device, dtype)
        if isinstance(block, (tuple, list)):
            if len(block) != 2:
                raise ValueError(f"block must be an int or a pair (bA, bB), got {block!r}")
            block_a, block_b = (int(b) for b in block)
        else:
            block_a = block_b = int(block)
        if block_a <= 0 or block_b <= 0 or out_features % block_a or in_features % block_b:
            raise ValueError(f"block={block} must divide in_features={in_features} and "
                             f"out_features={out_features} (bA divides out, bB divides in)")
        if in_features % 4:
            raise ValueError(f"in_features={in_features} must be a multiple of 4 (2:4 groups)")
        self.block_a, self.block_b = block_a, block_b
        # An int when A and B share the size (the common case), else the pair (bA, bB).
        self.block = block_a if block_a == block_b else (block_a, block_b)
        dt = dtype or torch.float32
        if torch.empty(0, device=device).is_meta:
            # An empty skeleton (fk.nn.load): shapes only; torch.eye on the meta device goes
            # through torch's Python decompositions, seconds on first use.
            a = torch.empty(out_features // block_a, block_a, block_a, device="meta", dtype=dt)
            b = torch.empty(in_features // block_b, block_b, block_b, device="meta", dtype=dt)
        else:
            a = BlockDiag.identity(out_features, block_a, dt, device).blocks
            b = BlockDiag.identity(in_features, block_b, dt, device).blocks
        self.a_blocks = nn.Parameter(a)
        v, m = _sparse_init(out_features, in_features, device, dt)
        self.s_values = nn.Parameter(v)
        self.register_buffer("s_meta", m)
        self.b_blocks = nn.Parameter(b)

    def _formats(self, get):
        return {"A": BlockDiag(get("a_blocks"), check=False),
                "S": Sparse24(get("s_values"), get("s_meta"), self.in_features, check=False),
                "B": BlockDiag(get("b_blocks"), check=False)}

    @property
    def A(self) -> BlockDiag:
        return self._format("A")

    @property
    def B(self) -> BlockDiag:
        return self._format("B")

    @property
    def S(self) -> Sparse24:
        return self._format("S")

    def forward(self, x):
        return ops.armor_mm(x, self.A, self.S, self.B, self.bias, self.backend)

    def to_dense(self) -> torch.Tensor:
        return self.A.to_dense() @ self.S.to_dense() @ self.B.to_dense()

    def _family_repr(self):
        return f"block={self.block}"

    @classmethod
    def from_linear(cls, linear: nn.Linear, block=128, iters: int = 20, X=None):
        """Factorize ``linear.weight`` with ``factorkern.factorize.armor`` (``block``: an int or
        (bA, bB); ``X`` (N, in): calibration activations)."""
        from ..factorize import armor

        cls._check_linear(linear)
        W = linear.weight.detach()
        res = armor(W, block=block, X=X, iters=iters)
        A, S, B = res.factors
        layer = cls(linear.in_features, linear.out_features, block, linear.bias is not None,
                    W.device, W.dtype)
        with torch.no_grad():
            layer.a_blocks.copy_(A.blocks)
            layer.s_values.copy_(S.values)
            layer.s_meta.copy_(S.meta)
            layer.b_blocks.copy_(B.blocks)
        layer._copy_bias(linear)
        layer.factorization_error = res.error
        return layer
