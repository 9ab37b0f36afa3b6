"""Test data shared by every family: how to build random factors of each op for a given
(out, in), the dense W they represent, and how to call the op. Used by the op, layer and kernel
tests alike (tests as data)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

import factorkern as fk
from factorkern.formats import BlockDiag, LittleBitFactors, MonarchFactors


def _f64(f):
    return f.double() if isinstance(f, torch.Tensor) else f.to(torch.float64)


_DENSE = {
    "dense_sparse_mm": lambda D, S: D @ S.to_dense(),
    "sparse_dense_mm": lambda S, D: S.to_dense() @ D,
    "armor_mm": lambda A, S, B: A.to_dense() @ S.to_dense() @ B.to_dense(),
    "littlebit_mm": lambda F: F.to_dense(),
    "monarch_mm": lambda M: M.to_dense(),
    "lowrank_mm": lambda U, V: U @ V.T,
    "sparse_mm": lambda S: S.to_dense(),
}


@dataclass
class Case:
    op: str
    factors: tuple                 # what the public op takes after x
    call: Callable                 # call(x, bias=None, backend="auto") -> y

    @property
    def W(self) -> torch.Tensor:
        """Dense W (out, in) in float64, rebuilt from the (possibly rounded) factors."""
        return _DENSE[self.op](*(_f64(f) for f in self.factors))

    @property
    def shape(self):
        return tuple(self.W.shape)


def _rand(*shape, dtype, gen):
    return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)


def make_case(op: str, out_f: int, in_f: int, dtype=torch.float64, seed=0, **size) -> Case:
    """Random factors for ``op`` with W of shape (out_f, in_f). ``size``: k, block, r, nblocks,
    nterms."""
    g = torch.Generator().manual_seed(seed)
    if op == "dense_sparse_mm":
        k = size.get("k", max(1, in_f // 2))
        D = _rand(out_f, k, dtype=dtype, gen=g) / math.sqrt(k)
        S = fk.prune_24(_rand(k, in_f, dtype=dtype, gen=g))
        return Case(op, (D, S),
                    lambda x, bias=None, backend="auto": fk.dense_sparse_mm(x, D, S, bias,
                                                                            backend))
    if op == "sparse_dense_mm":
        k = size.get("k", max(4, in_f // 2 // 4 * 4))
        S = fk.prune_24(_rand(out_f, k, dtype=dtype, gen=g))
        D = _rand(k, in_f, dtype=dtype, gen=g) / math.sqrt(in_f)
        return Case(op, (S, D),
                    lambda x, bias=None, backend="auto": fk.sparse_dense_mm(x, S, D, bias,
                                                                            backend))
    if op == "armor_mm":
        b = size.get("block", math.gcd(out_f, in_f))
        A = BlockDiag(_rand(out_f // b, b, b, dtype=dtype, gen=g) / math.sqrt(b))
        B = BlockDiag(_rand(in_f // b, b, b, dtype=dtype, gen=g) / math.sqrt(b))
        S = fk.prune_24(_rand(out_f, in_f, dtype=dtype, gen=g))
        return Case(op, (A, S, B),
                    lambda x, bias=None, backend="auto": fk.armor_mm(x, A, S, B, bias, backend))
    if op == "littlebit_mm":
        r = size.get("r", 8)
        terms = []
        for _ in range(size.get("nterms", 2)):
            terms.append((_rand(out_f, r, dtype=dtype, gen=g), _rand(in_f, r, dtype=dtype, gen=g),
                          _rand(out_f, dtype=dtype, gen=g) / math.sqrt(in_f * r),
                          _rand(r, dtype=dtype, gen=g), _rand(in_f, dtype=dtype, gen=g)))
        F = LittleBitFactors.from_real(terms)
        return Case(op, (F,),
                    lambda x, bias=None, backend="auto": fk.littlebit_mm(x, F, bias, backend))
    if op == "monarch_mm":
        M = MonarchFactors.random(in_f, out_f, size.get("nblocks", 4), dtype=dtype, generator=g)
        return Case(op, (M,),
                    lambda x, bias=None, backend="auto": fk.monarch_mm(x, M, bias, backend))
    if op == "lowrank_mm":
        r = size.get("r", max(1, in_f // 4))
        U = _rand(out_f, r, dtype=dtype, gen=g) / math.sqrt(r)
        V = _rand(in_f, r, dtype=dtype, gen=g) / math.sqrt(in_f)
        return Case(op, (U, V),
                    lambda x, bias=None, backend="auto": fk.lowrank_mm(x, U, V, bias, backend))
    if op == "sparse_mm":
        S = fk.prune_24(_rand(out_f, in_f, dtype=dtype, gen=g) / math.sqrt(in_f / 2))
        return Case(op, (S,),
                    lambda x, bias=None, backend="auto": fk.sparse_mm(x, S, bias, backend))
    raise ValueError(op)


OPS = ("dense_sparse_mm", "sparse_dense_mm", "armor_mm", "littlebit_mm", "monarch_mm",
       "lowrank_mm", "sparse_mm")

# (out, in) shapes every op takes: aligned, odd-ish (multiples of 4 where 2:4 needs it; ARMOR's
# block = gcd), and small-prime-ish where the family allows it.
SHAPES = {
    "dense_sparse_mm": [(16, 32), (7, 12), (33, 20)],
    "sparse_dense_mm": [(16, 32), (7, 12), (33, 20)],
    "armor_mm": [(16, 32), (12, 20), (24, 24)],
    "littlebit_mm": [(16, 32), (7, 45), (33, 13)],
    "monarch_mm": [(16, 16), (10, 14), (24, 9)],
    "lowrank_mm": [(16, 32), (7, 13), (1, 5)],
    "sparse_mm": [(16, 32), (7, 12), (33, 20)],
}


def rel_err(y, ref) -> float:
    y, ref = y.double(), ref.double()
    return ((y - ref).norm() / ref.norm()).item()


def make_x(lead, n_in, dtype, layout="contiguous", device="cpu"):
    """x (*lead, n_in): "contiguous", "strided" (every other column of a wider tensor) or
    "transposed" (a transposed (n_in, M) buffer viewed as (*lead, n_in))."""
    if layout == "strided":  # every other column: stride 2 along in
        return torch.randn(*lead, 2 * n_in, dtype=dtype, device=device)[..., ::2]
    if layout == "transposed":  # (M, in) with strides (1, M)
        m = 1
        for d in lead:
            m *= d
        return torch.randn(n_in, m, dtype=dtype, device=device).T.reshape(*lead, n_in)
    return torch.randn(*lead, n_in, dtype=dtype, device=device)
