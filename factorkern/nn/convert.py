"""fk.nn.convert: swap matching nn.Linear modules of a model for factorkern layers."""

from __future__ import annotations

import fnmatch
import inspect
import sys
import warnings
from dataclasses import dataclass, field

import torch
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
    unused_patterns: list[str] = field(default_factory=list)

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


def _names(targets, limit: int = 8) -> str:
    names = [n for n, _ in targets]
    more = f", ... ({len(names)} in all)" if len(names) > limit else ""
    return ", ".join(repr(n) for n in names[:limit]) + more if names else "none"


def _shadowed_by(pattern, parsed, targets):
    """The earlier pattern that takes every layer ``pattern`` matches, or None when it matches
    no nn.Linear at all."""
    for name, _ in targets:
        if fnmatch.fnmatchcase(name, pattern):
            return next(p for p, _, _ in parsed if fnmatch.fnmatchcase(name, p))
    return None


def _check_arguments(name: str, pattern: str, fam: str, how: dict) -> None:
    """Refuse keywords the family's from_linear does not take, before any layer is converted."""
    sig = inspect.signature(FAMILIES[fam].from_linear)
    params = [p for p in sig.parameters.values() if p.name != "linear"]
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return
    accepted = [p.name for p in params
                if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                              inspect.Parameter.KEYWORD_ONLY)]
    wrong = [k for k in how if k not in accepted]
    if wrong:
        raise TypeError(f"convert: layer {name!r} (spec pattern {pattern!r}, family {fam!r}): "
                        f"unknown argument{'s' if len(wrong) > 1 else ''} "
                        f"{', '.join(map(repr, wrong))}; {FAMILIES[fam].__name__}.from_linear "
                        f"accepts {', '.join(accepted)}")


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
            tile it) instead of leaving it dense and listing it as skipped, and when a pattern
            applies to no layer (without strict: a warning).
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
    Raises:
        TypeError naming the layer, the family and the accepted arguments when an entry has a
        keyword its family's ``from_linear`` does not take (checked before any layer changes).
    Warns:
        when a converted layer stores more bits per weight than its dense weight.
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
    plan, used = [], set()
    for name, linear in targets:
        i = next((i for i, (pat, _, _) in enumerate(parsed) if fnmatch.fnmatchcase(name, pat)),
                 None)
        if i is not None:
            used.add(i)
        if i is None or parsed[i][1] is None:
            report.skipped.append(name)
            continue
        pattern, fam, how = parsed[i]
        _check_arguments(name, pattern, fam, how)
        plan.append((name, linear, fam, how))
    unused = [(pat, _shadowed_by(pat, parsed, targets)) for i, (pat, _, _) in enumerate(parsed)
              if i not in used]
    report.unused_patterns = [pat for pat, _ in unused]
    if unused:
        why = "; ".join(f"{pat!r} " + (f"(every layer it matches is taken by the earlier pattern "
                                       f"{first!r})" if first else "(matches no nn.Linear)")
                        for pat, first in unused)
        if strict:
            raise ValueError(f"convert: spec patterns that apply to no layer: {why}. nn.Linear "
                             f"layers of the model: {_names(targets)}")
        warnings.warn(f"convert: spec patterns that apply to no layer: {why}", stacklevel=2)
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
        row = ConvertedLayer(
            name, fam, linear.in_features, linear.out_features,
            params_before=linear.weight.numel(),
            params_after=sum(t.numel() for t in after if t.is_floating_point()),
            bytes_before=_nbytes(before), bytes_after=_nbytes(after),
            bits_per_weight=layer.bits_per_weight(),
            error=getattr(layer, "factorization_error", None))
        report.layers.append(row)
        dense_bits = torch.finfo(linear.weight.dtype).bits
        if row.bits_per_weight > dense_bits:
            shown = {k: v for k, v in how.items() if k != "X"}
            warnings.warn(f"convert: layer {name!r} ({fam}, {shown}) is larger than the dense "
                          f"layer: {row.bits_per_weight:.2f} bits/weight against "
                          f"{dense_bits} for its dense {linear.weight.dtype} weight "
                          f"({row.bytes_after:,} bytes instead of {row.bytes_before:,})",
                          stacklevel=2)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer)
        bar.step(f"{name} ({fam})")
    bar.close()
    model.factorkern_spec = _json_safe({p: e for p, e in spec.items()})
    if verbose:
        print(report)
    return report


