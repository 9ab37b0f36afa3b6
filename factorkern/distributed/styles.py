"""ColwiseParallel / RowwiseParallel for factorkern layers, on torch's tensor parallelism.

``parallelize_module(model, mesh, {"q": ColwiseParallel(), "o": RowwiseParallel()})`` shards
each factorkern layer's factors as DTensors (so ``state_dict`` and DCP see global tensors) and
swaps the layer's class for a sharded subclass (as torch's ``fully_shard`` does) whose forward:

1. turns the input into a DTensor (``input_layouts``) and redistributes it to what the split's
   local computation needs (replicated, or sharded on the last dimension);
2. runs the ordinary factorkern op, through the layer's own ``forward``, on a *local layer*: a
   copy of the layer with this rank's shards of the factors and the local sizes;
3. wraps the local result as a DTensor (rows of W: ``Shard(-1)``; a partial sum: ``Partial``)
   and redistributes it to ``output_layouts``.

All communication is DTensor's redistribution (torch's functional collectives on the mesh's
process group). nn.Linear and nn.Embedding are handed to torch's own styles.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from ..nn import FactorizedLinear
from ._compat import (DTensor, Partial, Replicate, Shard, TorchColwiseParallel,
                      TorchRowwiseParallel, distribute, full_tensor)
from .families import Split, describe, family_of, resolve


@dataclass
class TPState:
    """What a sharded layer remembers: mesh, style, the resolved split and the local layer."""

    mesh: Any
    style: str
    split: str
    layout: Split
    local: nn.Module          # the rank's local layer (holds views of the local shards)
    input_layouts: tuple
    output_layouts: tuple
    use_local_output: bool
    bias_placement: Any
    base: type                # the layer class before sharding


def _norm(placements, ndim):
    """Placements with negative Shard dims made positive (Shard(-1) == Shard(ndim - 1))."""
    out = []
    for p in placements:
        if isinstance(p, Shard) and p.dim < 0:
            p = Shard(p.dim + ndim)
        out.append(p)
    return tuple(out)


def _to(t: DTensor, placements) -> DTensor:
    if _norm(t.placements, t.ndim) != _norm(placements, t.ndim):
        t = t.redistribute(t.device_mesh, placements)
    return t


def _local_of(t: DTensor) -> torch.Tensor:
    """The rank's local tensor, sharing storage, without autograd."""
    with torch.no_grad():
        return t.to_local()


def _tensors(module: nn.Module):
    """(name, tensor, is_buffer) of the layer's own parameters and buffers, bias excluded."""
    for n, p in module._parameters.items():
        if p is not None and n != "bias":
            yield n, p, False
    for n, b in module._buffers.items():
        if b is not None:
            yield n, b, True


def _local_layer(module: nn.Module, attrs: dict, tensors: dict, bias) -> nn.Module:
    """A layer of module's class with ``attrs`` overridden and ``tensors`` as its parameters and
    buffers (views, no copy). Built without running __init__ (no initialisation cost)."""
    cls = module._tp.base if isinstance(module, TensorParallelLayer) else type(module)
    layer = cls.__new__(cls)
    nn.Module.__init__(layer)
    for k, v in module.__dict__.items():
        if k not in layer.__dict__ and k != "_tp":
            layer.__dict__[k] = v
    layer.__dict__.update(attrs)
    for n, t in tensors.items():
        if n in module._buffers:
            layer.register_buffer(n, t, persistent=n not in module._non_persistent_buffers_set)
        else:
            layer.register_parameter(n, nn.Parameter(t, requires_grad=module._parameters[
                n].requires_grad))
    layer.register_parameter("bias", None if bias is None else nn.Parameter(bias))
    return layer


class TensorParallelLayer:
    """Mixin of the sharded layer classes (``TensorParallel<Layer>``, made per layer class).

    ``in_features``/``out_features`` keep their global values; ``state_dict`` holds DTensors of
    the global factor shapes. ``to_dense`` and ``unshard`` gather the factors (collectives: call
    them on every rank)."""

    _tp: TPState

    def forward(self, x):
        st = self._tp
        mesh, lay = st.mesh, st.layout
        if not isinstance(x, DTensor):
            x = DTensor.from_local(x, mesh, st.input_layouts, run_check=False)
        sharded_in = _norm(x.placements, x.ndim) == (Shard(x.ndim - 1),)
        if lay.input == "shard" or (lay.input == "slice" and sharded_in):
            # (A "slice" layer's chunk of a replicated input is exactly this rank's shard.)
            x_loc = _to(x, (Shard(-1),)).to_local()
        else:
            # A replicated input feeds a sharded computation: each rank's gradient is a part of
            # the whole (Partial), which torch's redistribution then reduces.
            x_loc = _to(x, (Replicate(),)).to_local(grad_placements=(Partial(),))
            if lay.input == "slice":
                n = self.in_features // mesh.size()
                x_loc = x_loc.narrow(-1, mesh.get_local_rank() * n, n)
        local = {}
        for name, t, _ in _tensors(self):
            if isinstance(t.placements[0], Replicate) and t.requires_grad:
                local[name] = t.to_local(grad_placements=(Partial(),))
            else:
                local[name] = t.to_local()
        fuse_bias = self.bias is not None and lay.output == "shard"
        if fuse_bias:
            local["bias"] = self.bias.to_local()
        st.local.backend = self.backend
        st.local.training = self.training
        y = functional_call(st.local, local, (x_loc,))
        y = DTensor.from_local(y, mesh, (Shard(y.ndim - 1),) if lay.output == "shard"
                               else (Partial(),), run_check=False)
        y = _to(y, st.output_layouts)
        if self.bias is not None and not fuse_bias:
            # After the reduction, like torch's rowwise: the bias is added once.
            y = y + self.bias
        return y.to_local() if st.use_local_output else y

    def _sync_local(self) -> nn.Module:
        """The local layer with views of the current local shards (after .to(), DCP loads)."""
        st = self._tp
        for name, t, is_buf in _tensors(self):
            loc = _local_of(t)
            if is_buf:
                st.local._buffers[name] = loc
            else:
                st.local._parameters[name] = nn.Parameter(loc, requires_grad=t.requires_grad)
        st.local.backend = self.backend
        st.local.training = self.training
        return st.local

    def unshard(self) -> nn.Module:
        """A plain (unsharded) copy of this layer with the full factors (all-gathers them)."""
        full = {name: full_tensor(t).detach().clone() for name, t, _ in _tensors(self)}
        bias = None if self.bias is None else full_tensor(self.bias).detach().clone()
        layer = _local_layer(self, {}, full, bias)
        layer.backend, layer.training = self.backend, self.training
        return layer

    def to_dense(self) -> torch.Tensor:
        return self.unshard().to_dense()

    def extra_repr(self) -> str:
        st = self._tp
        return (f"{super().extra_repr()}, tensor_parallel={st.style}/{st.split} over "
                f"{st.mesh.size()} ranks")


_SHARDED: dict[type, type] = {}


def _local_method(name):
    def method(self, *args, **kwargs):
        return getattr(self._sync_local(), name)(*args, **kwargs)
    method.__name__ = name
    method.__doc__ = f"``{name}`` run on this rank's local factors."
    return method


def _sharded_class(cls: type) -> type:
    if cls not in _SHARDED:
        fam = family_of(cls)
        ns = {name: _local_method(name) for name in fam.local_methods}
        ns["__module__"] = __name__
        _SHARDED[cls] = type(f"TensorParallel{cls.__name__}", (TensorParallelLayer, cls), ns)
    return _SHARDED[cls]


def _reduce_grad(p: nn.Parameter) -> None:
    # Gradients of replicated factors arrive as Partial (each rank's share of the sum); make
    # them Replicate once per backward so optimizers and grad clipping see a plain gradient.
    g = p.grad
    if isinstance(g, DTensor) and _norm(g.placements, g.ndim) != _norm(p.placements, p.ndim):
        p.grad = g.redistribute(p.device_mesh, p.placements)


def shard_layer(module: FactorizedLinear, mesh, style: str, split: str = "auto",
                input_layouts=None, output_layouts=None, use_local_output: bool = True,
                src_data_rank: int | None = 0) -> FactorizedLinear:
    """Shard a factorkern layer in place across the 1-D ``mesh`` (what the styles' ``_apply``
    does). Returns the same module, now a ``TensorParallel<Layer>``."""
    if isinstance(module, TensorParallelLayer):
        raise ValueError(f"{describe(module)} is already tensor-parallel")
    if mesh.ndim != 1:
        raise ValueError(f"tensor parallelism needs a 1-D DeviceMesh, got {mesh.ndim}-D; slice "
                         "it first, e.g. mesh['tp']")
    world = mesh.size()
    name, lay = resolve(module, style, split, world)
    names = {n for n, _, _ in _tensors(module)}
    missing = sorted(n for n in names - set(lay.tensors) if getattr(module, n).dim() > 0)
    if missing:
        raise NotImplementedError(f"{describe(module)}: the {style}/{name} layout does not place "
                                  f"{missing}; extend its family entry")
    if input_layouts is None:
        input_layouts = Replicate() if style == "colwise" else Shard(-1)
    if output_layouts is None:
        output_layouts = Shard(-1) if style == "colwise" else Replicate()
    out_shard = isinstance(output_layouts, Shard)
    bias_placement = Shard(0) if lay.output == "shard" or out_shard else Replicate()

    local_views = {}
    for n, t, is_buf in list(_tensors(module)):
        dim = lay.tensors.get(n)
        dt = distribute(t.detach(), mesh, Replicate() if dim is None else Shard(dim),
                        src_data_rank)
        if is_buf:
            module.register_buffer(n, dt, persistent=n not in module._non_persistent_buffers_set)
        else:
            p = nn.Parameter(dt, requires_grad=t.requires_grad)
            module.register_parameter(n, p)
            if dim is None and p.requires_grad:
                p.register_post_accumulate_grad_hook(_reduce_grad)
        local_views[n] = _local_of(dt)
    local_bias = None
    if module.bias is not None:
        b = nn.Parameter(distribute(module.bias.detach(), mesh, bias_placement, src_data_rank),
                         requires_grad=module.bias.requires_grad)
        module.register_parameter("bias", b)
        if isinstance(bias_placement, Replicate) and b.requires_grad:
            b.register_post_accumulate_grad_hook(_reduce_grad)
        if lay.output == "shard":
            local_bias = _local_of(b)
    attrs = dict(lay.local)
    if lay.output == "shard":
        attrs["out_features"] = module.out_features // world
    if lay.input in ("shard", "slice"):
        attrs["in_features"] = module.in_features // world
    local = _local_layer(module, attrs, local_views, local_bias)
    base = type(module)
    module.__class__ = _sharded_class(base)
    module._tp = TPState(mesh, style, name, lay, local, (input_layouts,), (output_layouts,),
                         use_local_output, bias_placement, base)
    return module


def unshard(layer: nn.Module) -> nn.Module:
    """A plain (unsharded) copy of a tensor-parallel factorkern layer with its full factors
    (all-gathers them: call it on every rank). Returns ``layer`` itself if it is not sharded."""
    return layer.unshard() if isinstance(layer, TensorParallelLayer) else layer


class _FactorkernStyle:
    """What both styles add to torch's: the ``split`` argument and factorkern layers."""

    _style: str

    def __init__(self, *, input_layouts=None, output_layouts=None, use_local_output=True,
                 split="auto"):
        super().__init__(input_layouts=input_layouts, output_layouts=output_layouts,
                         use_local_output=use_local_output)
        self.split = split

    def _apply(self, module, device_mesh):
        if isinstance(module, FactorizedLinear):
            return shard_layer(module, device_mesh, self._style, self.split,
                               self.input_layouts[0], self.output_layouts[0],
                               self.use_local_output, getattr(self, "src_data_rank", 0))
        if self.split not in ("auto", "outer"):
            raise ValueError(f"split={self.split!r} applies to factorkern layers only; "
                             f"{type(module).__name__} is split by torch's own style")
        return super()._apply(module, device_mesh)

    def __repr__(self):
        return super().__repr__()[:-1] + f", split={self.split!r})"


class ColwiseParallel(_FactorkernStyle, TorchColwiseParallel):
    """Column-parallel (output features split, input replicated) for factorkern layers, with
    torch's arguments; nn.Linear and nn.Embedding go to torch's ColwiseParallel.

    Args:
        input_layouts: placement of the input (default ``Replicate()``).
        output_layouts: placement of the output (default ``Shard(-1)``).
        use_local_output: return a local torch.Tensor (default) instead of a DTensor.
        split: ``"auto"`` (the family's default), ``"inner"`` (every factor split along the
            inner dimension, nothing large replicated, one extra reduce-scatter) or
            ``"outer"`` (only the output-side factor split, the others replicated,
            communication exactly torch's). See docs/distributed.md for the per-family table.
    """

    _style = "colwise"


class RowwiseParallel(_FactorkernStyle, TorchRowwiseParallel):
    """Row-parallel (input features split, partial outputs reduced) for factorkern layers, with
    torch's arguments; nn.Linear and nn.Embedding go to torch's RowwiseParallel.

    Args:
        input_layouts: placement of the input (default ``Shard(-1)``).
        output_layouts: placement of the output (default ``Replicate()``).
        use_local_output: return a local torch.Tensor (default) instead of a DTensor.
        split: ``"auto"``, ``"inner"`` (every factor split along the inner dimension; the input
            is all-gathered first, the extra collective) or ``"outer"`` (only the input-side
            factor split, the others replicated, communication exactly torch's).
    """

    _style = "rowwise"
