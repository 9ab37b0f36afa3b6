"""Tensor parallelism with factorkern layers on torch.distributed.

    torchrun --nproc-per-node 2 examples/tensor_parallel.py        # gloo on CPU, NCCL on GPUs

A small gated MLP is converted to factorkern layers of three families (low-rank, LittleBit,
dense-sparse), sharded with ``parallelize_module`` (up/gate column-parallel, down row-parallel),
checked against the unsharded model on every rank, saved with ``torch.distributed.checkpoint``
and loaded back into a freshly sharded model. Rank 0 prints what each rank stores
(``shard_report``) and the outputs' agreement.
"""

from __future__ import annotations

import os
import tempfile

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.nn.functional as F
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor.parallel import parallelize_module

import factorkern as fk
from factorkern.distributed import ColwiseParallel, RowwiseParallel, shard_report


class GatedMLP(nn.Module):
    def __init__(self, d=256, hidden=1024, dtype=torch.float32):
        super().__init__()
        self.gate = nn.Linear(d, hidden, dtype=dtype)
        self.up = nn.Linear(d, hidden, dtype=dtype)
        self.down = nn.Linear(hidden, d, dtype=dtype)

    def forward(self, x):
        return self.down(F.silu(self.gate(x)) * self.up(x))


def build(seed: int, dtype=torch.float32) -> nn.Module:
    """The same factorized model on every rank (same seed)."""
    torch.manual_seed(seed)
    model = GatedMLP(dtype=dtype)
    fk.nn.convert(model, {"gate": ("lowrank", {"r": 64}), "up": ("dense_sparse", {"k": 128}),
                          "down": ("littlebit", {"r": 128})}, verbose=False)
    return model.eval()


PLAN = {"gate": ColwiseParallel(), "up": ColwiseParallel(), "down": RowwiseParallel()}


def main(ckpt_dir: str | None = None) -> dict:
    """Runs on every rank of an initialized process group; returns the checks' numbers."""
    rank, world = dist.get_rank(), dist.get_world_size()
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    mesh = init_device_mesh(device, (world,))
    reference = build(0).to(device)
    model = parallelize_module(build(0).to(device), mesh, PLAN)

    x = torch.randn(4, 16, 256, generator=torch.Generator().manual_seed(1)).to(device)
    with torch.no_grad():
        y, y_ref = model(x), reference(x)
    err = ((y - y_ref).norm() / y_ref.norm()).item()

    # Checkpoint the shards, load them into a model built from other factors, compare.
    with tempfile.TemporaryDirectory() as tmp:
        path = ckpt_dir or tmp
        if ckpt_dir is None and world > 1:  # every rank must write to the same directory
            obj = [path]
            dist.broadcast_object_list(obj, src=0)
            path = obj[0]
        dcp.save(model.state_dict(), checkpoint_id=path)
        other = parallelize_module(build(1).to(device), mesh, PLAN)
        sd = other.state_dict()
        dcp.load(sd, checkpoint_id=path)
        dist.barrier()
    with torch.no_grad():
        same = torch.equal(other(x), y)

    report = shard_report(model)
    if rank == 0:
        print(report)
        print(f"\nsharded vs unsharded output: relative error {err:.2e}")
        print(f"reloaded from the DCP checkpoint: outputs identical = {same}")
    return {"err": err, "reloaded_identical": same, "rank_bytes": report.rank_bytes,
            "global_bytes": report.global_bytes}


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", help="a directory every rank can write (default: a "
                    "temporary one, which works when all ranks share this machine)")
    args = ap.parse_args()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend)
    try:
        out = main(args.checkpoint)
        assert out["err"] < 1e-5 and out["reloaded_identical"], out
    finally:
        dist.destroy_process_group()
