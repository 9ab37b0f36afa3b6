"""ARMOR checkpoints (LawrenceRLiu/ARMOR, read at commit
3977e5488f897f9cc7b6ef0388a69012e9d84b8f) -> ``fk.nn.ArmorLinear``.

ARMOR's compressed layer (``src/ARMOR_compress.py``: ``ARMOR_Linear``) is saved per layer with
``torch.save(module.state_dict())``; its keys, relative to the layer:

- ``A.diag_blocks`` (out / bA, bA, bA) and ``B.diag_blocks`` (in / bB, bB, bB)
  (``src/utils/blockwise_diag_matricies.py``: ``A @ M`` is ``torch.block_diag(*blocks) @ M``,
  the same blocks as ``BlockDiag``); the block sizes of A and B may differ.
- ``naive_compression_module.sparse_mask`` bool (out, in), 2 kept of every 4 consecutive
  columns, and ``naive_compression_module.X``: the kept values, ``X2d[sparse_mask]`` (row by row,
  increasing column; a 2-D X is the uncompressed (out, in) form);
- ``normalizer.norms.{j}`` / ``normalizer.zeros.{j}`` (``src/utils/normalizer.py``): norm j
  scales dimension ``norm_order[j]`` of the weight: a norm over dim 0 has shape (in,) and scales
  columns, over dim 1 (out,) and scales rows; zeros are additive and empty when unused
  (``zero: [False, False]`` in ``config/compress/ARMOR.yaml``). The naive module may carry its
  own normalizer (``naive_compression_module.normalizer.*``; ``config/compress/prune.yaml`` sets
  ``norm_order: []``, so none);
- ``bias`` when the layer kept one.

``reconstruct_`` gives W = N(A @ N_naive(S) @ B) with N(M) = diag(r) M diag(c), so

    W = diag(r) A diag(r_naive) S diag(c_naive) B diag(c)

and the normalizer vectors fold into the blocks: A' = diag(r) A diag(r_naive),
B' = diag(c_naive) B diag(c), W = A' S B' (``armor_mm``'s factors).
"""

from __future__ import annotations

import torch

from ..formats import BlockDiag
from ._common import require
from ._masks import group_masks_from_bool, pairs_from_group_masks, sparse24_from_group_masks

REPOSITORY = "LawrenceRLiu/ARMOR"
COMMIT = "3977e5488f897f9cc7b6ef0388a69012e9d84b8f"


def _get(sd, key):
    return require(sd, key, "ARMOR")


def _norm_scales(sd, prefix: str, norm_order, out_f: int, in_f: int, what: str):
    """(row scale (out,) or None, column scale (in,) or None) of one ARMOR Normalizer."""
    keys = sorted((k for k in sd if k.startswith(prefix + "norms.")),
                  key=lambda k: int(k.rsplit(".", 1)[1]))
    present = [k for k in keys if sd[k].numel() > 0]
    if present and len(keys) != len(norm_order):
        raise ValueError(f"{what}: the checkpoint has {len(keys)} norms ({keys}) but "
                         f"norm_order={tuple(norm_order)} names {len(norm_order)}; pass the "
                         "norm_order of the config it was made with")
    for k in sd:
        if k.startswith(prefix + "zeros.") and sd[k].numel() > 0:
            raise ValueError(f"{what}: {k} holds additive zero points (normalizer zero=True); "
                             "they cannot be folded into A and B")
    rows = cols = None
    for j, dim in enumerate(norm_order):
        key = f"{prefix}norms.{j}"
        v = sd.get(key)
        if v is None or v.numel() == 0:
            continue
        v = v.reshape(-1).to(torch.float64)
        n = in_f if dim == 0 else out_f
        if dim not in (0, 1) or v.numel() != n:
            raise ValueError(f"{what}: {key} has {v.numel()} entries; a norm over dim {dim} "
                             f"of an (out, in) = ({out_f}, {in_f}) weight has {n}")
        if dim == 0:
            cols = v if cols is None else cols * v
        else:
            rows = v if rows is None else rows * v
    return rows, cols


def armor_factors_from_official(state_dict: dict, prefix: str = "", *, norm_order=(0, 1),
                                naive_norm_order=(), dtype=None):
    """An ARMOR ``ARMOR_Linear`` state_dict -> (A BlockDiag (out, out), S Sparse24 (out, in),
    B BlockDiag (in, in), bias (out,) or None) with W = A @ S @ B.

    Args:
        state_dict: the layer's state_dict (or a whole model's, with ``prefix``).
        prefix: the layer's key prefix, e.g. ``"model.layers.0.self_attn.q_proj."``.
        norm_order, naive_norm_order: the ``normalizer_kwargs.norm_order`` of the layer and of
            its naive (sparse) module in the config the checkpoint was made with (ARMOR's
            defaults: (0, 1) and ()).
        dtype: dtype of the factors (default: the checkpoint's). The normalizer vectors are
            folded into A and B in float64 and rounded once.
    """
    A = _get(state_dict, prefix + "A.diag_blocks")
    B = _get(state_dict, prefix + "B.diag_blocks")
    X = _get(state_dict, prefix + "naive_compression_module.X")
    mask = _get(state_dict, prefix + "naive_compression_module.sparse_mask")
    for name, t in (("A.diag_blocks", A), ("B.diag_blocks", B)):
        if t.dim() != 3 or t.shape[1] != t.shape[2]:
            raise ValueError(f"ARMOR {name} must be square blocks (n, b, b), got "
                             f"{tuple(t.shape)}")
    out_f, in_f = A.shape[0] * A.shape[1], B.shape[0] * B.shape[1]
    if mask.dtype != torch.bool or tuple(mask.shape) != (out_f, in_f):
        raise ValueError(f"ARMOR sparse_mask must be bool (out, in) = ({out_f}, {in_f}) for "
                         f"A {tuple(A.shape)} and B {tuple(B.shape)}, got {mask.dtype} "
                         f"{tuple(mask.shape)}")
    dtype = dtype or A.dtype
    groups = group_masks_from_bool(mask)
    pairs_from_group_masks(groups, "ARMOR sparse_mask")  # the pattern first: its error is clearer
    values = X[mask] if X.dim() == 2 else X
    if values.numel() != out_f * in_f // 2:
        raise ValueError(f"ARMOR X holds {values.numel()} kept values; a 2:4 (out, in) = "
                         f"({out_f}, {in_f}) weight keeps {out_f * in_f // 2}")
    S = sparse24_from_group_masks(values.reshape(out_f, in_f // 2).to(dtype),
                                  groups, in_f, what="ARMOR sparse_mask")
    r, c = _norm_scales(state_dict, prefix + "normalizer.", norm_order, out_f, in_f,
                        "ARMOR normalizer")
    r2, c2 = _norm_scales(state_dict, prefix + "naive_compression_module.normalizer.",
                          naive_norm_order, out_f, in_f, "ARMOR naive_compression_module")
    a = A.to(torch.float64)
    b = B.to(torch.float64)
    nA, bA, _ = A.shape
    nB, bB, _ = B.shape
    if r is not None:    # diag(r) A: scale the rows of every block
        a = a * r.view(nA, bA, 1)
    if r2 is not None:   # A diag(r_naive): the columns
        a = a * r2.view(nA, 1, bA)
    if c2 is not None:   # diag(c_naive) B
        b = b * c2.view(nB, bB, 1)
    if c is not None:    # B diag(c)
        b = b * c.view(nB, 1, bB)
    bias = state_dict.get(prefix + "bias")
    return (BlockDiag(a.to(dtype).contiguous()), S, BlockDiag(b.to(dtype).contiguous()),
            None if bias is None else bias.to(dtype))


def armor_linear_from_official(state_dict: dict, prefix: str = "", **kwargs):
    """An ARMOR ``ARMOR_Linear`` state_dict -> ``fk.nn.ArmorLinear(block=(bA, bB))`` holding
    the folded factors (keyword arguments as ``armor_factors_from_official``)."""
    from ..nn.armor import ArmorLinear

    A, S, B, bias = armor_factors_from_official(state_dict, prefix, **kwargs)
    out_f, in_f = S.shape
    layer = ArmorLinear(in_f, out_f, block=(A.blocks.shape[1], B.blocks.shape[1]),
                        bias=bias is not None, device="meta", dtype=S.dtype)
    layer.load_state_dict({"a_blocks": A.blocks, "s_values": S.values, "s_meta": S.meta,
                           "b_blocks": B.blocks, **({} if bias is None else {"bias": bias})},
                          assign=True)
    return layer
