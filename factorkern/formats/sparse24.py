"""Sparse24: a 2:4 semi-structured sparse matrix, the canonical compressed layout.

Layout (the contract, docs/formats.md), for a matrix S of shape (rows, cols), cols % 4 == 0,
with at most 2 nonzeros in each group of 4 consecutive columns:

- ``values``: (rows, cols // 2), same dtype as the matrix. For group g of row i (columns 4g..4g+3)
  ``values[i, 2g]`` and ``values[i, 2g + 1]`` are the kept elements in increasing column order.
- ``meta``: int16 (rows, ceil(cols / 16)). One 4-bit nibble per group: low 2 bits = index (0..3)
  of the first kept element inside the group, high 2 bits = index of the second; idx0 < idx1, so
  the nibbles 0b0000, 0b0101, 0b1010, 0b1111 never describe a group. Nibbles are packed little
  endian, 4 per 16-bit word: group g sits in word g // 4 at bits 4 * (g % 4) .. 4 * (g % 4) + 3.
  When cols is not a multiple of 16 the unused nibbles of the last word are 0 (never a valid
  group nibble, so padding can always be told apart).

A group with fewer than 2 nonzeros keeps explicit zeros: its nonzero positions are completed with
the lowest unused indices (so a zero group has nibble 0b0100, indices 0 and 1).
This is the pre-reorder layout that PyTorch's semi-structured conversions and CUTLASS start from;
kernel-specific layouts are derived from it by ``prepare(backend)``.
"""

from __future__ import annotations

import torch

from ._common import FormatBase, as_int, check_float, check_int, has_data

# Index pairs (idx0, idx1) in nibble order: nibble = idx0 | (idx1 << 2).
_VALID_NIBBLES = frozenset(i | (j << 2) for i in range(4) for j in range(4) if i < j)


def _nibbles_from_indices(idx: torch.Tensor) -> torch.Tensor:
    """idx: (rows, groups, 2) int64 in 0..3 -> int16 meta (rows, ceil(groups / 4))."""
    rows, groups, _ = idx.shape
    nib = idx[..., 0] | (idx[..., 1] << 2)  # (rows, groups)
    pad = (-groups) % 4
    if pad:
        nib = torch.cat([nib, nib.new_zeros(rows, pad)], dim=1)
    nib = nib.view(rows, -1, 4)
    shifts = torch.arange(4, device=idx.device, dtype=torch.int64) * 4
    words = (nib << shifts).sum(-1)  # 0 .. 65535
    words = torch.where(words >= 1 << 15, words - (1 << 16), words)
    return words.to(torch.int16)


def meta_nibbles(meta: torch.Tensor, groups: int) -> torch.Tensor:
    """Decode int16 meta (rows, ceil(groups / 4)) -> nibbles int64 (rows, groups)."""
    words = meta.to(torch.int64) & 0xFFFF
    shifts = torch.arange(4, device=meta.device, dtype=torch.int64) * 4
    nib = (words.unsqueeze(-1) >> shifts) & 0xF  # (rows, words, 4)
    return nib.reshape(meta.shape[0], -1)[:, :groups]


def meta_indices(meta: torch.Tensor, cols: int) -> torch.Tensor:
    """Column index of every kept value: int64 (rows, cols // 2), matching ``values``."""
    groups = cols // 4
    nib = meta_nibbles(meta, groups)
    # One table lookup per nibble: (idx0, idx1) = (nib & 3, nib >> 2), plus the group's base.
    lut = torch.tensor([[n & 3, n >> 2] for n in range(16)], device=meta.device)
    base = torch.arange(0, cols, 4, device=meta.device, dtype=torch.int64).view(1, groups, 1)
    # (embedding is the fastest row gather for a small table on the CPU)
    return (torch.nn.functional.embedding(nib, lut) + base).reshape(meta.shape[0], cols // 2)


# Word-parallel check of the nibbles: for the 2-bit fields lo = idx0 and hi = idx1 of every nibble,
# d = (hi + 4) - lo is in 1..7 and never borrows from the next nibble; idx0 < idx1 iff d >= 5,
# i.e. bit 2 of d is set and bit 0 or 1 too. On int64 this checks 16 nibbles (four int16 words)
# per element.
_FILL_WORD = 0x4444  # four valid nibbles (indices 0, 1): pads a row to a multiple of 4 words


def _nibbles_ok(w: torch.Tensor, nibbles: int) -> torch.Tensor:
    """w: int32/int64 holding ``nibbles`` packed nibbles -> bool, all of them valid. Bits above
    the nibbles may hold anything (an arithmetic shift's sign copies): the masks drop them."""
    lo = int("3" * nibbles, 16)
    one = int("1" * nibbles, 16)
    d = ((w >> 2) & lo | (lo + one)) - (w & lo)   # lo + one = 0x44..4
    return ((d >> 2) & (d | (d >> 1)) & one) == one


def _all_nibbles_valid(words: torch.Tensor) -> bool:
    """words: int16 (rows, n) -> whether all 4 * n nibbles are valid (idx0 < idx1)."""
    pad = (-words.shape[1]) % 4
    if pad or not words.is_contiguous() or words.storage_offset() % 4:
        words = torch.nn.functional.pad(words, (0, pad), value=_FILL_WORD)
    return bool(_nibbles_ok(words.view(torch.int64), 16).all())


def meta_is_valid(meta: torch.Tensor, groups: int) -> bool:
    """Whether int16 meta (rows, ceil(groups / 4)) holds a valid nibble for each of ``groups``
    groups and zero padding nibbles. Vectorized, 16 nibbles per int64 operation: a few ms on a
    CPU core for the meta of a 4096 x 11008 matrix. ``_describe_bad_meta`` says what is
    wrong."""
    full, rem = divmod(groups, 4)
    if full and not _all_nibbles_valid(meta[:, :full] if rem else meta):
        return False
    if rem:
        last = meta[:, full].to(torch.int32) & 0xFFFF
        if bool((last >> (4 * rem)).any()):        # padding nibbles must be 0
            return False
        if not bool(_nibbles_ok(last, rem).all()):
            return False
    return True


def _describe_bad_meta(meta: torch.Tensor, groups: int) -> str:
    """The first offending nibble of invalid meta, in words (the slow path, for the error)."""
    words = meta.shape[1]
    nib = meta_nibbles(meta, 4 * words)
    valid = torch.tensor(sorted(_VALID_NIBBLES), device=meta.device)
    bad = ~torch.isin(nib[:, :groups], valid)
    if bool(bad.any()):
        r, g = bad.nonzero()[0].tolist()
        return (f"Sparse24 meta: group {g} of row {r} has nibble {int(nib[r, g]):#06b}, not a "
                f"valid (idx0 < idx1) pair")
    r, g = (nib[:, groups:] != 0).nonzero()[0].tolist()
    return (f"Sparse24 meta: padding nibbles past the last group must be 0 (row {r}, nibble "
            f"{groups + g} of {4 * words} is {int(nib[r, groups + g]):#06b})")


def _find_bad_group(S: torch.Tensor):
    """First (row, group) of S with more than 2 nonzeros, or None."""
    rows, cols = S.shape
    counts = (S.reshape(rows, cols // 4, 4) != 0).sum(-1)
    bad = (counts > 2).nonzero()
    if bad.numel() == 0:
        return None
    return int(bad[0, 0]), int(bad[0, 1])


def _indices_of_kept(mask: torch.Tensor) -> torch.Tensor:
    """mask: (rows, groups, 4) bool with <= 2 True per group -> idx (rows, groups, 2) sorted.

    Groups with fewer than 2 True are completed with the lowest unused positions.
    """
    pos = torch.arange(4, device=mask.device)
    # Sort key: kept positions first (in order), then unused positions (in order).
    key = torch.where(mask, pos, pos + 4)
    order = key.argsort(dim=-1)[..., :2]
    return order.sort(dim=-1).values


def _check_no_nan(name: str, t: torch.Tensor) -> None:
    if t.is_floating_point() and has_data(t):
        nan = torch.isnan(t)
        if bool(nan.any()):
            r, c = nan.nonzero()[0].tolist()
            raise ValueError(f"{name} has NaN entries (first at row {r}, column {c}); prune_24 "
                             f"needs finite or infinite values to rank")


def prune_24(W: torch.Tensor, scores: torch.Tensor | None = None) -> "Sparse24":
    """Make a 2:4 matrix from W by keeping, in each group of 4 consecutive columns, the 2 entries
    with the largest ``scores`` (default ``|W|``); ties go to the lower column.

    W: (rows, cols) float, cols % 4 == 0; scores: same shape as W. Returns a Sparse24.
    Raises ValueError naming the first NaN of W or scores (a NaN has no rank: dropping or keeping
    it silently would hide a broken weight). Infinite entries rank as the largest magnitudes.
    """
    check_float("W", W)
    if W.dim() != 2:
        raise ValueError(f"W must be 2-D (rows, cols), got shape {tuple(W.shape)}")
    rows, cols = W.shape
    if cols % 4 != 0 or cols == 0 or rows == 0:
        raise ValueError(f"W must have cols a positive multiple of 4, got shape {tuple(W.shape)}")
    _check_no_nan("W", W)
    if scores is None:
        scores = W.abs()
    else:
        if not isinstance(scores, torch.Tensor) or scores.is_complex():
            raise TypeError(f"scores must be a real tensor, got "
                            f"{getattr(scores, 'dtype', type(scores).__name__)}")
        if scores.shape != W.shape:
            raise ValueError(f"scores must have W's shape {tuple(W.shape)}, got "
                             f"{tuple(scores.shape)}")
        _check_no_nan("scores", scores)
    s = scores.reshape(rows, cols // 4, 4).to(torch.float64)
    # Stable top-2: argsort by -score with stable sort keeps the lower index on ties.
    top = torch.sort(-s, dim=-1, stable=True).indices[..., :2]
    idx = top.sort(dim=-1).values
    vals = W.reshape(rows, cols // 4, 4).gather(-1, idx)
    return Sparse24(vals.reshape(rows, cols // 2).contiguous(), _nibbles_from_indices(idx), cols)


class Sparse24(FormatBase):
    """A 2:4 sparse matrix (rows, cols) as ``values`` (rows, cols // 2) and int16 ``meta``
    (rows, ceil(cols / 16)); see the module docstring for the bit layout.

    ``cols`` defaults to ``2 * values.shape[1]``.
    """

    _tensor_fields = ("values", "meta")

    def __init__(self, values: torch.Tensor, meta: torch.Tensor, cols: int | None = None,
                 *, check: bool = True):
        self.values = values
        self.meta = meta
        if cols is None:
            check_float("values", values)
            if values.dim() != 2:
                raise ValueError(f"Sparse24 values must be 2-D (rows, cols/2), got shape "
                                 f"{tuple(values.shape)}")
            cols = 2 * values.shape[1]
        self.cols = as_int("Sparse24 cols", cols)
        super().__init__()
        if check:
            self.validate()

    # -- contract --------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.values.shape[0]), self.cols)

    @property
    def dtype(self) -> torch.dtype:
        return self.values.dtype

    @property
    def device(self) -> torch.device:
        return self.values.device

    def _validate(self) -> None:
        v, m = self.values, self.meta
        check_float("values", v)
        check_int("meta", m, torch.int16)
        if v.dim() != 2 or m.dim() != 2:
            raise ValueError(f"Sparse24 values and meta must be 2-D, got {tuple(v.shape)} and "
                             f"{tuple(m.shape)}")
        rows, cols = v.shape[0], self.cols
        if cols <= 0 or cols % 4 != 0 or rows == 0:
            raise ValueError(f"Sparse24 needs rows > 0 and cols a positive multiple of 4, got "
                             f"({rows}, {cols})")
        if v.shape[1] != cols // 2:
            raise ValueError(f"Sparse24 values must be (rows, cols/2) = ({rows}, {cols // 2}), "
                             f"got {tuple(v.shape)}")
        want = (rows, -(-cols // 16))
        if tuple(m.shape) != want:
            raise ValueError(f"Sparse24 meta must be int16 (rows, ceil(cols/16)) = {want}, got "
                             f"{tuple(m.shape)}")
        if m.device != v.device:
            raise ValueError(f"Sparse24 meta is on {m.device} but values on {v.device}")
        if has_data(m) and not meta_is_valid(m, cols // 4):
            raise ValueError(_describe_bad_meta(m, cols // 4))

    @classmethod
    def from_dense(cls, S: torch.Tensor) -> "Sparse24":
        """Compress a matrix that is already 2:4 (at most 2 nonzeros in every group of 4
        consecutive columns). Raises ValueError naming the first offending group otherwise."""
        check_float("S", S)
        if S.dim() != 2:
            raise ValueError(f"S must be 2-D (rows, cols), got shape {tuple(S.shape)}")
        rows, cols = S.shape
        if cols % 4 != 0 or cols == 0 or rows == 0:
            raise ValueError(f"S must have cols a positive multiple of 4 (2:4 groups), got shape "
                             f"{tuple(S.shape)}")
        bad = _find_bad_group(S)
        if bad is not None:
            r, g = bad
            nz = (S[r, 4 * g:4 * g + 4] != 0).sum().item()
            raise ValueError(f"S is not 2:4 sparse: row {r}, columns {4 * g}..{4 * g + 3} "
                             f"(group {g}) hold {nz} nonzeros, at most 2 allowed")
        grouped = S.reshape(rows, cols // 4, 4)
        idx = _indices_of_kept(grouped != 0)
        vals = grouped.gather(-1, idx).reshape(rows, cols // 2).contiguous()
        return cls(vals, _nibbles_from_indices(idx), cols)

    def indices(self) -> torch.Tensor:
        """Column of each kept value, int64 (rows, cols // 2)."""
        return meta_indices(self.meta, self.cols)

    def to_dense(self) -> torch.Tensor:
        rows = self.values.shape[0]
        out = self.values.new_zeros(rows, self.cols)
        return out.scatter(1, self.indices(), self.values)

    def with_values(self, values: torch.Tensor) -> "Sparse24":
        """Same pattern, new kept values (e.g. after training them)."""
        return Sparse24(values, self.meta, self.cols, check=False)

    # -- torch's semi-structured tensor ---------------------------------------------------
    def to_torch_semi_structured(self, backend: str | None = None, dtype=None):
        """Convert to ``torch.sparse.SparseSemiStructuredTensor`` (see
        ``factorkern.interop.torch_sparse.to_torch_semi_structured``: CUTLASS without a dense
        round trip, cuSPARSELt through the dense matrix on a GPU; float32 refused unless
        ``dtype`` casts it)."""
        from ..interop.torch_sparse import to_torch_semi_structured

        return to_torch_semi_structured(self, backend, dtype)

    @classmethod
    def from_torch_semi_structured(cls, t) -> "Sparse24":
        """Convert from a ``torch.sparse.SparseSemiStructuredTensor`` (see
        ``factorkern.interop.torch_sparse.from_torch_semi_structured``)."""
        from ..interop.torch_sparse import from_torch_semi_structured

        return from_torch_semi_structured(t)
