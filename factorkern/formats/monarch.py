"""MonarchFactors: W = P_out BD(w2) P_mid BD(w1), the HazyResearch/fly convention.

w1: (k, q, p) with k * p = in_ext (the padded in_features); w2: (l, s, r) with l * r = k * q and
out_ext = l * s. y = x @ W.T is (fly's ``blockdiag_butterfly_multiply``, version 3 reference):

    x  (N, in)  -> pad to (N, k * p)
    t = x @ block_diag(w1).T                 (N, k * q)
    t = t viewed as (N, r, l), transposed    (N, l * r)   ('b (r l) -> b (l r)')
    u = t @ block_diag(w2).T                 (N, l * s)
    y = u viewed as (N, l, s), transposed    (N, s * l)   ('b (l s) -> b (s l)')
    y = y[:, :out_features]

``in_features``/``out_features`` smaller than k * p / l * s mean fly's StructuredLinear padding
(x zero-padded, output truncated). fly's MonarchLinear(nblocks) checkpoints (blkdiag1 = w1,
blkdiag2 = w2) load unchanged. Specified in docs/formats.md.
"""

from __future__ import annotations

import math

import torch

from ._common import FormatBase, as_int, check_float
from .blockdiag import blockdiag_apply


def monarch_apply(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor,
                  out_features: int) -> torch.Tensor:
    """x: (N, in) with in <= k * p -> (N, out_features). Plain torch, any float dtype."""
    k, q, p = w1.shape
    l, s, r = w2.shape
    n = x.shape[0]
    if x.shape[1] < k * p:
        x = torch.nn.functional.pad(x, (0, k * p - x.shape[1]))
    t = blockdiag_apply(x, w1)
    t = t.reshape(n, r, l).transpose(1, 2).reshape(n, l * r)
    u = blockdiag_apply(t, w2)
    y = u.reshape(n, l, s).transpose(1, 2).reshape(n, s * l)
    return y[:, :out_features]


def _check_factor(name: str, w, what: str) -> None:
    check_float(name, w)
    if w.dim() != 3 or w.numel() == 0:
        raise ValueError(f"MonarchFactors {name} must be a non-empty 3-D tensor {what}, got shape "
                         f"{tuple(w.shape)} (a dense matrix is factorized by "
                         f"factorkern.factorize.monarch)")


class MonarchFactors(FormatBase):
    """Monarch factors ``w1`` (k, q, p) and ``w2`` (l, s, r) of W (out_features, in_features)."""

    _tensor_fields = ("w1", "w2")
    _meta_fields = ("in_features", "out_features")

    def __init__(self, w1: torch.Tensor, w2: torch.Tensor, in_features: int | None = None,
                 out_features: int | None = None, *, check: bool = True):
        self.w1, self.w2 = w1, w2
        if check:
            _check_factor("w1", w1, "(k, q, p): k blocks of shape (q, p), k * p >= in_features")
            _check_factor("w2", w2, "(l, s, r): l blocks of shape (s, r), l * r = k * q")
        self.in_features = as_int("MonarchFactors in_features", in_features) \
            if in_features is not None else int(w1.shape[0] * w1.shape[2])
        self.out_features = as_int("MonarchFactors out_features", out_features) \
            if out_features is not None else int(w2.shape[0] * w2.shape[1])
        super().__init__()
        if check:
            self.validate()

    @property
    def shape(self):
        return (self.out_features, self.in_features)

    @property
    def dtype(self):
        return self.w1.dtype

    @property
    def device(self):
        return self.w1.device

    @property
    def nblocks(self) -> int:
        return int(self.w1.shape[0])

    def _validate(self) -> None:
        _check_factor("w1", self.w1, "(k, q, p): k blocks of shape (q, p), k * p >= in_features")
        _check_factor("w2", self.w2, "(l, s, r): l blocks of shape (s, r), l * r = k * q")
        if self.w1.dtype != self.w2.dtype:
            raise TypeError(f"Monarch w1 is {self.w1.dtype} but w2 is {self.w2.dtype}")
        if self.w1.device != self.w2.device:
            raise ValueError(f"Monarch w1 is on {self.w1.device} but w2 on {self.w2.device}")
        k, q, p = self.w1.shape
        l, s, r = self.w2.shape
        if l * r != k * q:
            raise ValueError(f"Monarch w2 (l={l}, s={s}, r={r}) must have l * r = k * q = {k * q} "
                             f"(w1 is (k={k}, q={q}, p={p}))")
        if not 0 < self.in_features <= k * p:
            raise ValueError(f"Monarch in_features={self.in_features} must be in 1..k*p={k * p}")
        if not 0 < self.out_features <= l * s:
            raise ValueError(f"Monarch out_features={self.out_features} must be in 1..l*s={l * s}")

    @staticmethod
    def fly_shapes(in_features: int, out_features: int, nblocks: int = 4):
        """Shapes (w1, w2) of fly's MonarchLinear(in_features, out_features, nblocks)."""
        ib = math.ceil(in_features / nblocks)
        ob = math.ceil(out_features / nblocks)
        if ib * nblocks < ob * nblocks:
            return (nblocks, ib, ib), (nblocks, ob, ib)
        return (nblocks, ob, ib), (nblocks, ob, ob)

    @classmethod
    def random(cls, in_features: int, out_features: int, nblocks: int = 4, dtype=torch.float32,
               device=None, generator=None) -> "MonarchFactors":
        """fly-shaped factors with Kaiming-uniform-like init (for tests and benchmarks)."""
        s1, s2 = cls.fly_shapes(in_features, out_features, nblocks)
        w1 = (torch.rand(s1, generator=generator, dtype=torch.float64) * 2 - 1) / math.sqrt(s1[2])
        w2 = (torch.rand(s2, generator=generator, dtype=torch.float64) * 2 - 1) / math.sqrt(s2[2])
        return cls(w1.to(dtype=dtype, device=device), w2.to(dtype=dtype, device=device),
                   in_features, out_features)

    def to_dense(self) -> torch.Tensor:
        """W (out_features, in_features)."""
        eye = torch.eye(self.in_features, dtype=self.w1.dtype, device=self.w1.device)
        return monarch_apply(eye, self.w1, self.w2, self.out_features).T.contiguous()
