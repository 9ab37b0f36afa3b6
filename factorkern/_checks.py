"""Argument checks shared by the public ops: every error names the argument and what was
expected. Only static properties (shape, dtype, device) are checked here, so the checks trace
under torch.compile; the data-dependent checks (a 2:4 pattern, padding bits) run when a format is
constructed."""

from __future__ import annotations

import torch

from .formats._common import FLOAT_DTYPES


def check_x(op: str, x) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{op}: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op}: x must be float16, bfloat16, float32 or float64, got {x.dtype}")
    if x.dim() < 1:
        raise ValueError(f"{op}: x must have shape (..., in), got a 0-d tensor")


def check_format(op: str, name: str, obj, cls) -> None:
    if not isinstance(obj, cls):
        raise TypeError(f"{op}: {name} must be a {cls.__name__}, got {type(obj).__name__}")


def check_like(op: str, name: str, t, x, shape=None) -> None:
    """t is a float tensor with x's dtype and device and (if given) the expected shape."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(f"{op}: {name} must have shape {tuple(shape)}, got {tuple(t.shape)}")
    if t.dtype != x.dtype:
        raise TypeError(f"{op}: {name} is {t.dtype} but x is {x.dtype}; factors must have x's "
                        "dtype (cast them with .to(x.dtype))")
    if t.device != x.device:
        raise ValueError(f"{op}: {name} is on {t.device} but x is on {x.device}")
    if t.numel() == 0:
        raise ValueError(f"{op}: {name} is empty (shape {tuple(t.shape)})")


def check_device(op: str, name: str, t, x) -> None:
    if t.device != x.device:
        raise ValueError(f"{op}: {name} is on {t.device} but x is on {x.device}")


def check_in(op: str, x, in_features: int, what: str) -> None:
    if x.shape[-1] != in_features:
        raise ValueError(f"{op}: x has {x.shape[-1]} features in its last dim but {what} "
                         f"expects in = {in_features} (x must be (..., {in_features}))")


def check_bias(op: str, bias, x, out_features: int) -> None:
    if bias is not None:
        check_like(op, "bias", bias, x, (out_features,))
