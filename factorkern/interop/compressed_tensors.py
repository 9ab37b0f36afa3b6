"""compressed-tensors' ``sparse-24-bitmask`` checkpoints (llm-compressor's 2:4 models) ->
Sparse24 and ``fk.nn.Sparse24Linear``, without decompressing to dense.

The format (compressed-tensors <= 0.14, ``Sparse24BitMaskCompressor``; later releases dropped
it) replaces a module's ``<name>.weight`` (out, in) by three tensors:

- ``<name>.shape``: int64 (2, 1), the dense shape [out, in];
- ``<name>.compressed``: (out, in / 2), the kept weights of each row in increasing column order
  (``W[mask]``; the compressor keeps the 2 largest |W| of every 4 consecutive weights of a row);
- ``<name>.bitmask``: uint8 (out, ceil(in / 8)), ``numpy.packbits(mask, bitorder="little")``:
  bit b of byte j of row r is 1 iff W[r, 8j + b] is kept.

So group g of a row (columns 4g..4g+3) is nibble g % 2 of byte g // 2, and its two set bits are
Sparse24's two indices: the conversion is a 16-entry table lookup per group, and the kept values
are Sparse24's ``values`` as they are. Other keys (biases, norms, embeddings) are left as the
compressor left them. The model's config names the format under
``quantization_config.sparsity_config.format`` ("sparse-24-bitmask").
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ..formats.sparse24 import Sparse24
from ._masks import sparse24_from_group_masks

FORMAT = "sparse-24-bitmask"
_PARTS = ("shape", "compressed", "bitmask")


def sparse24_from_bitmask(compressed: torch.Tensor, bitmask: torch.Tensor,
                          shape) -> Sparse24:
    """One ``sparse-24-bitmask`` weight -> Sparse24 (out, in), no dense matrix built.

    Args:
        compressed: (out, in / 2) kept values (float16, bfloat16, float32, float64).
        bitmask: uint8 (out, ceil(in / 8)), little-endian bits, 1 = kept.
        shape: the dense shape (out, in): a tensor (the checkpoint's ``.shape`` entry) or a pair.
    Raises ValueError (naming row and columns) when a group of 4 does not keep exactly 2.
    """
    dims = [int(d) for d in (shape.flatten().tolist() if isinstance(shape, torch.Tensor)
                             else shape)]
    if len(dims) != 2:
        raise ValueError(f"shape must be (out, in), got {dims}")
    rows, cols = dims
    if not isinstance(bitmask, torch.Tensor) or bitmask.dtype != torch.uint8:
        raise TypeError(f"bitmask must be a uint8 tensor, got "
                        f"{getattr(bitmask, 'dtype', type(bitmask).__name__)}")
    if cols % 4 or tuple(bitmask.shape) != (rows, -(-cols // 8)):
        raise ValueError(f"bitmask must be (out, ceil(in/8)) = ({rows}, {-(-cols // 8)}) for "
                         f"shape {dims} with in % 4 == 0, got {tuple(bitmask.shape)}")
    b = bitmask.to(torch.int64)
    groups = torch.stack([b & 0xF, b >> 4], dim=-1).reshape(rows, -1)[:, :cols // 4]
    return sparse24_from_group_masks(compressed, groups, cols, what="sparse-24-bitmask")


def _read(path) -> dict[str, torch.Tensor]:
    """A .safetensors file, or every .safetensors file of a folder (sharded checkpoints)."""
    from safetensors.torch import load_file

    path = Path(path)
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
    if not files:
        raise FileNotFoundError(f"no .safetensors file in {path}")
    sd: dict[str, torch.Tensor] = {}
    for f in files:
        sd.update(load_file(str(f)))
    return sd


def sparse24_bitmask_modules(state_dict: dict) -> list[str]:
    """Names of the modules a ``sparse-24-bitmask`` state_dict compressed (those with
    ``.shape``, ``.compressed`` and ``.bitmask`` entries)."""
    return sorted(k[:-len(".bitmask")] for k in state_dict if k.endswith(".bitmask")
                  and all(f"{k[:-len('.bitmask')]}.{p}" in state_dict for p in _PARTS))


def load_sparse24_bitmask(model: nn.Module, state_dict, *, strict: bool = True,
                          device=None) -> list[str]:
    """Load a ``sparse-24-bitmask`` checkpoint into ``model``: every compressed nn.Linear is
    replaced, in place, by a ``fk.nn.Sparse24Linear`` holding its kept values and pattern (no
    dense weight is built), and every other entry (biases, norms, embeddings) is loaded as usual.

    Args:
        model: the dense model the checkpoint was made from (its nn.Linear at the compressed
            names; their weights are not read). A skeleton on the meta device works too when
            the checkpoint holds every tensor of the model.
        state_dict: the compressed state_dict (``ModelCompressor.compress(model)``), or a path
            to a .safetensors file or to a folder of them (a saved llm-compressor model).
        strict: raise KeyError when the model has entries the checkpoint lacks or the other way
            round (the compressed modules' own ``weight`` aside).
        device: where the loaded tensors go (default: where the checkpoint's tensors are).
    Returns:
        the names of the modules that became Sparse24Linear.
    """
    if isinstance(state_dict, (str, os.PathLike)):
        state_dict = _read(state_dict)
    sd = dict(state_dict)
    names = sparse24_bitmask_modules(sd)
    if not names:
        raise ValueError(f"no {FORMAT} entries (<name>.shape/.compressed/.bitmask) found")
    from ..nn.sparse import Sparse24Linear

    swapped = []
    for name in names:
        try:
            old = model.get_submodule(name)
        except AttributeError:
            raise KeyError(f"checkpoint compresses {name!r} but the model has no such "
                           "module") from None
        parts = {p: sd.pop(f"{name}.{p}") for p in _PARTS}
        S = sparse24_from_bitmask(parts["compressed"], parts["bitmask"], parts["shape"])
        if hasattr(old, "in_features") and (old.out_features, old.in_features) != S.shape:
            raise ValueError(f"{name}: checkpoint weight is {S.shape} (out, in) but the model's "
                             f"layer is ({old.out_features}, {old.in_features})")
        bias = sd.pop(f"{name}.bias", None)
        if device is not None:
            S = S.to(device)
            bias = None if bias is None else bias.to(device)
        layer = Sparse24Linear.from_sparse24(S, bias)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, layer)
        swapped.append(name)
    if device is not None:
        sd = {k: v.to(device) for k, v in sd.items()}
    # A skeleton on the meta device takes the tensors themselves (copying into meta is a no-op).
    on_meta = any(t.is_meta for t in model.state_dict().values())
    res = model.load_state_dict(sd, strict=False, assign=on_meta)
    if strict:
        own = tuple(f"{n}." for n in swapped)
        missing = [k for k in res.missing_keys if not k.startswith(own)]
        if missing or res.unexpected_keys:
            raise KeyError(f"{FORMAT} checkpoint does not match the model: missing "
                           f"{missing[:8]}, unexpected {res.unexpected_keys[:8]}")
    return swapped
