"""The torch.distributed names this package uses, across the torch versions it supports.

DTensor became public as ``torch.distributed.tensor`` in torch 2.5; torch 2.4 has the same
classes under ``torch.distributed._tensor``. ``distribute_tensor(src_data_rank=...)`` appeared in
torch 2.6; before it every rank's shard comes from rank 0 (the same default).
"""

from __future__ import annotations

import inspect

import torch

try:
    from torch.distributed.tensor import (DeviceMesh, DTensor, Replicate, Shard,
                                          distribute_tensor)
except ImportError:  # torch 2.4
    from torch.distributed._tensor import (DeviceMesh, DTensor, Replicate, Shard,  # noqa: F401
                                           distribute_tensor)
try:
    from torch.distributed.tensor import Partial
except ImportError:  # torch 2.4
    from torch.distributed._tensor.placement_types import Partial  # noqa: F401

from torch.distributed.tensor.parallel import ColwiseParallel as TorchColwiseParallel
from torch.distributed.tensor.parallel import RowwiseParallel as TorchRowwiseParallel

_HAS_SRC_DATA_RANK = "src_data_rank" in inspect.signature(distribute_tensor).parameters


# gloo's collectives have no int16 (the 2:4 metadata): such tensors travel as int32.
_WIDEN = {torch.int16: torch.int32}


def distribute(t, mesh, placement, src_data_rank=0):
    """``distribute_tensor`` with one placement on a 1-D mesh. ``src_data_rank=None`` keeps each
    rank's own data (no communication) where torch supports it."""
    wide = _WIDEN.get(t.dtype)
    src = t if wide is None else t.to(wide)
    if _HAS_SRC_DATA_RANK:
        dt = distribute_tensor(src, mesh, [placement], src_data_rank=src_data_rank)
    else:
        dt = distribute_tensor(src, mesh, [placement])
    if wide is None:
        return dt
    return DTensor.from_local(dt.to_local().to(t.dtype), mesh, [placement], run_check=False,
                              shape=t.shape, stride=t.stride())


def full_tensor(t):
    """``DTensor.full_tensor`` (an all-gather), for every dtype the layers store."""
    wide = _WIDEN.get(t.dtype)
    if wide is None:
        return t.full_tensor()
    return t.to(wide).full_tensor().to(t.dtype)


__all__ = ["DeviceMesh", "DTensor", "Replicate", "Shard", "Partial", "distribute", "full_tensor",
           "TorchColwiseParallel", "TorchRowwiseParallel"]
