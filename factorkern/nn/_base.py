"""What every factorized linear layer shares: bias, backend choice, storage accounting."""

from __future__ import annotations

import math

import torch
from torch import nn


class FactorizedLinear(nn.Module):
    """Base of the factorkern layers: a drop-in for nn.Linear (x: (..., in) -> (..., out)).

    Subclasses store their factors as parameters/buffers, implement ``forward`` with a factorkern
    op and ``to_dense`` (W, (out, in)), and list the names of the tensors that make up the stored
    factors in ``_factor_names`` (for the storage accounting in ``extra_repr``).
    """

    _factor_names: tuple[str, ...] = ()

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None,
                 dtype=None):
        super().__init__()
        if in_features <= 0 or out_features <= 0:
            raise ValueError(f"in_features and out_features must be positive, got "
                             f"{in_features} and {out_features}")
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        # "auto" | "torch" | "triton" | "cuda"; see factorkern.backends().
        self.backend = "auto"
        if bias:
            self.bias = nn.Parameter(torch.zeros(out_features, device=device, dtype=dtype))
        else:
            self.register_parameter("bias", None)

    # -- storage ---------------------------------------------------------------------------
    def factor_tensors(self) -> list[torch.Tensor]:
        return [getattr(self, n) for n in self._factor_names]

    def factor_bits(self) -> int:
        """Bits of the stored factors (bias excluded)."""
        return sum(t.numel() * t.element_size() * 8 for t in self.factor_tensors())

    def weight_dtype(self) -> torch.dtype:
        return next(t.dtype for t in self.factor_tensors() if t.is_floating_point())

    def bits_per_weight(self) -> float:
        return self.factor_bits() / (self.in_features * self.out_features)

    def compression_ratio(self) -> float:
        """Bits of a dense W in the layer's dtype over the bits of the factors."""
        dense_bits = self.in_features * self.out_features * torch.finfo(
            self.weight_dtype()).bits
        return dense_bits / self.factor_bits()

    def _family_repr(self) -> str:
        return ""

    def extra_repr(self) -> str:
        fam = self._family_repr()
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"{fam + ', ' if fam else ''}bias={self.bias is not None}, "
                f"compression={self.compression_ratio():.2f}x, "
                f"bits_per_weight={self.bits_per_weight():.3f}")

    # -- factor formats and their validation -----------------------------------------------
    def _formats(self, get) -> dict:
        """The layer's factor formats, built unchecked from its tensors: ``get(name)`` returns
        the tensor of a parameter or buffer. Layers whose factors are plain tensors return {}."""
        return {}

    def _format(self, name: str):
        """The format ``name`` over the current parameters, reused while they are the same
        tensor objects: its prepare() cache (kernel layouts, validation) then survives across
        calls, and validation reruns only when an index or bit tensor changed in place."""
        fmt = self._formats(lambda n: getattr(self, n))[name]
        if torch.compiler.is_compiling():
            return fmt
        cache = self.__dict__.setdefault("_format_cache", {})
        old = cache.get(name)
        if old is not None and len(old.tensors()) == len(fmt.tensors()) and all(
                a is b for a, b in zip(old.tensors(), fmt.tensors())):
            return old
        cache[name] = fmt
        return fmt

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # A checkpoint's index and bit tensors (2:4 meta, sign words) are checked before anything
        # is copied: a float meta would otherwise be cast silently and corrupt meta loaded as
        # "All keys matched". Problems go to error_msgs, so load_state_dict raises its usual
        # RuntimeError naming the keys, and this layer is left unchanged.
        problems = self._check_incoming(state_dict, prefix)
        if problems:
            error_msgs.extend(problems)
            return
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def _check_incoming(self, state_dict, prefix: str) -> list[str]:
        problems, incoming, device = [], {}, None
        own = {**{n: p for n, p in self._parameters.items() if p is not None},
               **{n: b for n, b in self._buffers.items() if b is not None}}
        for name, cur in own.items():
            new = state_dict.get(prefix + name)
            if not isinstance(new, torch.Tensor) or cur.is_floating_point():
                continue
            if new.dtype != cur.dtype:
                problems.append(f"{prefix}{name}: expected {cur.dtype}, got {new.dtype} (index "
                                f"and bit tensors are never cast; see docs/formats.md)")
            elif tuple(new.shape) == tuple(cur.shape):
                device = new.device if device is None else device
                incoming[name] = new.to(device)
        if problems or not incoming:
            return problems  # (a shape mismatch is reported by torch itself)

        def get(name):
            if name in incoming:
                return incoming[name]
            t = own[name]
            if t.is_floating_point():
                # Real values carry no constraint: a free stand-in with the shape, dtype and
                # device validation compares.
                return torch.zeros((), dtype=t.dtype, device=device).expand(t.shape)
            return t.to(device)

        for fname, fmt in self._formats(get).items():
            try:
                fmt.validate()
            except (TypeError, ValueError) as e:
                where = f"'{prefix[:-1]}' " if prefix else ""
                problems.append(f"{type(self).__name__} {where}factor {fname} (keys "
                                f"{', '.join(prefix + n for n in incoming)}): {e}")
        return problems

    # -- helpers for from_linear -----------------------------------------------------------
    @staticmethod
    def _check_linear(linear) -> None:
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"from_linear expects an nn.Linear, got {type(linear).__name__}")

    def _copy_bias(self, linear: nn.Linear) -> None:
        if linear.bias is not None:
            with torch.no_grad():
                self.bias.copy_(linear.bias)

    @staticmethod
    def _kaiming(shape, fan_in, device, dtype):
        if torch.empty(0, device=device).is_meta:
            # An empty skeleton (fk.nn.load): shapes only. Random ops on the meta device go
            # through torch's Python decompositions, seconds on their first use.
            return torch.empty(shape, device="meta", dtype=dtype)
        bound = 1.0 / math.sqrt(max(1, fan_in))
        return (torch.rand(shape, device=device, dtype=torch.float32) * 2 - 1).mul_(bound).to(
            dtype)
