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
