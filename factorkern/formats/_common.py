"""What every factor format shares: tensor fields, .to(), state_dict round-trip, validate() and
prepare(). The formats are specified bit for bit in docs/formats.md."""

from __future__ import annotations

import operator
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


def as_int(name: str, v) -> int:
    """v as a Python int (ints and one-element integer tensors); TypeError naming it otherwise
    (a float 40.5 is not silently truncated)."""
    try:
        return operator.index(v)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(v).__name__}") from None


def has_data(t: torch.Tensor) -> bool:
    """Whether t's values can be read: False on the meta device and for fake tensors (shape-only
    tensors of torch.compile), where only the static checks of ``validate()`` run."""
    if t.device.type == "meta":
        return False
    from torch._subclasses.fake_tensor import is_fake

    return not is_fake(t)


def _version_of(t: torch.Tensor):
    # Inference tensors (made under torch.inference_mode) track no version counter; they cannot
    # be updated in place outside inference mode, so their storage alone identifies them.
    return None if t.is_inference() else t._version


def _target_dtype(args, kwargs):
    """The dtype a Tensor.to-style call asks for, or None."""
    dtype = kwargs.get("dtype")
    for a in args:
        if isinstance(a, torch.dtype):
            dtype = a
        elif isinstance(a, torch.Tensor):
            dtype = a.dtype
    other = kwargs.get("other")
    if isinstance(other, torch.Tensor):
        dtype = other.dtype
    return dtype


class FormatBase:
    """Base of the factor formats. Subclasses list their tensor attributes in
    ``_tensor_fields`` and their plain (int/str) attributes in ``_meta_fields``."""

    _tensor_fields: tuple[str, ...] = ()
    _meta_fields: tuple[str, ...] = ("cols",)

    def __init__(self):
        self._prepared: dict = {}
        self._valid_key = None

    # -- validation --------------------------------------------------------------------------
    def _validate(self) -> None:
        """The format's checks (shapes, dtypes, devices and, where the data can be read, the bit
        patterns); raise ValueError or TypeError naming the field."""

    def validate(self):
        """Check the format against its contract (docs/formats.md); raise ValueError or TypeError
        naming the offending field (and, for bit patterns, the first offending row and group).
        Vectorized: no Python loop over rows or groups. Returns self."""
        self._validate()
        self._valid_key = self._state_key()
        return self

    def _state_key(self) -> list:
        """What validity depends on: the shape and dtype of every tensor, the storage and
        version counter of the integer (index and bit) tensors, and the plain fields. Real-valued
        tensors carry no constraint on their values, so their in-place updates (an optimizer
        step) do not trigger a new validation. A few microseconds: it runs on every op call."""
        key = [getattr(self, f) for f in self._meta_fields]
        for t in self.tensors():
            if t.is_floating_point():
                key.append((t.dtype, t.shape))
            else:
                key.append((t.data_ptr(), _version_of(t), t.dtype, t.shape))
        return key

    def check_unchanged(self) -> None:
        """Validate again if an integer tensor was updated in place (or replaced) since the
        last validation; a dictionary lookup otherwise. Called by ``prepare``, so every op call
        catches a corrupted index or bit tensor before a kernel reads it."""
        key = self._state_key()
        if key != self._valid_key:
            self._validate()
            self._valid_key = key

    def tensors(self) -> list[torch.Tensor]:
        return [getattr(self, f) for f in self._tensor_fields]

    def _replace(self, fn) -> "FormatBase":
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        for f in self._tensor_fields:
            setattr(new, f, fn(getattr(self, f)))
        new._prepared = {}
        new._valid_key = None
        return new

    def to(self, *args, **kwargs) -> "FormatBase":
        """Like Tensor.to. A dtype moves only the floating tensors (index/bit tensors keep
        their integer dtype); a non-floating dtype raises TypeError."""
        dtype = _target_dtype(args, kwargs)
        if dtype is not None and dtype not in FLOAT_DTYPES:
            names = ", ".join(str(d).replace("torch.", "") for d in FLOAT_DTYPES)
            raise TypeError(
                f"{type(self).__name__}.to({dtype}): a format's real-valued tensors take only a "
                f"floating dtype ({names}); its index and bit tensors keep their integer dtype. "
                f"For the matrix in another dtype use .to_dense().to({dtype}).")

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
        of the factors rebuilds it). Returns () when the backend reads the canonical layout.

        Every call first runs ``check_unchanged()``: the format is validated again when an
        integer tensor changed since its last validation, so corrupted meta or sign words raise
        here instead of reaching a kernel. Under torch.compile neither check nor cache runs
        (the tensors are shape-only there): validate where the data enters."""
        fn = _LAYOUTS.get((type(self).__name__, backend))
        if torch.compiler.is_compiling():
            # Under torch.compile the layout becomes part of the graph (no storage to key on).
            return tuple(fn(self)) if fn is not None else ()
        self.check_unchanged()
        if fn is None:
            return ()
        key = (backend,) + tuple((t.data_ptr(), _version_of(t), tuple(t.shape))
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
