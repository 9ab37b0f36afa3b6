"""Tensor parallelism for factorkern layers on torch.distributed (DeviceMesh, DTensor,
``parallelize_module``, DCP).

    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import parallelize_module
    from factorkern.distributed import ColwiseParallel, RowwiseParallel, shard_report

    mesh = init_device_mesh("cuda", (world,))
    parallelize_module(block, mesh, {"q": ColwiseParallel(), "o": RowwiseParallel()})
    print(shard_report(block))

Each rank keeps only its shard of the factors (DTensors, so ``torch.distributed.checkpoint``
saves and reshards them) and runs the ordinary factorkern op on it. docs/distributed.md lists,
per family, which factor each style splits and the communication it costs.
"""

from .families import Cut, Split, family_of, register_family
from .report import LayerShard, ShardReport, shard_report
from .styles import (ColwiseParallel, RowwiseParallel, TensorParallelLayer, shard_layer,
                     unshard)

__all__ = ["ColwiseParallel", "RowwiseParallel", "shard_report", "ShardReport", "LayerShard",
           "register_family", "family_of", "Cut", "Split", "shard_layer", "unshard",
           "TensorParallelLayer"]
