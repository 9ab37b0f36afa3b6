"""Verification records: what ``python -m factorkern.verify`` measured on one device with one
software stack, and the rule ``auto`` uses to dispatch from them (docs/dispatch.md).

A record is a JSON file (``SCHEMA`` = 1)::

    {"schema": 1, "created": "2025-01-01T00:00:00Z", "interpreted": false, "quick": false,
     "device": {"type": "cuda", "name": "NVIDIA H100 80GB HBM3", "capability": [9, 0],
                "sms": 132},
     "software": {"driver": "550.54.15", "cuda": "12.4", "torch": "2.5.1", "triton": "3.1.0",
                  "factorkern": "0.1.0",
                  "sources": {"triton": "<sha256>", "cuda": ..., "cuda_sm90": ..., "library": ...}},
     "settings": {...},            # the matrix and tolerances verify ran with (informative)
     "kernels": [{"op", "backend", "dtype", "status", "detail"}],
     "rows": [{"op", "backend", "dtype", "out", "in", "sizes", "shape_class", "m", "m_bucket",
               "status", "rel_err", "tol", "detail", "ms", "library_ms", "dense_ms",
               "library_rel_err", "source"}]}

``kernels[].status``: "passed" (every case ran: each passed or was refused by the kernel's
``supports``, at least one passed), "failed" (a wrong result or an exception), "crashed" (the
process died: a segfault, a CUDA fault, ``os._exit``), "timeout" (a call hung), "refused" (no
case taken), "incomplete" (the time budget ran out), "unavailable" (the backend cannot run here).
``rows[].status``: "pass", "fail", "error", "crash", "timeout", "refused", "skipped". ``source``
is "verify" or "sweep" (rows ``bench.sweep`` added).

A cell is (op, dtype, M bucket, shape class) (``m_bucket``, ``shape_class``). ``auto`` runs a
kernel in a cell only when (``Table``): its (op, backend, dtype) has kernel status "passed"; its
rows of the cell include at least one verify row, all "pass"; and it was faster than the library
path at every one of them (``library_ms / ms > 1``). Among several, the largest smallest speedup
wins. Everything else takes the library path.

Staleness (``check``), field by field: a record is used only when

=====================  =====================  ==============================================
field                  rule                   why
=====================  =====================  ==============================================
schema                 equal                  the file format
device name,           equal (else it is      numerics and speed depend on the architecture;
capability, sms        another device's)      the SM count changes grids, so speed
interpreted            never used on a GPU    the Triton interpreter proves numerics only
driver                 same major version     the driver JIT-compiles PTX where no SASS
                                              ships, and its compiler changes with the major
cuda                   same major.minor       cuBLAS/cuSPARSELt (the library path each kernel
                                              must beat) and the runtime the kernels run on
torch                  equal                  the library path, the custom-op and launch
                                              machinery, torch's semi-structured kernels
factorkern             equal                  the ops' glue and the layouts kernels read
sources.library        equal                  the baseline of every speed decision changed
triton                 equal (triton rows)    the compiler that generates Triton kernels
sources.<backend>      equal (that backend)   a changed kernel source is an unverified kernel
=====================  =====================  ==============================================

The first seven make the whole record stale; the last two only that backend's rows.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
import re
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

SCHEMA = 1
CACHE_ENV = "FACTORKERN_CACHE_DIR"
# M buckets: (low, high, name); the verify matrix has M = 1, 3, 16, 17, 128, 2048, so every
# bucket is measured.
M_BUCKETS = ((1, 1, "1"), (2, 16, "2-16"), (17, 128, "17-128"), (129, None, "129+"))
# Shape classes: weight count out * in (S < 2^20 <= M < 2^24 <= L) and the largest of ALIGNS
# dividing every size of the call (out, in and the factors' inner sizes), since alignment is
# what selects a kernel's code path (vector loads, tile multiples, masking).
SIZE_BUCKETS = ((1 << 20, "S"), (1 << 24, "M"), (None, "L"))
ALIGNS = (128, 16, 8, 1)
GLOBAL_FIELDS = ("driver", "cuda", "torch", "factorkern")
PASSED = "passed"


def m_bucket(m: int) -> str:
    """The M bucket of a call with m rows (m >= 1)."""
    for low, high, name in M_BUCKETS:
        if m >= low and (high is None or m <= high):
            return name
    raise ValueError(f"m must be positive, got {m}")


def shape_class(dims: dict) -> str:
    """``"<size>-a<align>"`` of a call, e.g. ``"L-a128"``; ``dims`` has "out", "in" and the
    inner sizes of the factors."""
    n = int(dims["out"]) * int(dims["in"])
    size = next(name for limit, name in SIZE_BUCKETS if limit is None or n < limit)
    align = next(a for a in ALIGNS if all(int(v) % a == 0 for v in dims.values()))
    return f"{size}-a{align}"


# ---- device and software --------------------------------------------------------------------
def device_key(device=None) -> dict:
    """{"type", "name", "capability", "sms"} of a CUDA device, or of the CPU."""
    import torch

    if device is not None and not isinstance(device, torch.device):
        device = torch.device(device)
    if device is None or device.type != "cuda":
        return {"type": "cpu", "name": platform.machine() or "cpu", "capability": None,
                "sms": None}
    p = torch.cuda.get_device_properties(device)
    return {"type": "cuda", "name": p.name, "capability": [p.major, p.minor],
            "sms": p.multi_processor_count}


def _driver_version() -> Optional[str]:
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
        m = re.search(r"Kernel Module\s+(?:for \S+\s+)?(\d+(?:\.\d+)+)", text)
        if m:
            return m.group(1)
    except OSError:
        pass
    try:
        import ctypes

        lib = ctypes.CDLL("libcuda.so.1")
        v = ctypes.c_int()
        if lib.cuDriverGetVersion(ctypes.byref(v)) == 0:
            return f"cuda-api-{v.value}"
    except OSError:
        pass
    return None


def _hash_files(paths) -> str:
    h = hashlib.sha256()
    for p in sorted(set(paths)):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def _module_files(name: str) -> list[Path]:
    import importlib.util

    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return []
    if spec is None:
        return []
    if spec.submodule_search_locations:
        return [p for d in spec.submodule_search_locations for p in Path(d).glob("*.py")]
    return [Path(spec.origin)] if spec.origin and os.path.exists(spec.origin) else []


def source_hashes() -> dict:
    """sha256 (16 hex digits) of every backend's sources: its package's Python files, plus the
    compiled extension for the CUDA backends (what actually runs), and of the library path."""
    from .. import dispatch

    out = {"library": _hash_files(_module_files("factorkern.library"))}
    binary = _module_files("factorkern._C")
    for name, b in dispatch.backend_table().items():
        if b.module is None:
            continue
        files = _module_files(b.module) + (binary if name in ("cuda", "cuda_sm90") else [])
        out[name] = _hash_files(files) if files else None
    return out


def software_key() -> dict:
    import torch

    import factorkern

    try:  # the installed distribution's version: no need to import triton for it
        from importlib.metadata import version

        triton_version = version("triton")
    except Exception:
        triton_version = None
    return {"driver": _driver_version() if torch.cuda.is_available() else None,
            "cuda": torch.version.cuda, "torch": torch.__version__, "triton": triton_version,
            "factorkern": factorkern.__version__, "sources": source_hashes()}


# ---- files ----------------------------------------------------------------------------------
def cache_dir() -> Path:
    """Where records are written: ``$FACTORKERN_CACHE_DIR/records`` or
    ``~/.cache/factorkern/records``."""
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache",
                                                      "factorkern")
    return Path(root) / "records"


def shipped_dir() -> Path:
    """Records shipped in the package (made on GPUs we had at hand)."""
    return Path(__file__).resolve().parent


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-")


def file_name(device: dict, software: dict, interpreted: bool = False) -> str:
    if device.get("type") == "cuda":
        cap = "".join(str(c) for c in device["capability"])
        dev = f"{_slug(device['name'])}-sm{cap}-{device['sms']}sm"
    else:
        dev = f"cpu-{_slug(device.get('name'))}"
    digest = hashlib.sha256(json.dumps(software, sort_keys=True).encode()).hexdigest()[:12]
    return f"{dev}--{digest}{'-interpreted' if interpreted else ''}.json"


def new_record(device: dict, software: dict, *, interpreted: bool, quick: bool,
               settings: dict) -> dict:
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"schema": SCHEMA, "created": now, "interpreted": bool(interpreted),
            "quick": bool(quick), "device": device, "software": software, "settings": settings,
            "kernels": [], "rows": []}


def save(record: dict, path=None) -> Path:
    """Write ``record`` atomically (a temporary file in the same folder, then a rename): a reader
    never sees a half-written file. Default path: ``cache_dir() / file_name(...)``."""
    path = Path(path) if path is not None else cache_dir() / file_name(
        record["device"], record["software"], record.get("interpreted", False))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(record, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


_ROW_KEYS = {"op": str, "backend": str, "dtype": str, "m": int, "status": str}
_KERNEL_KEYS = {"op": str, "backend": str, "dtype": str, "status": str}


def _validate(rec) -> None:
    """Raise ValueError unless ``rec`` has the record's structure (types of what auto reads)."""
    if not isinstance(rec, dict):
        raise ValueError("not a JSON object")
    for k, t in (("schema", int), ("device", dict), ("software", dict), ("kernels", list),
                 ("rows", list)):
        if not isinstance(rec.get(k), t):
            raise ValueError(f"field {k!r} missing or not a {t.__name__}")
    if not isinstance(rec["software"].get("sources", {}), dict):
        raise ValueError("software.sources is not an object")
    for what, items, keys in (("kernels", rec["kernels"], _KERNEL_KEYS),
                              ("rows", rec["rows"], _ROW_KEYS)):
        for i, item in enumerate(items):
            if not isinstance(item, dict) or not all(isinstance(item.get(k), t)
                                                     for k, t in keys.items()):
                raise ValueError(f"{what}[{i}] is malformed")
    for i, r in enumerate(rec["rows"]):
        for k in ("ms", "library_ms"):
            if r.get(k) is not None and not isinstance(r[k], (int, float)):
                raise ValueError(f"rows[{i}].{k} is not a number")


def load(path) -> Optional[dict]:
    """A record, or None with a warning when the file is unreadable, corrupt, half-written or
    not shaped like a record."""
    try:
        with open(path) as f:
            rec = json.load(f)
        _validate(rec)
        return rec
    except (OSError, ValueError) as e:
        warnings.warn(f"factorkern: ignoring the verification record {path}: {e}",
                      RuntimeWarning, stacklevel=2)
        return None


def merge(old: dict, new: dict) -> dict:
    """``new`` plus what ``old`` (same device and software) has for the (op, backend, dtype)
    kernels ``new`` did not run: a run limited with --ops/--dtypes/--backends refines the record
    instead of replacing it."""
    ran = {(k["op"], k["backend"], k["dtype"]) for k in new["kernels"]}
    kept_k = [k for k in old["kernels"] if (k["op"], k["backend"], k["dtype"]) not in ran]
    kept_r = [r for r in old["rows"] if (r["op"], r["backend"], r["dtype"]) not in ran]
    out = dict(new, kernels=kept_k + new["kernels"], rows=kept_r + new["rows"])
    if kept_k:
        out["settings"] = dict(new["settings"], merged_with=old.get("created"))
    return out


def _major(v) -> Optional[str]:
    return None if v is None else re.split(r"[.\-]", str(v).replace("cuda-api-", "api"))[0]


def _major_minor(v) -> Optional[str]:
    return None if v is None else ".".join(str(v).split(".")[:2])


_RULES = {"driver": _major, "cuda": _major_minor, "torch": str, "factorkern": str}


def check(record: dict, device: dict, software: dict, *, gpu: bool) -> tuple:
    """(why the whole record cannot be used or None, {backend: why its rows are stale})."""
    if record.get("schema") != SCHEMA:
        return f"schema {record.get('schema')} (this factorkern reads {SCHEMA})", {}
    rd = record.get("device") or {}
    for k in ("type", "name", "capability", "sms"):
        if rd.get(k) != device.get(k):
            return f"another device ({k} {rd.get(k)!r}, this one {device.get(k)!r})", {}
    if gpu and record.get("interpreted"):
        return "made by the Triton interpreter (numerics only; never used on a GPU)", {}
    rs = record.get("software") or {}
    for k in GLOBAL_FIELDS:
        norm = _RULES[k]
        if norm(rs.get(k)) != norm(software.get(k)):
            return f"{k} {rs.get(k)} -> {software.get(k)}", {}
    src_r, src_n = rs.get("sources") or {}, software.get("sources") or {}
    if src_r.get("library") != src_n.get("library"):
        return "the library path's sources changed (the baseline of every decision)", {}
    stale = {}
    for b in {k["backend"] for k in record.get("kernels", [])}:
        if src_r.get(b) != src_n.get(b):
            stale[b] = f"{b} kernel sources changed"
        elif b == "triton" and rs.get("triton") != software.get("triton"):
            stale[b] = f"triton {rs.get('triton')} -> {software.get('triton')}"
    return None, stale


@dataclass
class Found:
    """The record ``auto`` uses on a device, or why there is none."""

    record: Optional[dict] = None
    path: Optional[str] = None
    stale: dict = field(default_factory=dict)   # backend -> why its rows are not used
    notes: list = field(default_factory=list)   # records seen and why they were not used


def _candidates(device: dict):
    """(path, record) of every readable record for ``device``: user cache first (newest first),
    then the shipped ones."""
    out = []
    for folder in (cache_dir(), shipped_dir()):
        if not folder.is_dir():
            continue
        recs = []
        for p in folder.glob("*.json"):
            rec = load(p)
            if rec is not None and rec["device"].get("name") == device.get("name") \
                    and rec["device"].get("type") == device.get("type"):
                recs.append((str(rec.get("created", "")), str(p), rec))
        out += [(p, r) for _, p, r in sorted(recs, key=lambda t: t[0], reverse=True)]
    return out


def find(device: dict, software: dict, *, gpu: bool = True) -> Found:
    """The first usable record for ``device`` and ``software`` (user cache, then shipped)."""
    found = Found()
    for path, rec in _candidates(device):
        why, stale = check(rec, device, software, gpu=gpu)
        if why is None:
            found.record, found.path, found.stale = rec, path, stale
            return found
        found.notes.append(f"{path}: {why}")
    return found


# ---- decisions ------------------------------------------------------------------------------
class Table:
    """What ``auto`` takes per cell, from one record (module docstring)."""

    def __init__(self, record: dict, stale: Optional[dict] = None):
        self.record = record
        self.stale = dict(stale or {})
        self.kernel_status = {(k["op"], k["backend"], k["dtype"]): (k["status"],
                                                                      k.get("detail", ""))
                              for k in record.get("kernels", [])}
        cells: dict = {}
        for r in record.get("rows", []):
            if not r.get("shape_class") or not r.get("m_bucket"):
                continue  # a case that never ran (crash, timeout): its kernel is not "passed"
            key = (r["op"], r["dtype"], r["m_bucket"], r["shape_class"])
            cells.setdefault(key, {}).setdefault(r["backend"], []).append(r)
        self.cells = cells
        self._choice = {key: self._decide(key) for key in cells}

    def _decide(self, key) -> tuple:
        op, dtype = key[0], key[1]
        best, reasons = None, []
        for b, rows in sorted(self.cells[key].items()):
            status, detail = self.kernel_status.get((op, b, dtype), ("absent", ""))
            if b in self.stale:
                reasons.append(f"{b}: stale ({self.stale[b]})")
                continue
            if status != PASSED:
                reasons.append(f"{b}: kernel {status}" + (f" ({detail})" if detail else ""))
                continue
            rows = [r for r in rows if r["status"] != "refused"]
            if not any(r.get("source", "verify") == "verify" for r in rows):
                reasons.append(f"{b}: not verified in this cell")
                continue
            if any(r["status"] != "pass" for r in rows):
                reasons.append(f"{b}: not every case of this cell passed")
                continue
            if any(not r.get("ms") or not r.get("library_ms") for r in rows):
                reasons.append(f"{b}: not timed")
                continue
            speed = min(r["library_ms"] / r["ms"] for r in rows)
            if speed <= 1.0:
                reasons.append(f"{b}: {speed:.2f}x the library path (not faster)")
                continue
            if best is None or speed > best[1]:
                best = (b, speed)
        if best is not None:
            return best[0], f"{best[0]}: verified, {best[1]:.2f}x the library path"
        return None, "; ".join(reasons) or "no kernel row"

    def choice(self, op: str, dtype: str, bucket: str, cls: str) -> tuple:
        """(backend or None, why) for a cell."""
        got = self._choice.get((op, dtype, bucket, cls))
        if got is None:
            return None, f"no row for {op} {dtype} M {bucket} {cls} in the record"
        return got

    def proven(self, op: str, backend: str) -> bool:
        """True when the kernel passed for some dtype and is not stale."""
        return backend not in self.stale and any(
            s == PASSED for (o, b, _), (s, _d) in self.kernel_status.items()
            if o == op and b == backend)

    def picks(self, op: str) -> list:
        """[(dtype, bucket, class, backend, why)] of the cells where ``auto`` takes a kernel."""
        return [(k[1], k[2], k[3], b, why) for k, (b, why) in sorted(self._choice.items())
                if k[0] == op and b is not None]


def extend(record: dict, rows: list, source: str = "sweep") -> dict:
    """Add rows (the record's row schema, ``source`` set) replacing earlier rows of the same
    source, op, backend, dtype, shape, sizes and M. Returns the record."""
    def key(r):
        return (r.get("source", "verify"), r["op"], r["backend"], r["dtype"], r["out"], r["in"],
                json.dumps(r.get("sizes", {}), sort_keys=True), r["m"])
    new = {key(dict(r, source=source)): dict(r, source=source) for r in rows}
    record["rows"] = [r for r in record["rows"] if key(r) not in new] + list(new.values())
    return record
