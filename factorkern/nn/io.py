"""fk.nn.save / fk.nn.load: a converted model on disk, reloaded without factorizing again.

``save(model, path)`` writes one safetensors file: every tensor of ``model.state_dict()`` (the
factors of the factorkern layers and everything else) and, in the header's metadata, under the
key ``"factorkern"``, a JSON document (``FORMAT_VERSION``) with

- ``layers``: for each factorkern layer, by its qualified name, its class, constructor
  arguments (in/out features, bias, dtype and the family's sizes: k, r, nblocks, block, ...),
  the factor formats its tensors hold, and how it was made (``fk.nn.convert``'s family and
  arguments, the reconstruction error) when known;
- ``spec``: the conversion spec given to ``fk.nn.convert`` (JSON-safe parts), when known;
- ``aliases``: names of tensors shared with another entry (tied weights), stored once.

``load(model, path)`` reads the header, replaces each listed module of ``model`` (the dense
nn.Linear of a freshly built model) by an empty layer of the recorded class built on the meta
device (no memory, no initialization, no factorization), loads the factors into it and the
remaining tensors into the rest of the model. The header also carries ``"format": "pt"``, so a
file saved as ``<folder>/model.safetensors`` beside a Hugging Face ``config.json`` is read by
``from_pretrained`` too (the dense parts; see docs/interop.md for the round trip).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ._base import FactorizedLinear
from .armor import ArmorLinear
from .dense_sparse import DenseSparseLinear, SparseDenseLinear
from .littlebit import LittleBitLinear
from .lowrank import LowRankLinear
from .monarch import MonarchLinear
from .sparse import Sparse24Linear

FORMAT_VERSION = 1
HEADER_KEY = "factorkern"
FILE_NAME = "model.safetensors"  # inside a folder: Hugging Face's name

_CLASSES = {c.__name__: c for c in (DenseSparseLinear, SparseDenseLinear, ArmorLinear,
                                    LittleBitLinear, MonarchLinear, LowRankLinear,
                                    Sparse24Linear)}

# The family sizes each class's constructor takes, read back from a built layer.
_SIZES = {
    "DenseSparseLinear": lambda m: {"k": m.k},
    "SparseDenseLinear": lambda m: {"k": m.k},
    "ArmorLinear": lambda m: {"block": [m.block_a, m.block_b]},
    "LittleBitLinear": lambda m: {"r": m.r, "residual": m.nterms == 2, "latent": m.latent},
    "MonarchLinear": lambda m: {"nblocks": m.nblocks},
    "LowRankLinear": lambda m: {"r": m.r},
    "Sparse24Linear": lambda m: {},
}

# Which factor format each tensor holds (factorkern.formats, documented bit for bit there).
_FORMATS = {
    "DenseSparseLinear": {"D": "dense (out, k)", "s_values": "Sparse24.values (k, in/2)",
                          "s_meta": "Sparse24.meta (k, ceil(in/16)) int16"},
    "SparseDenseLinear": {"s_values": "Sparse24.values (out, k/2)",
                          "s_meta": "Sparse24.meta (out, ceil(k/16)) int16", "D": "dense (k, in)"},
    "ArmorLinear": {"a_blocks": "BlockDiag.blocks (out/bA, bA, bA)",
                    "s_values": "Sparse24.values (out, in/2)",
                    "s_meta": "Sparse24.meta (out, ceil(in/16)) int16",
                    "b_blocks": "BlockDiag.blocks (in/bB, bB, bB)"},
    "LittleBitLinear": {"u_words{t}": "SignBits.words of U (out, r), int32",
                        "v_words{t}": "SignBits.words of V.T (r, in), int32",
                        "h{t}": "scale (out,)", "l{t}": "scale (r,)", "g{t}": "scale (in,)"},
    "MonarchLinear": {"blkdiag1": "MonarchFactors.w1 (k, q, p)",
                      "blkdiag2": "MonarchFactors.w2 (l, s, r)"},
    "LowRankLinear": {"U": "dense (out, r)", "V": "dense (in, r)"},
    "Sparse24Linear": {"s_values": "Sparse24.values (out, in/2)",
                       "s_meta": "Sparse24.meta (out, ceil(in/16)) int16"},
}


def _json_safe(obj):
    """obj if JSON can hold it (nested dicts/lists/tuples of str, numbers, bool, None), else a
    short description (tensors, e.g. calibration activations, are not stored)."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, torch.Tensor):
        return f"<tensor {tuple(obj.shape)} {str(obj.dtype).replace('torch.', '')}>"
    return repr(obj)


def layer_config(layer: FactorizedLinear) -> dict:
    """What ``load`` needs to rebuild ``layer`` empty: class, sizes, bias, dtype."""
    name = type(layer).__name__
    if name not in _SIZES or _CLASSES[name] is not type(layer):
        raise TypeError(f"fk.nn.save: cannot record a layer of class {name}; layers known: "
                        f"{sorted(_CLASSES)}")
    return {"class": name, "in_features": layer.in_features,
            "out_features": layer.out_features, "bias": layer.bias is not None,
            "dtype": str(layer.weight_dtype()).replace("torch.", ""),
            "args": _SIZES[name](layer)}


def build_empty(config: dict, device="meta") -> FactorizedLinear:
    """An empty layer (on the meta device by default) from a ``layer_config`` record."""
    cls = _CLASSES.get(config.get("class"))
    if cls is None:
        raise ValueError(f"unknown factorkern layer class {config.get('class')!r}; known: "
                         f"{sorted(_CLASSES)}")
    dtype = getattr(torch, config["dtype"])
    return cls(config["in_features"], config["out_features"], bias=config["bias"],
               device=device, dtype=dtype, **config["args"])


def _dedup(sd: dict) -> tuple[dict, dict]:
    """(tensors to write, {alias: kept name}) : entries that are the same view of the same
    storage (tied weights) are written once; other overlaps are copied apart."""
    out, aliases, seen = {}, {}, {}
    for k, t in sd.items():
        if t.is_meta:
            raise ValueError(f"fk.nn.save: {k!r} is on the meta device (not loaded yet)")
        t = t.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape),
               tuple(t.stride()), t.dtype) if t.numel() else None
        if key is not None and key in seen:
            aliases[k] = seen[key]
            continue
        if key is not None:
            seen[key] = k
        out[k] = t
    ptrs: dict[int, int] = {}
    for k, t in out.items():  # partial overlaps (slices of one buffer): safetensors refuses
        if t.numel():
            p = t.untyped_storage().data_ptr()
            ptrs[p] = ptrs.get(p, 0) + 1
    return ({k: (t.clone() if t.numel() and ptrs[t.untyped_storage().data_ptr()] > 1
                 else t).contiguous() for k, t in out.items()}, aliases)


def _file(path) -> Path:
    path = Path(path)
    return path / FILE_NAME if path.is_dir() else path


def save(model: nn.Module, path, *, metadata: dict | None = None) -> Path:
    """Write ``model`` (its factorkern layers and every other tensor) to a safetensors file.

    Args:
        model: any nn.Module holding factorkern layers (e.g. after ``fk.nn.convert``).
        path: a file name, or an existing folder (then ``<folder>/model.safetensors``).
        metadata: extra JSON-safe information stored under ``"user"`` in the header.
    Returns:
        the path written.
    """
    from safetensors.torch import save_file

    layers = {}
    for name, mod in model.named_modules():
        if isinstance(mod, FactorizedLinear):
            cfg = layer_config(mod)
            fmts = _FORMATS[cfg["class"]]
            if cfg["class"] == "LittleBitLinear":
                fmts = {k.replace("{t}", str(t)): v for t in range(mod.nterms)
                        for k, v in fmts.items()}
            cfg["formats"] = fmts
            if getattr(mod, "conversion", None) is not None:
                cfg["conversion"] = _json_safe(mod.conversion)
            if getattr(mod, "factorization_error", None) is not None:
                cfg["error"] = float(mod.factorization_error)
            layers[name] = cfg
    tensors, aliases = _dedup(model.state_dict())
    from .. import __version__

    header = {"format_version": FORMAT_VERSION, "factorkern_version": __version__,
              "layers": layers, "aliases": aliases,
              "spec": _json_safe(getattr(model, "factorkern_spec", None))}
    if metadata is not None:
        header["user"] = _json_safe(metadata)
    out = _file(path)
    save_file(tensors, str(out), metadata={"format": "pt", HEADER_KEY: json.dumps(header)})
    return out


def read_header(path) -> dict:
    """The factorkern header of a file written by ``save`` (ValueError if it has none)."""
    from safetensors import safe_open

    with safe_open(str(_file(path)), framework="pt") as f:
        meta = f.metadata() or {}
    if HEADER_KEY not in meta:
        raise ValueError(f"{_file(path)} has no factorkern header: it was not written by "
                         "fk.nn.save")
    header = json.loads(meta[HEADER_KEY])
    if header.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"{_file(path)} has format version {header['format_version']}; this "
                         f"factorkern reads up to {FORMAT_VERSION}")
    return header


def _device_of(module: nn.Module, default):
    if default is not None:
        return torch.device(default)
    for t in list(module.parameters()) + list(module.buffers()):
        if not t.is_meta:
            return t.device
    return torch.device("cpu")


def load(model: nn.Module, path, *, strict: bool = True, device=None) -> nn.Module:
    """Load a file written by ``save`` into ``model``, in place, and return it.

    Each module recorded as a factorkern layer (usually an nn.Linear of the freshly built dense
    model, whose weights are not read) is replaced by an empty layer of the recorded class built
    on the meta device, which then takes the saved factors; every other saved tensor is loaded
    into the rest of the model.

    Args:
        model: the model the file was saved from, rebuilt (dense, converted, or on the meta
            device: ``with torch.device("meta"): model = Model(config)``).
        path: the file, or a folder holding ``model.safetensors``.
        strict: raise KeyError when the model has tensors the file lacks or the other way round.
        device: where the tensors go (default: where each replaced module's tensors were, the
            CPU for a meta model).
    """
    from safetensors import safe_open

    file = _file(path)
    header = read_header(file)
    layers = header["layers"]
    aliases = header.get("aliases", {})
    with safe_open(str(file), framework="pt") as f:
        keys = set(f.keys())
        taken = set()
        for name, cfg in layers.items():
            try:
                old = model.get_submodule(name)
            except AttributeError:
                raise KeyError(f"fk.nn.load: the file has a layer {name!r} the model lacks") \
                    from None
            dev = _device_of(old, device)
            layer = build_empty(cfg)
            own = {k: f"{name}.{k}" for k in layer.state_dict()}
            missing = [full for full in own.values() if full not in keys and full not in aliases]
            if missing:
                raise KeyError(f"fk.nn.load: layer {name!r} ({cfg['class']}) lacks {missing}")
            sd = {k: f.get_tensor(aliases.get(full, full)).to(dev) for k, full in own.items()}
            layer.load_state_dict(sd, assign=True)
            if isinstance(old, FactorizedLinear):
                layer.backend = old.backend
            if "conversion" in cfg:
                layer.conversion = cfg["conversion"]
            if "error" in cfg:
                layer.factorization_error = cfg["error"]
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, layer)
            taken.update(own.values())
        rest = {}
        for k in sorted((keys | set(aliases)) - taken):
            src = aliases.get(k, k)
            rest[k] = f.get_tensor(src)
    state = model.state_dict()
    on_meta = any(t.is_meta for t in state.values())
    if device is not None or on_meta:
        dev = torch.device(device) if device is not None else torch.device("cpu")
        rest = {k: v.to(dev) for k, v in rest.items()}
    res = model.load_state_dict(rest, strict=False, assign=on_meta)
    missing = [k for k in res.missing_keys if k not in taken]  # the layers loaded above
    if strict and (missing or res.unexpected_keys):
        raise KeyError(f"fk.nn.load: the file does not match the model: missing "
                       f"{missing[:8]}, unexpected {res.unexpected_keys[:8]}")
    if header.get("spec") is not None:
        model.factorkern_spec = header["spec"]
    return model
