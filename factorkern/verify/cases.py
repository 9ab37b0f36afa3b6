"""The verification matrix and the random factors of every op (one builder per op: adding an op
to verification is one entry in ``BUILDERS``).

Shapes are W (out, in): the model shapes of the benchmark (Llama-2-7B, Llama-3-8B, BERT-base)
plus ragged ones; factor sizes are the papers' defaults (dense-sparse k = in/2, ARMOR blocks
gcd(n, 128), LittleBit two rank-256 terms, Monarch 4 blocks, low-rank r = in/4). M covers every
M bucket of ``factorkern.records`` twice where it can (1; 3, 16; 17, 128; 2048). Inputs:
odd M get a bias and a strided x (every other column of a wider tensor), even M neither.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..formats import BlockDiag, LittleBitFactors, MonarchFactors, prune_24

MODEL_SHAPES = ((4096, 4096), (11008, 4096), (4096, 11008),       # Llama-2-7B attn, up, down
                (1024, 4096), (14336, 4096), (4096, 14336),       # Llama-3-8B kv, up, down
                (768, 768), (3072, 768), (768, 3072))             # BERT-base attn, up, down
RAGGED_SHAPES = ((1000, 1500), (300, 4100))
M_FULL = (1, 3, 16, 17, 128, 2048)
DTYPES = ("float16", "bfloat16")
# --quick: one model shape, one ragged shape, one M per bucket (GPU), one dtype by default.
QUICK_SHAPES = ((4096, 4096), (1000, 1500))
M_QUICK = (1, 16, 128, 2048)
QUICK_DTYPES = ("bfloat16",)
# The Triton interpreter (numerics only, on the CPU): small shapes, float16 (its bf16 dot is
# not exact), one decode and one prefill-sized M.
INTERPRETED_SHAPES = ((64, 128), (40, 72))
M_INTERPRETED = (1, 17)
INTERPRETED_DTYPES = ("float16",)
TOL = {"float16": 1e-2, "bfloat16": 1e-2, "float32": 1e-5, "float64": 1e-12}


@dataclass
class Built:
    """Random factors of one op at one shape: ``args`` are the custom op's arguments after x and
    before bias, ``fmt`` the format whose ``prepare`` gives each backend's layout (None: none),
    ``sizes`` the factor sizes (for the record)."""

    args: tuple
    fmt: object = None
    sizes: dict = field(default_factory=dict)


def _randn(shape, gen, scale=1.0):
    return torch.randn(shape, generator=gen, dtype=torch.float64) * scale


def _round(n, multiple):
    return max(multiple, int(round(n / multiple)) * multiple)


def _sparse_factor(rows, cols, gen, dtype, device):
    # Keeping 2 of 4 halves the terms of each dot product: scaled for unit-order outputs.
    return prune_24(_randn((rows, cols), gen, math.sqrt(2.0 / cols)).to(dtype)).to(device)


def _dense_sparse(out_f, in_f, dtype, device, gen):
    k = _round(in_f / 2, 16)
    D = _randn((out_f, k), gen, 1 / math.sqrt(k)).to(dtype).to(device)
    S = _sparse_factor(k, in_f, gen, dtype, device)
    return Built((D, S.values, S.meta), S, {"k": k})


def _sparse_dense(out_f, in_f, dtype, device, gen):
    k = _round(in_f / 2, 16)
    S = _sparse_factor(out_f, k, gen, dtype, device)
    D = _randn((k, in_f), gen, 1 / math.sqrt(in_f)).to(dtype).to(device)
    return Built((S.values, S.meta, D), S, {"k": k})


def _armor(out_f, in_f, dtype, device, gen):
    ba, bb = math.gcd(out_f, 128), math.gcd(in_f, 128)
    A = _randn((out_f // ba, ba, ba), gen, 1 / math.sqrt(ba)).to(dtype).to(device)
    B = _randn((in_f // bb, bb, bb), gen, 1 / math.sqrt(bb)).to(dtype).to(device)
    S = _sparse_factor(out_f, in_f, gen, dtype, device)
    return Built((BlockDiag(A).blocks, S.values, S.meta, BlockDiag(B).blocks), S,
                 {"block_a": ba, "block_b": bb})


def _littlebit(out_f, in_f, dtype, device, gen):
    r = min(256, out_f, in_f)
    terms = []
    for t in range(2):
        U, V = _randn((out_f, r), gen), _randn((in_f, r), gen)
        h = (0.5 + torch.rand(out_f, generator=gen, dtype=torch.float64)) * (1.0 if t == 0
                                                                             else 0.1)
        l_ = (0.5 + torch.rand(r, generator=gen, dtype=torch.float64)) / math.sqrt(r)
        g = (0.5 + torch.rand(in_f, generator=gen, dtype=torch.float64)) / math.sqrt(in_f)
        terms.append((U, V, h.to(dtype), l_.to(dtype), g.to(dtype)))
    F = LittleBitFactors.from_real(terms).to(device)
    uw, vw, h, l, g = F.lists()
    return Built((uw, vw, h, l, g), F, {"r": r, "terms": 2})


def _monarch(out_f, in_f, dtype, device, gen):
    M = MonarchFactors.random(in_f, out_f, 4, dtype=torch.float64, generator=gen)
    M = M.to(dtype).to(device)
    return Built((M.w1, M.w2, M.out_features), M, {"nblocks": 4})


def _sparse(out_f, in_f, dtype, device, gen):
    S = _sparse_factor(out_f, in_f, gen, dtype, device)
    return Built((S.values, S.meta), S, {})


def _lowrank(out_f, in_f, dtype, device, gen):
    r = min(_round(in_f / 4, 8), out_f, in_f)
    U = _randn((out_f, r), gen, 1 / math.sqrt(r)).to(dtype).to(device)
    V = _randn((in_f, r), gen, 1 / math.sqrt(in_f)).to(dtype).to(device)
    return Built((U, V), None, {"r": r})


# op -> builder(out, in, dtype, device, generator) -> Built
BUILDERS: dict[str, Callable] = {
    "dense_sparse_mm": _dense_sparse,
    "sparse_dense_mm": _sparse_dense,
    "armor_mm": _armor,
    "littlebit_mm": _littlebit,
    "littlebit_mm_popcount": _littlebit,
    "monarch_mm": _monarch,
    "lowrank_mm": _lowrank,
    "sparse_mm": _sparse,
}


def matrix(mode: str) -> tuple:
    """(shapes, M list, default dtypes) of a run: mode "full", "quick" or "interpreted"."""
    if mode == "interpreted":
        return INTERPRETED_SHAPES, M_INTERPRETED, INTERPRETED_DTYPES
    if mode == "quick":
        return QUICK_SHAPES, M_QUICK, QUICK_DTYPES
    return MODEL_SHAPES + RAGGED_SHAPES, M_FULL, DTYPES


def make_x(m: int, n_in: int, dtype, device, gen) -> torch.Tensor:
    """x (m, n_in): contiguous for even m, every other column of a wider tensor for odd m."""
    if m % 2:
        return _randn((m, 2 * n_in), gen).to(dtype).to(device)[:, ::2]
    return _randn((m, n_in), gen).to(dtype).to(device)


def make_bias(m: int, out_f: int, dtype, device, gen):
    return _randn((out_f,), gen).to(dtype).to(device) if m % 2 else None


def to64(a):
    """float64 copies of the floating tensors of an argument (lists too); others as they are."""
    if isinstance(a, torch.Tensor):
        return a.to(torch.float64) if a.is_floating_point() else a
    if isinstance(a, (list, tuple)):
        return [to64(t) for t in a]
    return a
