"""Dispatch: the one place that picks what runs an op (docs/dispatch.md).

Backends: ``"torch"``, the library path (``factorkern.library``: library calls in the input
dtype, always available), and the kernel backends ``"triton"`` (``factorkern.triton_kernels``),
``"cuda"`` (``factorkern.cuda``, the extension ``factorkern._C``) and ``"cuda_sm90"``
(``factorkern.cuda_sm90``, the sm_90a wgmma.sp GEMM), plus any backend a plugin registers.
Kernel packages register their kernels with ``register_kernel`` when imported; they are
imported lazily, the first time a backend is asked about, so nothing touches a GPU at import
time. Plugins: ``FACTORKERN_PLUGINS=mod1,mod2`` names modules imported before that (in every
process, the verification children included); they may ``register_backend`` and
``register_kernel``.

``backend="auto"`` (the default; ``FACTORKERN_BACKEND`` overrides it, with the same names, case
and surrounding spaces ignored in both) takes the library path on the CPU. For CUDA tensors it
reads the verification record of this device and software (``factorkern.records``; made by
``python -m factorkern.verify``) and runs a kernel only in the cells (op, dtype, M bucket, shape
class) where the record says it passed and was faster than the library path, and its
``supports`` takes the call; the library path otherwise. The choice is made in Python from the
call's static shapes before the custom op (under torch.compile the record lookup runs once at
trace time and becomes a constant), and never triggers verification or timing. A backend asked
for by name that cannot run raises RuntimeError saying why.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import warnings
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from . import library as _library
from . import records as _records

BACKENDS = ("torch", "triton", "cuda", "cuda_sm90")    # built in; plugins may add more
OPS = ("dense_sparse_mm", "sparse_dense_mm", "armor_mm", "littlebit_mm", "monarch_mm",
       "lowrank_mm", "littlebit_mm_popcount", "sparse_mm")
ENV_VAR = "FACTORKERN_BACKEND"
PLUGINS_ENV = "FACTORKERN_PLUGINS"


# ---- per-op tables ----------------------------------------------------------------------------
def _littlebit_dims(x, uw, vw, h, l, g, *_):
    return {"out": h[0].shape[0], "in": x.shape[1], **{f"r{i}": t.shape[0] for i, t in
                                                        enumerate(l)}}


# The sizes of a call that define its shape class (``records.shape_class``): out, in and the
# factors' inner sizes. Arguments as the kernels get them (x (N, in), then the op's tensors).
OP_DIMS: dict[str, Callable] = {
    "dense_sparse_mm": lambda x, D, v, m, *_: {"out": D.shape[0], "in": x.shape[1],
                                               "k": D.shape[1]},
    "sparse_dense_mm": lambda x, v, m, D, *_: {"out": v.shape[0], "in": x.shape[1],
                                               "k": D.shape[0]},
    "armor_mm": lambda x, a, v, m, b, *_: {"out": v.shape[0], "in": x.shape[1],
                                           "block_a": a.shape[-1], "block_b": b.shape[-1]},
    "littlebit_mm": _littlebit_dims,
    "littlebit_mm_popcount": _littlebit_dims,
    "monarch_mm": lambda x, w1, w2, out_f, *_: {"out": out_f, "in": x.shape[1],
                                                "q": w1.shape[1], "p": w1.shape[2],
                                                "s": w2.shape[1], "r": w2.shape[2]},
    "lowrank_mm": lambda x, U, V, *_: {"out": U.shape[0], "in": x.shape[1], "r": U.shape[1]},
    "sparse_mm": lambda x, v, m, *_: {"out": v.shape[0], "in": x.shape[1]},
}


def _oracle_table():
    from . import reference as ref
    from .reference import littlebit_quant as quant

    return {
        "dense_sparse_mm": lambda x, D, v, m, bias, extra=(): ref.dense_sparse_mm(x, D, v, m, bias),
        "sparse_dense_mm": lambda x, v, m, D, bias, extra=(): ref.sparse_dense_mm(x, v, m, D, bias),
        "armor_mm": lambda x, a, v, m, b, bias, extra=(): ref.armor_mm(x, a, v, m, b, bias),
        "littlebit_mm": lambda x, uw, vw, h, l, g, bias, extra=(): ref.littlebit_mm(
            x, uw, vw, h, l, g, bias),
        "monarch_mm": lambda x, w1, w2, out_f, bias, extra=(): ref.monarch_mm(x, w1, w2, out_f,
                                                                              bias),
        "lowrank_mm": lambda x, U, V, bias, extra=(): ref.lowrank_mm(x, U, V, bias),
        "littlebit_mm_popcount": lambda x, uw, vw, h, l, g, bias, extra=():
            quant.littlebit_mm_popcount(x, uw, vw, h, l, g, bias),
        "sparse_mm": lambda x, v, m, bias, extra=(): ref.sparse_mm(x, v, m, bias),
    }


# The oracle of every op (factorkern.reference), with the kernels' signature.
ORACLE: dict[str, Callable] = _oracle_table()
_REFERENCE = ORACLE   # the name this table had before the library path existed


# ---- backends -----------------------------------------------------------------------------------
@dataclass
class Backend:
    """A kernel backend: the module that registers its kernels (imported lazily) and a check of
    whether it can run here, ``available() -> (ok, reason)``."""

    name: str
    module: Optional[str] = None
    available: Optional[Callable[[], tuple]] = None
    description: str = ""


@dataclass
class Kernel:
    """A registered kernel. ``fn`` takes the op's arguments as the custom op receives them
    (x flattened to (N, in), the factor tensors, bias, extra = the format's layout prepared for
    this backend) and returns (N, out). ``supports(x, *args)`` returns None or a reason it cannot
    take the call; it must only read static properties (shapes, dtypes, strides, device), since
    ``auto`` calls it while torch.compile traces. ``proven`` is kept for old registrations and
    decides nothing: what ``auto`` runs comes from verification records."""

    op: str
    backend: str
    fn: Callable
    proven: bool = False
    supports: Optional[Callable] = None
    note: str = ""


def _cuda_available() -> bool:
    return torch.cuda.is_available()


def _interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _triton_available():
    if not (_cuda_available() or _interpret()):
        return False, "no CUDA GPU (set TRITON_INTERPRET=1 to run Triton kernels on the CPU)"
    return True, "interpreter on the CPU" if _interpret() else "CUDA GPU"


def _cuda_ext_available():
    if not _cuda_available():
        return False, "extension built, but no CUDA GPU"
    return True, "CUDA GPU"


def _sm90_available():
    from . import cuda_sm90

    return cuda_sm90.availability()


_BACKENDS: dict[str, Backend] = {
    "triton": Backend("triton", "factorkern.triton_kernels", _triton_available, "Triton kernels"),
    "cuda": Backend("cuda", "factorkern.cuda", _cuda_ext_available, "CUDA C++ kernels (_C)"),
    "cuda_sm90": Backend("cuda_sm90", "factorkern.cuda_sm90", _sm90_available,
                         "sm_90a wgmma.sp 2:4 GEMM"),
}
_KERNELS: dict[tuple[str, str], Kernel] = {}
_LOAD_ERRORS: dict[str, str] = {}
_LOADED: set[str] = set()
_PLUGINS_LOADED: list = []


def register_backend(name: str, *, module: Optional[str] = None,
                     available: Optional[Callable[[], tuple]] = None,
                     description: str = "") -> None:
    """Add a kernel backend (for plugins). ``module`` is imported the first time the backend is
    asked about (None: the caller registers its kernels itself); ``available()`` returns
    (ok, reason) (default: always available)."""
    name = _name(name, "backend name")
    if name in ("torch", "auto") or name.startswith("torch:"):
        raise ValueError(f"backend name {name!r} is reserved")
    _BACKENDS[name] = Backend(name, module, available, description)
    _LOADED.discard(name)
    _LOAD_ERRORS.pop(name, None)


def backend_table() -> dict[str, Backend]:
    """Every kernel backend known here (built in and registered by plugins)."""
    _load_plugins()
    return dict(_BACKENDS)


def backend_names() -> tuple:
    return ("torch",) + tuple(backend_table())


def register_kernel(op: str, backend: str, fn: Callable, *, proven: bool = False,
                    supports: Optional[Callable] = None, note: str = "") -> None:
    """Register ``fn`` as ``backend``'s kernel of ``op`` (see ``Kernel``). ``proven`` is
    accepted and ignored: ``auto`` runs a kernel only where a verification record backs it."""
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}; ops are {OPS}")
    if backend not in _BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; backends are {backend_names()}")
    _KERNELS[(op, backend)] = Kernel(op, backend, fn, proven, supports, note)


def kernels(backend: Optional[str] = None) -> dict[tuple[str, str], Kernel]:
    """The registered kernels (of one backend), loading the backends first."""
    for b in ([backend] if backend else list(backend_table())):
        _load(b)
    return {k: v for k, v in _KERNELS.items() if backend is None or k[1] == backend}


def _load_plugins() -> None:
    spec = os.environ.get(PLUGINS_ENV, "")
    if not spec or spec in _PLUGINS_LOADED:
        return
    _PLUGINS_LOADED.append(spec)
    for mod in (m.strip() for m in spec.split(",")):
        if not mod:
            continue
        try:
            importlib.import_module(mod)
        except Exception as e:  # a broken plugin must not break factorkern: say so
            warnings.warn(f"factorkern: plugin {mod!r} ({PLUGINS_ENV}) failed to import: "
                          f"{type(e).__name__}: {e}", RuntimeWarning, stacklevel=2)


def _load(backend: str) -> None:
    _load_plugins()
    if backend in _LOADED or backend == "torch" or backend not in _BACKENDS:
        return
    _LOADED.add(backend)
    module = _BACKENDS[backend].module
    if module is None:
        return
    try:
        importlib.import_module(module)
    except Exception as e:  # optional backend: record why, never fail the import of factorkern
        _LOAD_ERRORS[backend] = f"{type(e).__name__}: {e}"


def availability(backend: str) -> tuple[bool, str]:
    """(available, reason) for a backend on this machine."""
    if backend == "torch":
        return True, "the library path (factorkern.library), always available"
    _load_plugins()
    if backend not in _BACKENDS:
        return False, f"unknown backend {backend!r}; backends are {backend_names()}"
    _load(backend)
    if backend in _LOAD_ERRORS:
        what = {"triton": "triton is not importable",
                "cuda": "the CUDA extension factorkern._C is not built or does not load"}.get(
            backend, f"its module {_BACKENDS[backend].module} does not import")
        return False, f"{what} ({_LOAD_ERRORS[backend]})"
    check = _BACKENDS[backend].available
    ok, mode = check() if check is not None else (True, "registered backend")
    if not ok:
        return False, mode
    ops = [op for op in OPS if (op, backend) in _KERNELS]
    if not ops:
        return False, f"{backend} backend loads but registers no kernel yet"
    return True, f"{mode}; kernels: {', '.join(ops)}"


# ---- resolution ---------------------------------------------------------------------------------
def _name(value, what: str = "backend") -> str:
    """One rule for backend names, from the argument and from FACTORKERN_BACKEND alike: case
    and surrounding spaces do not matter."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, got {type(value).__name__}")
    return value.strip().lower()


def _auto_device(x) -> Optional[str]:
    """The device whose record ``auto`` consults for x, or None (the library path)."""
    if x.device.type != "cuda":
        return None
    index = x.device.index if x.device.index is not None else torch.cuda.current_device()
    return f"cuda:{index}"


_TABLES: dict[str, tuple] = {}   # device -> (records.Table or None, records.Found)


def _table(device: str) -> tuple:
    """(Table or None, Found) for a device, read once per process."""
    hit = _TABLES.get(device)
    if hit is None:
        _load_plugins()
        try:
            found = _records.find(_records.device_key(device), _records.software_key(), gpu=True)
            table = _records.Table(found.record, found.stale) if found.record is not None \
                else None
        except Exception as e:  # reading records must never break an op: say so, run safely
            warnings.warn(f"factorkern: could not read the verification records ({type(e).__name__}"
                          f": {e}); auto takes the library path", RuntimeWarning, stacklevel=2)
            found, table = _records.Found(notes=[f"error reading records: {e}"]), None
        hit = _TABLES[device] = (table, found)
    return hit


def reload_records() -> None:
    """Forget the records read so far (after a verify run in this process)."""
    _TABLES.clear()


def _record_choice(device: str, op: str, dtype: str, bucket: str, cls: str) -> tuple:
    """(backend or None, why) from the record, for an available backend with a kernel of op.
    Static for torch.compile: it runs at trace time and its result becomes a constant."""
    table, found = _table(device)
    if table is None:
        seen = f" ({'; '.join(found.notes)})" if found.notes else ""
        return None, ("no usable verification record for this device and software"
                      f"{seen}: run `python -m factorkern.verify`")
    backend, why = table.choice(op, dtype, bucket, cls)
    if backend is None:
        return None, why
    ok, reason = availability(backend)
    if not ok:
        return None, f"{backend} is not available ({reason})"
    if (op, backend) not in _KERNELS:
        return None, f"{backend} registers no kernel of {op} here"
    return backend, why


# What torch.compiler.assume_constant_result(_record_choice) sets (torch marks its own functions
# the same way), without importing torch._dynamo when factorkern is imported (seconds of CPU).
_record_choice._dynamo_marked_constant = True


def explain(op: str, x, *args) -> tuple[str, str]:
    """(backend, why) that ``auto`` takes for this call (x (N, in), the op's arguments)."""
    return _explain(op, x, *args)[:2]


def _explain(op: str, x, *args) -> tuple:
    """(backend, why, cell): cell = (dtype, M bucket, shape class), None on the CPU."""
    device = _auto_device(x)
    if device is None:
        return "torch", f"the library path: x is on {x.device.type} (auto is the library " \
                        "path there)", None
    if x.shape[0] == 0:
        return "torch", "the library path: empty input", None
    cell = (str(x.dtype).replace("torch.", ""), _records.m_bucket(x.shape[0]),
            _records.shape_class(OP_DIMS[op](x, *args)))
    backend, why = _record_choice(device, op, *cell)
    if backend is None:
        return "torch", f"the library path: {why}", cell
    k = _KERNELS[(op, backend)]
    if k.supports is not None:
        reason = k.supports(x, *args)
        if reason is not None:
            return "torch", f"the library path: the {backend} kernel does not take this " \
                            f"call ({reason})", cell
    return backend, why, cell


_OBSERVERS: list = []


@contextlib.contextmanager
def observe():
    """Collects what ``auto`` resolves inside the block, as (op, backend, why, cell) tuples
    (``bench.sweep`` marks the rows auto takes with it)."""
    seen: list = []
    add = seen.append
    _OBSERVERS.append(add)
    try:
        yield seen
    finally:
        _OBSERVERS.remove(add)


def resolve(op: str, backend, x, *args) -> str:
    """The backend that runs ``op`` for this call: "torch" (the library path) or a kernel
    backend. ``args`` are the op's arguments after x (bias may be left out)."""
    name = "auto" if backend is None else _name(backend)
    if name == "auto":
        name = _name(os.environ.get(ENV_VAR, "auto"), ENV_VAR) or "auto"
        if name != "auto" and name not in backend_names():
            raise ValueError(f"{ENV_VAR}={os.environ.get(ENV_VAR)!r}; expected auto or one of "
                             f"{', '.join(backend_names())}")
    if name == "auto":
        backend, why, cell = _explain(op, x, *args)
        for obs in _OBSERVERS:
            obs((op, backend, why, cell))
        return backend
    if name not in backend_names():
        raise ValueError(f"backend must be one of auto, {', '.join(backend_names())}; got "
                         f"{backend!r}")
    if name == "torch":
        return name
    ok, why = availability(name)
    if not ok:
        raise RuntimeError(f"{op}: backend {name!r} is not available: {why}")
    k = _KERNELS.get((op, name))
    if k is None:
        raise RuntimeError(f"{op}: backend {name!r} has no kernel for this op")
    if name in ("cuda", "cuda_sm90") and not x.is_cuda:
        raise RuntimeError(f"{op}: backend {name!r} needs CUDA tensors, x is on {x.device}")
    if name == "triton" and not x.is_cuda and not _interpret():
        raise RuntimeError(f"{op}: backend 'triton' needs CUDA tensors (x is on {x.device}) "
                           "or TRITON_INTERPRET=1")
    if k.supports is not None:
        reason = k.supports(x, *args)
        if reason is not None:
            raise RuntimeError(f"{op}: the {name} kernel does not take this call: {reason}")
    return name


def kernel(op: str, backend: str) -> Callable:
    """The function that runs ``op`` for a resolved backend string (inside the custom op)."""
    if _library.is_library(backend):
        return _library.kernel(op, backend)
    _load(backend)
    k = _KERNELS.get((op, backend))
    if k is None:
        raise RuntimeError(f"{op}: backend {backend!r} has no kernel for this op")
    return k.fn


# ---- report -------------------------------------------------------------------------------------
def _report_device() -> Optional[str]:
    """The device ``backends()`` reports on: the current CUDA device, or None (CPU only)."""
    return f"cuda:{torch.cuda.current_device()}" if _cuda_available() else None


def _auto_report(device: Optional[str]) -> dict:
    """backends()["auto"]: what ``auto`` takes here per op, and why."""
    if device is None:
        why = "no CUDA GPU here: auto is the library path on the CPU"
        return {"available": True, "reason": why, "record": None,
                "ops": {op: f"torch (library path): {why}" for op in OPS}}
    table, found = _table(device)
    if table is None:
        notes = f" Records seen: {'; '.join(found.notes)}." if found.notes else ""
        why = (f"no usable verification record for {_records.device_key(device)['name']} with "
               f"this software: every op takes the library path. Run `python -m "
               f"factorkern.verify` to verify and time the kernels here.{notes}")
        return {"available": True, "reason": why, "record": None,
                "ops": {op: "torch (library path): no record" for op in OPS}}
    stale = "".join(f"; {b} rows unused: {w}" for b, w in sorted(found.stale.items()))
    ops = {}
    for op in OPS:
        picks = table.picks(op)
        if not picks:
            ops[op] = "torch (library path) everywhere: no kernel passed and was faster"
        else:
            cells = ", ".join(f"{b} for {d} M {m} {c}" for d, m, c, b, _ in picks)
            ops[op] = f"{cells}; the library path elsewhere"
    return {"available": True, "reason": f"record {found.path}{stale}", "record": found.path,
            "ops": ops}


def backends() -> dict[str, dict]:
    """What is available here, what ``auto`` takes, and why::

        {"torch": {"available": True, "reason": ..., "ops": {...}},
         "triton": {...}, "cuda": {...}, "cuda_sm90": {...},   # plus plugin backends
         "auto": {"available": True, "reason": ..., "record": path or None, "ops": {...}}}

    For a kernel backend, ``ops`` maps each op it has a kernel for to "proven" (the record used
    here says it passed) or "unproven" (it runs only when asked for by name). ``auto``'s
    ``ops`` says per op what auto takes here and why.
    """
    out = {"torch": {"available": True, "reason": availability("torch")[1],
                     "ops": {op: "library path" for op in OPS}}}
    device = _report_device()
    auto = _auto_report(device)
    table = _table(device)[0] if device is not None else None
    for b in backend_table():
        ok, why = availability(b)
        ops = {op: ("proven" if table is not None and table.proven(op, b) else "unproven")
               for (op, bk) in _KERNELS if bk == b}
        out[b] = {"available": ok, "reason": why, "ops": ops}
    out["auto"] = auto
    return out
