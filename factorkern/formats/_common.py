"""What every factor format shares: tensor fields, .to(), state_dict round-trip, prepare()."""

from __future__ import annotations

from typing import Callable

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

# (format class name, backend) -> fn(format) -> tuple of tensors (a kernel-specific layout).
_LAYOUTS: dict[tuple[str, str], Callable] = {}


def register_layout(format_name: str, backend: str, fn: Callable) -> None:
    """Register how ``prepare(backend)`` derives a kernel layout from a format's canonical
    tensors. ``fn(fmt)`` returns a tuple of tensors; it must not mutate the canonical ones."""
    _LAYOUTS[(format_name, backend)] = fn


def check_float(name: str, t, dtypes=FLOAT_DTYPES) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} must be a floating tensor ({names}), got {t.dtype}")


def check_int(name: str, t, dtype: torch.dtype) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype != dtype:
        raise TypeError(f"{name} must be {dtype}, got {t.dtype}")


class FormatBase:
    """Base of the factor formats. Subclasses list their tensor attributes in
    ``_tensor_fields`` and their plain (int/str) attributes in ``_meta_fields``."""

    _tensor_fields: tuple[str, ...] = ()
    _meta_fields: tuple[str, ...] = ("cols",)

    def __init__(self):
        self._prepared: dict = {}

    def tensors(self) -> list[torch.Tensor]:
        return [getattr(self, f) for f in self._tensor_fields]

    def _replace(self, fn) -> "FormatBase":
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        for f in self._tensor_fields:
            setattr(new, f, fn(getattr(self, f)))
        new._prepared = {}
        return new

    def to(self, *args, **kwargs) -> "FormatBase":
        """Like Tensor.to. A dtype moves only the floating tensors (index/bit tensors keep
        their integer dtype)."""
        def move(t):
            if t.is_floating_point():
                return t.to(*args, **kwargs)
            # Integer tensors take device moves only.
            dev = kwargs.get("device")
            for a in args:
                if isinstance(a, (str, torch.device)):
                    dev = a
                elif isinstance(a, torch.Tensor):
                    dev = a.device
            return t.to(device=dev) if dev is not None else t
        return self._replace(move)

    def cuda(self):
        return self.to("cuda")

    def cpu(self):
        return self.to("cpu")

    def state_dict(self, prefix: str = "") -> dict:
        sd = {prefix + f: getattr(self, f) for f in self._tensor_fields}
        for f in self._meta_fields:
            sd[prefix + f] = torch.tensor(int(getattr(self, f)))
        return sd

    @classmethod
    def from_state_dict(cls, sd: dict, prefix: str = ""):
        kwargs = {f: sd[prefix + f] for f in cls._tensor_fields}
        for f in cls._meta_fields:
            kwargs[f] = int(sd[prefix + f])
        return cls(**kwargs)

    def prepare(self, backend: str) -> tuple:
        """Kernel layout for ``backend`` derived from the canonical tensors, built once and
        cached (the cache is keyed on the tensors' storage and version, so an in-place update
        of the factors rebuilds it). Returns () when the backend reads the canonical layout."""
        fn = _LAYOUTS.get((type(self).__name__, backend))
        if fn is None:
            return ()
        if torch.compiler.is_compiling():
            # Under torch.compile the layout becomes part of the graph (no storage to key on).
            return tuple(fn(self))
        key = (backend,) + tuple((t.data_ptr(), t._version, tuple(t.shape))
                                 for t in self.tensors())
        hit = self._prepared.get(backend)
        if hit is not None and hit[0] == key:
            return hit[1]
        out = tuple(fn(self))
        self._prepared[backend] = (key, out)
        return out

    def __repr__(self):
        parts = [f"{f}={tuple(getattr(self, f).shape)}:{str(getattr(self, f).dtype)[6:]}"
                 for f in self._tensor_fields]
        parts += [f"{f}={getattr(self, f)}" for f in self._meta_fields]
        return f"{type(self).__name__}({', '.join(parts)})"
