"""2:4 patterns given as masks (a bit or a bool per weight, as other libraries store them) ->
Sparse24's canonical int16 meta, without building a dense matrix."""

from __future__ import annotations

import torch

from ..formats.sparse24 import Sparse24, _nibbles_from_indices

# Group mask (bit i set = column 4g + i kept) -> (idx0, idx1), or (-1, -1) unless exactly 2 bits.
_PAIRS = [[(m & -m).bit_length() - 1, m.bit_length() - 1] if bin(m).count("1") == 2
          else [-1, -1] for m in range(16)]


def pairs_from_group_masks(group_masks: torch.Tensor, what: str = "mask") -> torch.Tensor:
    """Integer group masks (rows, groups), bit i = column 4g + i kept -> the kept indices
    (idx0 < idx1) int64 (rows, groups, 2). Raises ValueError naming the first group that does
    not keep exactly 2 (``what`` names the source)."""
    lut = torch.tensor(_PAIRS, dtype=torch.int64, device=group_masks.device)
    idx = lut[group_masks.to(torch.int64) & 0xF]
    bad = (idx[..., 0] < 0).nonzero()
    if bad.numel():
        r, g = bad[0].tolist()
        n = bin(int(group_masks[r, g]) & 0xF).count("1")
        raise ValueError(f"{what}: row {r}, columns {4 * g}..{4 * g + 3} (group {g}) keep {n} "
                         "weights; a 2:4 pattern keeps exactly 2 of every 4")
    return idx


def sparse24_from_group_masks(values: torch.Tensor, group_masks: torch.Tensor, cols: int,
                              what: str = "mask") -> Sparse24:
    """Sparse24 from the kept values and a 4-bit mask per group of 4 columns.

    values: (rows, cols // 2), the kept elements of each row in increasing column order (the
    order ``W[mask]`` gives). group_masks: integer (rows, cols // 4), bit i of entry (r, g) set
    iff W[r, 4g + i] is kept; every group must keep exactly 2. ``what`` names the source in
    errors.
    """
    rows, groups = group_masks.shape
    if cols % 4 or groups != cols // 4:
        raise ValueError(f"{what}: {groups} groups of 4 do not make {cols} columns")
    idx = pairs_from_group_masks(group_masks, what)
    if tuple(values.shape) != (rows, cols // 2):
        raise ValueError(f"{what}: the kept values must be (rows, cols/2) = ({rows}, "
                         f"{cols // 2}), got {tuple(values.shape)}")
    return Sparse24(values.contiguous(), _nibbles_from_indices(idx), cols)


def group_masks_from_bool(mask: torch.Tensor) -> torch.Tensor:
    """bool (rows, cols) -> int64 (rows, cols // 4) group masks (bit i = column 4g + i)."""
    rows, cols = mask.shape
    if cols % 4:
        raise ValueError(f"a 2:4 mask needs cols a multiple of 4, got shape {tuple(mask.shape)}")
    weights = torch.tensor([1, 2, 4, 8], dtype=torch.int64, device=mask.device)
    return (mask.reshape(rows, cols // 4, 4).to(torch.int64) * weights).sum(-1)
