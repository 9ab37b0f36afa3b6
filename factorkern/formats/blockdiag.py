"""BlockDiag: a block-diagonal matrix as ``blocks`` (nblocks, out_b, in_b).

Block i maps input features [i * in_b, (i + 1) * in_b) to output features
[i * out_b, (i + 1) * out_b) nn.Linear-style: ``y_i = x_i @ blocks[i].T``. The full matrix is
(nblocks * out_b, nblocks * in_b) = ``torch.block_diag(*blocks)``. See docs/formats.md.
"""

from __future__ import annotations

import torch

from ._common import FormatBase, check_float


def blockdiag_apply(x: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """x: (N, nblocks * in_b) -> (N, nblocks * out_b), ``x @ block_diag(*blocks).T``."""
    nb, ob, ib = blocks.shape
    n = x.shape[0]
    y = torch.bmm(x.reshape(n, nb, ib).transpose(0, 1), blocks.transpose(1, 2))  # (nb, N, ob)
    return y.transpose(0, 1).reshape(n, nb * ob)


def blockdiag_apply_t(g: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """g: (N, nblocks * out_b) -> (N, nblocks * in_b), ``g @ block_diag(*blocks)``."""
    nb, ob, ib = blocks.shape
    n = g.shape[0]
    y = torch.bmm(g.reshape(n, nb, ob).transpose(0, 1), blocks)  # (nb, N, ib)
    return y.transpose(0, 1).reshape(n, nb * ib)


def blockdiag_grad(g: torch.Tensor, x: torch.Tensor, blocks_shape) -> torch.Tensor:
    """Gradient of the blocks of y = blockdiag_apply(x, blocks) given dL/dy = g."""
    nb, ob, ib = blocks_shape
    n = x.shape[0]
    return torch.bmm(g.reshape(n, nb, ob).permute(1, 2, 0), x.reshape(n, nb, ib).transpose(0, 1))


class BlockDiag(FormatBase):
    """A block-diagonal matrix; ``blocks`` is (nblocks, out_b, in_b)."""

    _tensor_fields = ("blocks",)
    _meta_fields = ()

    def __init__(self, blocks: torch.Tensor, *, check: bool = True):
        self.blocks = blocks
        super().__init__()
        if check:
            self.validate()

    @property
    def nblocks(self) -> int:
        return int(self.blocks.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        nb, ob, ib = self.blocks.shape
        return (nb * ob, nb * ib)

    @property
    def dtype(self):
        return self.blocks.dtype

    @property
    def device(self):
        return self.blocks.device

    def _validate(self) -> None:
        check_float("blocks", self.blocks)
        if self.blocks.dim() != 3 or self.blocks.numel() == 0:
            raise ValueError(f"BlockDiag blocks must be a non-empty (nblocks, out_b, in_b) tensor, "
                             f"got shape {tuple(self.blocks.shape)}")

    @classmethod
    def from_dense(cls, W: torch.Tensor, nblocks: int) -> "BlockDiag":
        """Take the diagonal blocks of W (rows, cols); both must be divisible by nblocks.
        Off-diagonal entries are dropped."""
        check_float("W", W)
        rows, cols = W.shape
        if nblocks <= 0 or rows % nblocks or cols % nblocks:
            raise ValueError(f"nblocks={nblocks} does not tile W of shape ({rows}, {cols})")
        ob, ib = rows // nblocks, cols // nblocks
        blocks = torch.stack([W[i * ob:(i + 1) * ob, i * ib:(i + 1) * ib] for i in range(nblocks)])
        return cls(blocks.contiguous())

    @classmethod
    def identity(cls, n: int, block: int, dtype=torch.float32, device=None) -> "BlockDiag":
        """Identity (n, n) as n // block square blocks of size ``block``."""
        if block <= 0 or n % block:
            raise ValueError(f"block={block} does not tile n={n}")
        eye = torch.eye(block, dtype=dtype, device=device)
        return cls(eye.expand(n // block, block, block).contiguous())

    def to_dense(self) -> torch.Tensor:
        return torch.block_diag(*self.blocks.unbind(0))
