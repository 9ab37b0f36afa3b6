"""shard_report: the factor bytes each rank holds, per layer, and the replicated part.

Two ways to call it, one answer:

- on a model already sharded by ``parallelize_module``: measures this rank's local tensors;
- on an unsharded model with the plan and a world size (``shard_report(model, plan,
  world_size=8)``): works out what each rank would hold with the same layouts the styles use,
  without a process group (the model may live on the meta device).

Bytes count the stored factors (the tensors a layer's ``factor_bits`` counts: packed signs, 2:4
values and metadata, block-diagonals, scales); the bias and LittleBit's latent training
factors are reported apart (``bias_bytes``) and left out of the fractions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fnmatch import fnmatch

import torch
from torch import nn

from ..nn import FactorizedLinear
from ._compat import DTensor, Shard, TorchColwiseParallel, TorchRowwiseParallel
from .families import resolve
from .styles import ColwiseParallel, RowwiseParallel, TensorParallelLayer


def _nbytes(shape, dtype) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n * (torch.finfo(dtype).bits if dtype.is_floating_point
                else torch.iinfo(dtype).bits) // 8


@dataclass
class TensorShard:
    name: str
    shape: tuple          # global shape
    placement: str        # "Shard(d)" | "Replicate"
    global_bytes: int
    rank_bytes: int

    @property
    def replicated(self) -> bool:
        return self.placement.startswith("Replicate")


@dataclass
class LayerShard:
    """One layer: its global factor bytes, the bytes one rank holds and the replicated part."""

    name: str
    layer: str
    style: str
    split: str
    world: int
    tensors: list[TensorShard] = field(default_factory=list)
    bias_bytes: int = 0

    @property
    def global_bytes(self) -> int:
        return sum(t.global_bytes for t in self.tensors)

    @property
    def rank_bytes(self) -> int:
        return sum(t.rank_bytes for t in self.tensors)

    @property
    def replicated_bytes(self) -> int:
        return sum(t.global_bytes for t in self.tensors if t.replicated)

    @property
    def replicated_fraction(self) -> float:
        """Replicated factor bytes over the layer's factor bytes."""
        return self.replicated_bytes / self.global_bytes

    @property
    def rank_fraction(self) -> float:
        """Factor bytes one rank holds over the layer's factor bytes (ideal: 1 / world)."""
        return self.rank_bytes / self.global_bytes


@dataclass
class ShardReport:
    layers: list[LayerShard]

    @property
    def global_bytes(self) -> int:
        return sum(l.global_bytes for l in self.layers)

    @property
    def rank_bytes(self) -> int:
        return sum(l.rank_bytes for l in self.layers)

    @property
    def replicated_bytes(self) -> int:
        return sum(l.replicated_bytes for l in self.layers)

    def __getitem__(self, name: str) -> LayerShard:
        for l in self.layers:
            if l.name == name:
                return l
        raise KeyError(name)

    def __str__(self) -> str:
        rows = [f"{'layer':<24} {'class':<18} {'style':<14} {'world':>5} {'MiB':>9} "
                f"{'MiB/rank':>9} {'replicated':>10}"]
        for l in self.layers:
            rows.append(f"{l.name:<24} {l.layer:<18} {l.style + '/' + l.split:<14} {l.world:>5} "
                        f"{l.global_bytes / 2**20:>9.2f} {l.rank_bytes / 2**20:>9.2f} "
                        f"{100 * l.replicated_fraction:>9.1f}%")
        if self.layers:
            rows.append(f"{'total':<24} {'':<18} {'':<14} {'':>5} "
                        f"{self.global_bytes / 2**20:>9.2f} {self.rank_bytes / 2**20:>9.2f} "
                        f"{100 * self.replicated_bytes / self.global_bytes:>9.1f}%")
        return "\n".join(rows)


def _placement(dim) -> str:
    return "Replicate" if dim is None else f"Shard({dim})"


def _factor_names(m) -> list[str]:
    if isinstance(m, FactorizedLinear):
        return list(m._factor_names)
    return [n for n, p in m.named_parameters(recurse=False) if n != "bias"]


def _measured(name: str, m: nn.Module) -> LayerShard | None:
    """A layer sharded on this rank: read its DTensors."""
    ts = [(n, getattr(m, n)) for n in _factor_names(m)]
    if not ts or not all(isinstance(t, DTensor) for _, t in ts):
        return None
    if isinstance(m, TensorParallelLayer):
        st = m._tp
        ls = LayerShard(name, st.base.__name__, st.style, st.split, st.mesh.size())
    else:  # nn.Linear sharded by torch's styles: weight Shard(0) colwise, Shard(1) rowwise
        w = ts[0][1]
        p = w.placements[0]
        style = "colwise" if isinstance(p, Shard) and p.dim == 0 else "rowwise"
        ls = LayerShard(name, type(m).__name__, style, "outer", w.device_mesh.size())
    for n, t in ts:
        loc = t.to_local()
        p = t.placements[0]
        ls.tensors.append(TensorShard(n, tuple(t.shape),
                                      _placement(p.dim if isinstance(p, Shard) else None),
                                      _nbytes(t.shape, t.dtype), _nbytes(loc.shape, loc.dtype)))
    if getattr(m, "bias", None) is not None:
        loc = m.bias.to_local() if isinstance(m.bias, DTensor) else m.bias
        ls.bias_bytes = _nbytes(loc.shape, loc.dtype)
    return ls


def _planned(name: str, m: nn.Module, style_obj, world: int) -> LayerShard:
    """What one rank would hold if ``style_obj`` sharded ``m`` over ``world`` ranks."""
    if isinstance(style_obj, (ColwiseParallel, TorchColwiseParallel)):
        style = "colwise"
    elif isinstance(style_obj, (RowwiseParallel, TorchRowwiseParallel)):
        style = "rowwise"
    else:
        raise TypeError(f"shard_report understands Colwise/RowwiseParallel, got "
                        f"{type(style_obj).__name__} for {name!r}")
    if isinstance(m, FactorizedLinear):
        split, lay = resolve(m, style, getattr(style_obj, "split", "auto"), world)
        dims = lay.tensors
    elif isinstance(m, nn.Linear):
        split, dims = "outer", {"weight": 0 if style == "colwise" else 1}
    else:
        raise TypeError(f"shard_report: {name!r} is a {type(m).__name__}, not a linear layer")
    ls = LayerShard(name, type(m).__name__, style, split, world)
    for n in _factor_names(m):
        t = getattr(m, n)
        d = dims.get(n)
        shape = list(t.shape)
        if d is not None:
            shape[d] //= world
        ls.tensors.append(TensorShard(n, tuple(t.shape), _placement(d),
                                      _nbytes(t.shape, t.dtype), _nbytes(shape, t.dtype)))
    if m.bias is not None:
        b = m.bias
        col = style == "colwise"
        ls.bias_bytes = _nbytes((b.shape[0] // world,) if col else b.shape, b.dtype)
    return ls


def shard_report(model: nn.Module, plan=None, world_size: int | None = None) -> ShardReport:
    """Per-rank factor bytes of every tensor-parallel linear layer of ``model``.

    Args:
        model: a model sharded by ``parallelize_module`` (then ``plan`` is None and the local
            tensors are measured), or an unsharded model (any device, meta included).
        plan: for an unsharded model, the ``parallelize_module`` plan: a style, or a dict from
            module paths (``fnmatch`` patterns such as ``"layers.*.wq"``) to styles.
        world_size: ranks of the plan (needed with ``plan``).

    Returns a ShardReport: ``.layers`` (LayerShard: ``global_bytes``, ``rank_bytes``,
    ``replicated_bytes``, ``replicated_fraction``, ``rank_fraction``, per-tensor ``tensors``),
    totals, and a printable table.
    """
    layers = []
    if plan is None:
        for name, m in model.named_modules():
            ls = _measured(name, m)
            if ls is not None:
                layers.append(ls)
        return ShardReport(layers)
    if world_size is None or world_size < 1:
        raise ValueError("shard_report with a plan needs world_size >= 1")
    if not isinstance(plan, dict):
        plan = {"": plan}
    for name, m in model.named_modules():
        for pattern, style_obj in plan.items():
            if (pattern == "" and name == "") or (pattern and fnmatch(name, pattern)):
                layers.append(_planned(name, m, style_obj, world_size))
                break
    return ShardReport(layers)
