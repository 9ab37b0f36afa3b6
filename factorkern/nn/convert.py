"""fk.nn.convert: swap matching nn.Linear modules of a model for factorkern layers."""

from __future__ import annotations

import fnmatch
import sys
from dataclasses import dataclass, field

from torch import nn

from .armor import ArmorLinear
from .calibration import CALIBRATED, Progress, collect
from .dense_sparse import DenseSparseLinear, SparseDenseLinear
from .io import _json_safe
from .littlebit import LittleBitLinear
from .lowrank import LowRankLinear
from .monarch import MonarchLinear
from .sparse import Sparse24Linear

FAMILIES = {
    "dense_sparse": DenseSparseLinear,
    "sparse_dense": SparseDenseLinear,
    "armor": ArmorLinear,
    "littlebit": LittleBitLinear,
    "monarch": MonarchLinear,
    "lowrank": LowRankLinear,
    "sparse24": Sparse24Linear,
}


@dataclass
class ConvertedLayer:
    name: str
    family: str
    in_features: int
    out_features: int
    params_before: int
    params_after: int
    bytes_before: int
    bytes_after: int
    bits_per_weight: float
    error: float | None


@dataclass
class ConvertReport:
    """What ``convert`` did: one row per converted layer, plus totals."""

    layers: list[ConvertedLayer] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def totals(self) -> dict:
        t = {k: sum(getattr(r, k) for r in self.layers)
             for k in ("params_before", "params_after", "bytes_before", "bytes_after")}
        weights = sum(r.in_features * r.out_features for r in self.layers)
        t["bits_per_weight"] = (sum(r.bits_per_weight * r.in_features * r.out_features
                                    for r in self.layers) / weights) if weights else 0.0
        return t

    def __str__(self) -> str:
        lines = ["| layer | family | shape | params before | params after | bytes before | "
                 "bytes after | bits/weight | rel. error |",
                 "|---|---|---|---:|---:|---:|---:|---:|---:|"]
        for r in self.layers:
            err = "" if r.error is None else f"{r.error:.4f}"
            lines.append(f"| {r.name} | {r.family} | {r.out_features}x{r.in_features} | "
                         f"{r.params_before:,} | {r.params_after:,} | {r.bytes_before:,} | "
                         f"{r.bytes_after:,} | {r.bits_per_weight:.3f} | {err} |")
        t = self.totals()
        lines.append(f"| **total ({len(self.layers)} layers)** | | | {t['params_before']:,} | "
                     f"{t['params_after']:,} | {t['bytes_before']:,} | {t['bytes_after']:,} | "
                     f"{t['bits_per_weight']:.3f} | |")
        if self.skipped:
            lines.append(f"\nnot converted (no matching spec or shape not supported): "
                         f"{', '.join(self.skipped)}")
        return "\n".join(lines)


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _parse(entry):
    if isinstance(entry, str):
        return entry, {}
    if isinstance(entry, tuple) and len(entry) == 2:
        return entry[0], dict(entry[1])
    if isinstance(entry, dict):
        how = dict(entry)
        return how.pop("family"), how
    raise TypeError(f"spec entries must be 'family', ('family', {{...}}) or "
                    f"{{'family': ..., ...}}, got {entry!r}")


def convert(model: nn.Module, spec: dict, *, verbose: bool = True,
            strict: bool = False, calibration=None, progress: bool | None = None
            ) -> ConvertReport:
    """Replace, in place, each ``nn.Linear`` of ``model`` whose qualified name matches a pattern
    of ``spec`` by the factorkern layer of that family, factorized from its weight with
    ``Layer.from_linear(linear, **how)``.

    Args:
        model: any nn.Module.
        spec: {pattern: entry} with fnmatch patterns on module names (``"encoder.*.attn.*"``,
            ``"*"``); the first matching pattern wins. An entry is a family name, a
            (family, kwargs) pair or a dict with a "family" key; families: dense_sparse,
            sparse_dense, armor, littlebit, monarch, lowrank, sparse24; kwargs are the family's
            ``from_linear`` arguments (k, r, nblocks, block, iters, residual, ...). ``None``
            leaves matching layers dense.
        verbose: print the summary table.
        strict: raise when a matching layer cannot be converted (e.g. a block size that does not
            tile it) instead of leaving it dense and listing it as skipped.
        calibration: optional iterable of model inputs (tensors, tuples of positional
            arguments or dicts of keyword arguments). The model runs on them once, before any
            layer changes, with forward hooks that keep each matching layer's input statistics
            in bounded memory (``factorkern.nn.calibration``: column norms for sparse24, at most
            in x in numbers for armor, dense_sparse, sparse_dense), which then weigh those
            families' factorizers (Wanda scores, ARMOR's weighted fit, output errors). An ``X``
            given in a spec entry wins over it.
        progress: a progress bar over the layers on stderr (default: when ``verbose`` and
            stderr is a terminal).
    Returns:
        ConvertReport (layers converted, parameters and bytes before and after, bits per
        weight, relative reconstruction errors).
    """
    if not isinstance(spec, dict):
        raise TypeError(f"spec must be a dict {{pattern: family spec}}, got {type(spec).__name__}")
    parsed = []
    for pattern, entry in spec.items():
        if entry is None:
            parsed.append((pattern, None, {}))
            continue
        fam, how = _parse(entry)
        if fam not in FAMILIES:
            raise ValueError(f"spec[{pattern!r}]: unknown family {fam!r}; families are "
                             f"{sorted(FAMILIES)}")
        parsed.append((pattern, fam, how))

    report = ConvertReport()
    targets = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    plan = []
    for name, linear in targets:
        match = next(((fam, how) for pat, fam, how in parsed if fnmatch.fnmatchcase(name, pat)),
                     None)
        if match is None or match[0] is None:
            report.skipped.append(name)
            continue
        plan.append((name, linear, *match))
    if progress is None:
        progress = verbose and sys.stderr.isatty()
    bar = Progress(len(plan), progress)
    stats = {}
    if calibration is not None:
        hooked = {name: (linear, CALIBRATED[fam]) for name, linear, fam, how in plan
                  if fam in CALIBRATED and "X" not in how}
        if hooked:
            stats = collect(model, hooked, calibration, log=bar.show)
    for name, linear, fam, how in plan:
        bar.show(f"{name} ({fam})")
        st = stats.pop(name, None)
        X = None if st is None else st.X()
        if X is not None:
            how = dict(how, X=X)
        try:
            layer = FAMILIES[fam].from_linear(linear, **how)
        except ValueError as e:  # a size this layer cannot take; bugs (TypeError...) propagate
            if strict:
                bar.close()
                raise ValueError(f"convert: layer {name!r} ({fam}): {e}") from e
            report.skipped.append(f"{name} ({e})")
            bar.step(f"{name} ({fam}): skipped")
            continue
        # How the layer was made, kept with it (fk.nn.save writes it into the file's header).
        layer.conversion = {"family": fam, "calibrated": X is not None,
                            "args": _json_safe({k: v for k, v in how.items() if k != "X"})}
        before = [linear.weight]
        after = layer.factor_tensors()
        report.layers.append(ConvertedLayer(
            name, fam, linear.in_features, linear.out_features,
            params_before=linear.weight.numel(),
            params_after=sum(t.numel() for t in after if t.is_floating_point()),
            bytes_before=_nbytes(before), bytes_after=_nbytes(after),
            bits_per_weight=layer.bits_per_weight(),
            error=getattr(layer, "factorization_error", None)))
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer)
        bar.step(f"{name} ({fam})")
    bar.close()
    model.factorkern_spec = _json_safe({p: e for p, e in spec.items()})
    if verbose:
        print(report)
    return report


