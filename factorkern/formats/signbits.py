"""SignBits: a {-1, +1} matrix packed 32 signs to an int32 word along its columns.

Layout (the contract, docs/formats.md), for Z of shape (rows, cols):
``words`` is int32 (rows, ceil(cols / 32)); bit b (b = 0 is the least significant bit) of word j
of row i is 1 iff Z[i, 32 * j + b] = +1 and 0 iff it is -1. Padding bits (columns >= cols in the
last word) are 0 and never contribute: kernels mask them. Packing a real matrix stores its signs
with sign(0) = +1. Columns are the reduction axis of the product the factor is used in.
"""

from __future__ import annotations

import torch

from ._common import FormatBase, as_int, check_float, check_int, has_data


def _shifts(device):
    return torch.arange(32, device=device, dtype=torch.int64)


def pack_signs(Z: torch.Tensor) -> torch.Tensor:
    """(rows, cols) real -> int32 words (rows, ceil(cols/32)); bit = 1 iff Z >= 0."""
    rows, cols = Z.shape
    bits = (Z >= 0).to(torch.int64)
    pad = (-cols) % 32
    if pad:
        bits = torch.cat([bits, bits.new_zeros(rows, pad)], dim=1)
    words = (bits.view(rows, -1, 32) << _shifts(Z.device)).sum(-1)  # 0 .. 2^32 - 1
    words = torch.where(words >= 1 << 31, words - (1 << 32), words)
    return words.to(torch.int32)


def unpack_signs(words: torch.Tensor, cols: int, dtype=torch.float32) -> torch.Tensor:
    """int32 words (rows, nwords) -> {-1, +1} matrix (rows, cols) of ``dtype``."""
    rows = words.shape[0]
    bits = (words.to(torch.int64).unsqueeze(-1) >> _shifts(words.device)) & 1
    bits = bits.reshape(rows, -1)[:, :cols]
    return (bits * 2 - 1).to(dtype)


class SignBits(FormatBase):
    """A {-1, +1} matrix (rows, cols) packed along cols into int32 ``words``."""

    _tensor_fields = ("words",)

    def __init__(self, words: torch.Tensor, cols: int, *, check: bool = True):
        self.words = words
        self.cols = as_int("SignBits cols", cols)
        super().__init__()
        if check:
            self.validate()

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.words.shape[0]), self.cols)

    @property
    def device(self):
        return self.words.device

    @classmethod
    def pack(cls, Z: torch.Tensor) -> "SignBits":
        """Pack the signs of a real matrix Z (rows, cols); sign(0) = +1."""
        check_float("Z", Z)
        if Z.dim() != 2 or Z.numel() == 0:
            raise ValueError(f"Z must be a non-empty 2-D matrix, got shape {tuple(Z.shape)}")
        return cls(pack_signs(Z), Z.shape[1])

    def unpack(self, dtype=torch.float32) -> torch.Tensor:
        """The {-1, +1} matrix (rows, cols) as ``dtype``."""
        return unpack_signs(self.words, self.cols, dtype)

    def to_dense(self, dtype=torch.float32) -> torch.Tensor:
        return self.unpack(dtype)

    def _validate(self) -> None:
        check_int("words", self.words, torch.int32)
        w = self.words
        if w.dim() != 2 or w.shape[0] == 0 or self.cols <= 0:
            raise ValueError(f"SignBits words must be (rows > 0, ceil(cols/32)), got "
                             f"{tuple(w.shape)} with cols={self.cols}")
        if w.shape[1] != -(-self.cols // 32):
            raise ValueError(f"SignBits words must have ceil(cols/32) = {-(-self.cols // 32)} "
                             f"columns for cols={self.cols}, got {w.shape[1]}")
        pad = (-self.cols) % 32
        if pad and has_data(w):
            # Padding bits are the top ``pad`` bits of the last word (an arithmetic shift of
            # the int32 keeps them nonzero when set, sign bit included).
            bad = (w[:, -1] >> (32 - pad)) != 0
            if bool(bad.any()):
                r = int(bad.nonzero()[0, 0])
                raise ValueError(f"SignBits padding bits (columns {self.cols}..{32 * w.shape[1] - 1}"
                                 f" of the last word) must be 0; row {r} has some set")

    @classmethod
    def from_inverted(cls, words: torch.Tensor, cols: int) -> "SignBits":
        """Convert words from a packer with the opposite convention (bit 1 = -1, LSB first),
        such as LittleBit's own: every valid bit is inverted and padding bits are cleared."""
        check_int("words", words, torch.int32)
        mask = pack_signs(torch.ones(1, int(cols), device=words.device))
        return cls(torch.bitwise_xor(words, mask) & mask, cols)
