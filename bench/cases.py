"""Benchmark cases: random factors of each op at the papers' default sizes.

A ``Case`` is one op at one factor configuration for one layer shape. ``build()`` makes a set of
random factors in the benchmark dtype on the device, ``clone()`` copies a set (for L2-cold
rotation), ``call(factors, x, backend)`` runs the public factorkern op.

Default factor sizes (``FactorSizes``; each has a flag in ``bench.sweep``):
    dense-sparse / sparse-dense  k = in / 2 (DSFormer), rounded to a multiple of 16
    ARMOR                        block 128 for A and B (gcd with out / in when 128 does not tile)
    LittleBit                    r = 256, two terms (main + residual path)
    Monarch                      nblocks = 4 (fly's MonarchLinear default) and sqrt(n) (the
                                 paper's square case: the power of two nearest sqrt(min(in, out)))
    low-rank                     r = in / 4, rounded to a multiple of 8
Random values are scaled so y has unit-order entries (no fp16 overflow at any shape).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

import factorkern as fk
from factorkern.formats._common import FormatBase

from .shapes import Shape


@dataclass
class FactorSizes:
    ds_k: float = 0.5              # <= 1: fraction of in; > 1: absolute k
    armor_block: int = 128
    littlebit_rank: int = 256
    littlebit_terms: int = 2
    monarch_nblocks: tuple = ("4", "sqrt")
    lowrank_r: float = 0.25        # <= 1: fraction of in; > 1: absolute r


def _size(spec: float, n: int, multiple: int) -> int:
    """A fraction of n (spec <= 1) or an absolute size, rounded to a multiple, at least one."""
    raw = spec * n if spec <= 1 else spec
    return max(multiple, int(round(raw / multiple)) * multiple)


def monarch_nblocks(spec: str, out_f: int, in_f: int) -> int:
    if spec == "sqrt":
        return max(1, 2 ** round(math.log2(math.sqrt(min(out_f, in_f)))))
    n = int(spec)
    if n <= 0:
        raise ValueError(f"Monarch nblocks must be positive or 'sqrt', got {spec!r}")
    return n


@dataclass
class Case:
    op: str
    config: str                    # label of the factor sizes, e.g. "k=2048"
    shape: Shape
    sizes: dict                    # roofline sizes (see bench.roofline.flops)
    build: Callable                # (dtype, device, generator) -> factor dict
    call: Callable                 # (factors, x, backend) -> y
    variant: str = ""              # which setting of an op with several (Monarch: "nb=sqrt")
    # LittleBit's opt-in quantized-activation path (the popcount kernels), when there is one.
    call_quantized: Callable | None = None


def clone(factors: dict) -> dict:
    """A deep copy of a factor set (tensors and formats), for rotating L2-cold inputs."""
    out = {}
    for k, v in factors.items():
        if isinstance(v, torch.Tensor):
            out[k] = v.clone()
        elif isinstance(v, FormatBase):
            out[k] = v._replace(torch.clone)
        else:
            out[k] = v
    return out


def _randn(shape, gen, device, scale=1.0):
    return torch.randn(shape, generator=gen, device=device) * scale


def _rand(shape, gen, device):
    return torch.rand(shape, generator=gen, device=device)


def _sparse(rows, cols, gen, device, dtype):
    # Keeping 2 of 4 halves the terms of each dot product: scale for unit-order outputs.
    return fk.prune_24(_randn((rows, cols), gen, device, math.sqrt(2.0 / cols))).to(dtype)


def make_cases(op: str, shape: Shape, fs: FactorSizes) -> list[Case]:
    """The cases of one op at one shape (Monarch has one per nblocks setting)."""
    out_f, in_f = shape.out, shape.inp

    if op == "sparse_mm":
        def build(dtype, device, gen):
            return {"S": _sparse(out_f, in_f, gen, device, dtype)}

        def call(f, x, backend):
            return fk.sparse_mm(x, f["S"], backend=backend)
        return [Case(op, "2:4", shape, {}, build, call)]

    if op in ("dense_sparse_mm", "sparse_dense_mm"):
        k = _size(fs.ds_k, in_f, 16)
        if op == "dense_sparse_mm":
            def build(dtype, device, gen):
                return {"D": _randn((out_f, k), gen, device, 1 / math.sqrt(k)).to(dtype),
                        "S": _sparse(k, in_f, gen, device, dtype)}

            def call(f, x, backend):
                return fk.dense_sparse_mm(x, f["D"], f["S"], backend=backend)
        else:
            def build(dtype, device, gen):
                return {"S": _sparse(out_f, k, gen, device, dtype),
                        "D": _randn((k, in_f), gen, device, 1 / math.sqrt(in_f)).to(dtype)}

            def call(f, x, backend):
                return fk.sparse_dense_mm(x, f["S"], f["D"], backend=backend)
        return [Case(op, f"k={k}", shape, {"k": k}, build, call)]

    if op == "armor_mm":
        ba, bb = math.gcd(out_f, fs.armor_block), math.gcd(in_f, fs.armor_block)

        def build(dtype, device, gen):
            A = _randn((out_f // ba, ba, ba), gen, device, 1 / math.sqrt(ba)).to(dtype)
            B = _randn((in_f // bb, bb, bb), gen, device, 1 / math.sqrt(bb)).to(dtype)
            return {"A": fk.BlockDiag(A), "S": _sparse(out_f, in_f, gen, device, dtype),
                    "B": fk.BlockDiag(B)}

        def call(f, x, backend):
            return fk.armor_mm(x, f["A"], f["S"], f["B"], backend=backend)
        label = f"blk={ba}" if ba == bb else f"blk={ba}/{bb}"
        return [Case(op, label, shape, {"block_a": ba, "block_b": bb}, build, call)]

    if op == "littlebit_mm":
        r, terms = min(fs.littlebit_rank, out_f, in_f), fs.littlebit_terms

        def build(dtype, device, gen):
            real = []
            for t in range(terms):
                U = _randn((out_f, r), gen, device)
                V = _randn((in_f, r), gen, device)
                h = (0.5 + _rand(out_f, gen, device)) * (1.0 if t == 0 else 0.1)
                l_ = (0.5 + _rand(r, gen, device)) / math.sqrt(r)
                g = (0.5 + _rand(in_f, gen, device)) / math.sqrt(in_f)
                real.append((U, V, h.to(dtype), l_.to(dtype), g.to(dtype)))
            return {"F": fk.LittleBitFactors.from_real(real)}

        def call(f, x, backend):
            return fk.littlebit_mm(x, f["F"], backend=backend)

        def call_quantized(f, x, backend):
            return fk.littlebit_mm(x, f["F"], backend=backend, quantize_activations=True)
        return [Case(op, f"r={r}x{terms}", shape, {"rank": r, "terms": terms}, build, call,
                     call_quantized=call_quantized)]

    if op == "monarch_mm":
        cases, seen = [], set()
        for spec in fs.monarch_nblocks:
            nb = monarch_nblocks(str(spec), out_f, in_f)
            if nb in seen:
                continue
            seen.add(nb)
            s1, s2 = fk.MonarchFactors.fly_shapes(in_f, out_f, nb)

            def build(dtype, device, gen, nb=nb):
                return {"M": fk.MonarchFactors.random(in_f, out_f, nb, dtype=dtype, device=device,
                                                      generator=None)}

            def call(f, x, backend):
                return fk.monarch_mm(x, f["M"], backend=backend)
            cases.append(Case(op, f"nb={nb}", shape, {"w1": s1, "w2": s2}, build, call,
                              variant=f"nb={spec}"))
        return cases

    if op == "lowrank_mm":
        r = min(_size(fs.lowrank_r, in_f, 8), out_f, in_f)

        def build(dtype, device, gen):
            return {"U": _randn((out_f, r), gen, device, 1 / math.sqrt(r)).to(dtype),
                    "V": _randn((in_f, r), gen, device, 1 / math.sqrt(in_f)).to(dtype)}

        def call(f, x, backend):
            return fk.lowrank_mm(x, f["U"], f["V"], backend=backend)
        return [Case(op, f"r={r}", shape, {"rank": r}, build, call)]

    raise ValueError(f"unknown op {op!r}")
