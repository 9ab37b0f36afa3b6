"""Per family: which factor each tensor-parallel split divides, along which dimension, and the
alignment the split needs. One entry per layer family; a new family is one function + one
``register_family`` call.

Vocabulary. Every family computes ``y = x @ W.T`` through a chain of factors with an *inner*
dimension between them (the rank r of low-rank and LittleBit, k of dense-sparse, w1's blocks of
Monarch). A split is one of

- ``"outer"``: split only the factor on the split side (the output side for colwise, the input
  side for rowwise) and replicate the other factors. Communication is exactly torch's for a
  dense layer; the replicated factors cost memory on every rank.
- ``"inner"``: split the inner dimension of every factor. Each rank holds 1/world of every
  factor and computes a partial sum of the whole output; torch's redistribution makes it the
  style's output layout (colwise: one reduce-scatter, the documented extra collective; rowwise:
  the input is all-gathered first, the extra collective, then the usual all-reduce).

A ``Split`` names, for every parameter and buffer of the layer, the dimension it is sharded on
(``None``: replicated), the cuts that must divide evenly (with their alignment unit), what the
rank's local layer looks like (its attributes), and the local computation's input and output
(``input``: "replicate" | "shard" | "slice" (replicated, each rank takes its chunk of in);
``output``: "shard" (rows of W) | "partial" (a partial sum of the whole output)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Mapping

from torch import nn

from ..nn import (ArmorLinear, DenseSparseLinear, FactorizedLinear, LittleBitLinear,
                  LowRankLinear, MonarchLinear, SparseDenseLinear)

STYLES = ("colwise", "rowwise")
SPLITS = ("inner", "outer")

# 2:4 meta: 4 groups of 4 columns per int16 word; sign bits: 32 columns per int32 word.
META_COLS = 16
SIGN_COLS = 32


@dataclass(frozen=True)
class Cut:
    """A layer dimension a split divides across ranks: each rank's part must be a multiple of
    ``unit`` (an alignment of the factor format). ``name`` is how errors name the dimension."""

    name: str
    size: int
    unit: int = 1
    why: str = ""

    def fits(self, world: int) -> bool:
        return self.size % (world * self.unit) == 0


@dataclass(frozen=True)
class Split:
    """How one (style, split) places a layer's tensors; see the module docstring."""

    tensors: Mapping[str, int | None]
    cuts: tuple[Cut, ...]
    input: str
    output: str
    local: Mapping[str, int] = field(default_factory=dict)
    refuse: str | None = None  # a structural reason this split cannot apply to this layer


@dataclass(frozen=True)
class Family:
    layer: type
    splits: Callable[[nn.Module, int], dict]  # (module, world) -> {(style, split): Split}
    default: Mapping[str, str]  # style -> split used by split="auto"
    local_methods: tuple[str, ...] = ()  # methods that act on the rank's local factors
    summary: str = ""


_FAMILIES: dict[type, Family] = {}


def register_family(layer: type, splits, default=None, local_methods=(), summary="") -> None:
    """Register the tensor-parallel layouts of a layer class (and its subclasses).

    ``splits(module, world)`` returns ``{(style, split): Split}`` for the splits the family
    supports; ``default`` maps each style to the split ``split="auto"`` picks (``"inner"``
    unless given); ``local_methods`` names methods (such as LittleBit's ``pack``) that the
    sharded layer runs on each rank's local factors.
    """
    default = dict(default or {"colwise": "inner", "rowwise": "inner"})
    _FAMILIES[layer] = Family(layer, splits, default, tuple(local_methods), summary)


def family_of(module) -> Family | None:
    """The Family of a layer (instance or class), looked up along its MRO."""
    for cls in (module if isinstance(module, type) else type(module)).__mro__:
        if cls in _FAMILIES:
            return _FAMILIES[cls]
    return None


def describe(m: nn.Module) -> str:
    """The layer as errors name it: class, sizes and family parameters."""
    fam = m._family_repr() if isinstance(m, FactorizedLinear) else ""
    return (f"{type(m).__name__}(in_features={m.in_features}, out_features={m.out_features}"
            f"{', ' + fam if fam else ''})")


def _nearest(cut: Cut, world: int) -> list[int]:
    step = world * cut.unit
    lo = cut.size // step * step
    return [s for s in (lo, lo + step) if s > 0]


def resolve(m: nn.Module, style: str, split: str, world: int) -> tuple[str, Split]:
    """The Split for (style, split) of layer ``m`` over ``world`` ranks, checked: raises
    ValueError naming the layer, the dimension and the nearest sizes that work."""
    fam = family_of(m)
    if fam is None:
        raise TypeError(f"{type(m).__name__} has no tensor-parallel layout; register one with "
                        "factorkern.distributed.register_family")
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    if split not in SPLITS + ("auto",):
        raise ValueError(f"split must be 'auto', 'inner' or 'outer', got {split!r}")
    name = fam.default[style] if split == "auto" else split
    options = fam.splits(m, world)
    if (style, name) not in options:
        have = sorted(s for st, s in options if st == style)
        raise ValueError(f"{describe(m)} has no {style} split={name!r}; it supports "
                         f"{', '.join(repr(s) for s in have)} ({fam.summary})")
    sp = options[(style, name)]
    if sp.refuse:
        raise ValueError(f"{describe(m)} cannot be split {style} (split={name!r}): {sp.refuse}")
    bad = [c for c in sp.cuts if not c.fits(world)]
    if bad:
        lines = []
        for c in bad:
            per = c.size / world
            lines.append(f"{c.name}={c.size} over {world} ranks gives {per:g} per rank, which "
                         f"must be a multiple of {c.unit}"
                         f"{' (' + c.why + ')' if c.why else ''}; nearest {c.name} that work: "
                         f"{' and '.join(map(str, _nearest(c, world)))}")
        worlds = [w for w in range(1, 65) if all(c.fits(w) for c in sp.cuts)]
        others = [s for (st, s), o in options.items()
                  if st == style and s != name and not o.refuse
                  and all(c.fits(world) for c in o.cuts)]
        hint = (f"; split={others[0]!r} works at this size" if others else "")
        raise ValueError(f"{describe(m)} cannot be split {style} (split={name!r}) over {world} "
                         f"ranks: {'; '.join(lines)}. World sizes that work for this layer: "
                         f"{', '.join(map(str, worlds[:12]))}{hint}")
    return name, sp


# -- the families -----------------------------------------------------------------------------
def _outer(tensors, cut: Cut, style: str, local=None) -> Split:
    if style == "colwise":
        return Split(tensors, (cut,), "replicate", "shard", local or {})
    return Split(tensors, (cut,), "shard", "partial", local or {})


def _out_cut(m, unit=1, why="rows of W"):
    return Cut("out_features", m.out_features, unit, why)


def _lowrank(m: LowRankLinear, world: int):
    inner = Split({"U": 1, "V": 1}, (Cut("r", m.r, 1, "columns of U and V"),), "replicate",
                  "partial", {"r": m.r // world})
    return {
        ("colwise", "inner"): inner, ("rowwise", "inner"): inner,
        ("colwise", "outer"): _outer({"U": 0, "V": None}, _out_cut(m, why="rows of U"),
                                     "colwise"),
        ("rowwise", "outer"): _outer({"U": None, "V": 0},
                                     Cut("in_features", m.in_features, 1, "rows of V"),
                                     "rowwise"),
    }


def _dense_sparse(m: DenseSparseLinear, world: int):
    # W = D (out, k) @ S (k, in), S 2:4 along in.
    inner = Split({"D": 1, "s_values": 0, "s_meta": 0},
                  (Cut("k", m.k, 1, "columns of D, rows of S"),), "replicate", "partial",
                  {"k": m.k // world})
    return {
        ("colwise", "inner"): inner, ("rowwise", "inner"): inner,
        ("colwise", "outer"): _outer({"D": 0, "s_values": None, "s_meta": None},
                                     _out_cut(m, why="rows of D"), "colwise"),
        ("rowwise", "outer"): _outer({"D": None, "s_values": 1, "s_meta": 1},
                                     Cut("in_features", m.in_features, META_COLS,
                                         "columns of S on 2:4 meta words of 16 columns"),
                                     "rowwise"),
    }


def _sparse_dense(m: SparseDenseLinear, world: int):
    # W = S (out, k) @ D (k, in), S 2:4 along k.
    inner = Split({"s_values": 1, "s_meta": 1, "D": 0},
                  (Cut("k", m.k, META_COLS, "columns of S on 2:4 meta words of 16 columns, "
                                            "rows of D"),), "replicate", "partial",
                  {"k": m.k // world})
    return {
        ("colwise", "inner"): inner, ("rowwise", "inner"): inner,
        ("colwise", "outer"): _outer({"s_values": 0, "s_meta": 0, "D": None},
                                     _out_cut(m, why="rows of S"), "colwise"),
        ("rowwise", "outer"): _outer({"s_values": None, "s_meta": None, "D": 1},
                                     Cut("in_features", m.in_features, 1, "columns of D"),
                                     "rowwise"),
    }


def _armor(m: ArmorLinear, world: int):
    # W = A (out, out) blockdiag @ S (out, in) 2:4 @ B (in, in) blockdiag. The block-diagonal
    # factor on the far side is small (in * block elements), so it is the one replicated.
    b = m.block
    return {
        ("colwise", "outer"): _outer(
            {"a_blocks": 0, "s_values": 0, "s_meta": 0, "b_blocks": None},
            _out_cut(m, b, f"blocks of A ({b} rows) with the matching rows of S"), "colwise"),
        ("rowwise", "outer"): _outer(
            {"a_blocks": None, "s_values": 1, "s_meta": 1, "b_blocks": 0},
            Cut("in_features", m.in_features, math.lcm(b, META_COLS),
                f"blocks of B ({b} columns) with the matching columns of S on 2:4 meta words "
                "of 16 columns"), "rowwise"),
    }


def _littlebit(m: LittleBitLinear, world: int):
    # Per term: U signs (out, r) packed along r, V.T signs (r, in) packed along in, scales
    # h (out), l (r), g (in); latent layers also train real U (out, r), V (in, r).
    def names(u_words, v_words, h, l, g, U, V):
        t = {}
        for i in range(m.nterms):
            t.update({f"u_words{i}": u_words, f"v_words{i}": v_words, f"h{i}": h, f"l{i}": l,
                      f"g{i}": g})
            if m.latent:
                t.update({f"U{i}": U, f"V{i}": V})
        return t

    inner = Split(names(1, 0, None, 0, None, 1, 1),
                  (Cut("r", m.r, SIGN_COLS, "U's sign words of 32 along r"),), "replicate",
                  "partial", {"r": m.r // world})
    return {
        ("colwise", "inner"): inner, ("rowwise", "inner"): inner,
        ("colwise", "outer"): _outer(names(0, None, 0, None, None, 0, None),
                                     _out_cut(m, why="rows of U with h"), "colwise"),
        ("rowwise", "outer"): _outer(names(None, 1, None, None, 0, None, 0),
                                     Cut("in_features", m.in_features, SIGN_COLS,
                                         "V's sign words of 32 along in, with g"), "rowwise"),
    }


def _monarch(m: MonarchLinear, world: int):
    # w1 (k, q, p): block i maps inputs [i p, (i+1) p); w2 (l, s, r). Rank c's w1 blocks produce
    # the intermediate entries that fly's permutation sends to columns [c r/W, (c+1) r/W) of
    # every w2 block, so w1's blocks split together with those columns (a partial sum of the
    # whole output). A contiguous chunk of outputs is rows [c s/W, (c+1) s/W) of every w2 block.
    k, q, p = m.blkdiag1.shape
    l, s, r = m.blkdiag2.shape
    tensors = {"blkdiag1": 0, "blkdiag2": 2}
    cuts = (Cut("nblocks", k, 1, "blocks of w1"),
            Cut("r", r, 1, "columns of each w2 block (w2 is (l, s, r))"))
    pad_in = (None if m.in_features == k * p else
              f"in_features={m.in_features} is padded to nblocks * {p} = {k * p}; splitting "
              f"w1's blocks needs in_features a multiple of nblocks={k}")
    local = {"nblocks": k // world}
    by_blocks = Split(tensors, cuts, "slice", "partial", local, pad_in)
    pad_out = (None if m.out_features == l * s else
               f"out_features={m.out_features} is padded to {l} * {s} = {l * s}; splitting "
               f"w2's rows needs out_features a multiple of {l}")
    return {
        ("colwise", "inner"): by_blocks,
        ("rowwise", "outer"): Split(tensors, cuts, "shard", "partial", local, pad_in),
        ("colwise", "outer"): Split({"blkdiag1": None, "blkdiag2": 1},
                                    (Cut("s", s, 1, "rows of each w2 block (w2 is (l, s, r))"),),
                                    "replicate", "shard", {}, pad_out),
    }


def _sparse24(m, world: int):
    # W = S (out, in) 2:4 along in: colwise splits S's rows, rowwise its columns on meta words.
    names = list(getattr(m, "_factor_names", ()))
    meta = [n for n in names if getattr(m, n).dtype.is_floating_point is False]
    vals = [n for n in names if n not in meta]
    if len(meta) != 1 or len(vals) != 1:
        raise TypeError(f"{type(m).__name__}: expected one values and one meta tensor in "
                        f"_factor_names, got {names}")
    v, mt = vals[0], meta[0]
    return {
        ("colwise", "outer"): _outer({v: 0, mt: 0}, _out_cut(m, why="rows of S"), "colwise"),
        ("rowwise", "outer"): _outer({v: 1, mt: 1},
                                     Cut("in_features", m.in_features, META_COLS,
                                         "columns of S on 2:4 meta words of 16 columns"),
                                     "rowwise"),
    }


register_family(LowRankLinear, _lowrank, summary="inner splits r; outer replicates V "
                "(colwise) or U (rowwise)")
register_family(DenseSparseLinear, _dense_sparse, summary="inner splits k; outer replicates S "
                "(colwise) or D (rowwise)")
register_family(SparseDenseLinear, _sparse_dense, summary="inner splits k; outer replicates D "
                "(colwise) or S (rowwise)")
register_family(ArmorLinear, _armor, {"colwise": "outer", "rowwise": "outer"},
                summary="outer only: the replicated factor is block-diagonal B (colwise) or A "
                "(rowwise)")
register_family(LittleBitLinear, _littlebit, local_methods=("pack",),
                summary="inner splits r; outer replicates V, l, g (colwise) or U, h, l "
                "(rowwise)")
register_family(MonarchLinear, _monarch, {"colwise": "inner", "rowwise": "outer"},
                summary="colwise inner and rowwise outer split w1's blocks with w2's matching "
                "columns; colwise outer replicates w1")

try:  # the plain 2:4 layer (W = S), where this version of factorkern has it
    from ..nn import Sparse24Linear
except ImportError:
    Sparse24Linear = None
if Sparse24Linear is not None:
    register_family(Sparse24Linear, _sparse24, {"colwise": "outer", "rowwise": "outer"},
                    summary="outer only: S itself is split, nothing is replicated")
