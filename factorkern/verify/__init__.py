"""Self-verification: ``python -m factorkern.verify`` or ``factorkern.verify()``.

Runs every registered kernel (Triton, CUDA, sm_90a and plugin backends) that can run here, in
child processes (``runner``: a crash, a CUDA fault or a hang past the timeout fails that
kernel, never the caller), against the float64 oracle on a fixed matrix of shapes, dtypes and M
(``cases``), outputs poisoned with NaN before each call; on a GPU the passing kernels are then
timed against the library path and dense ``F.linear`` in the same child. Prints a progress bar
and a table, and writes a record (``factorkern.records``) atomically to the cache
(``~/.cache/factorkern/records`` or ``$FACTORKERN_CACHE_DIR/records``), from which ``auto``
dispatches. With ``TRITON_INTERPRET=1`` (no GPU needed) the same flow runs the Triton kernels in
Triton's interpreter on small shapes, numerics only, and the record is marked interpreted (never
used on a GPU). docs/dispatch.md explains the rules.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Optional, Sequence

from .. import records as _records

ROW_DEFAULTS = {"sizes": {}, "shape_class": None, "m_bucket": None, "rel_err": None,
                "tol": None, "detail": "", "ms": None, "library_ms": None, "dense_ms": None,
                "library_rel_err": None, "source": "verify"}
_DTYPE_NAMES = {"fp16": "float16", "float16": "float16", "half": "float16", "bf16": "bfloat16",
                "bfloat16": "bfloat16", "fp32": "float32", "float32": "float32",
                "float": "float32"}


def _names(values, known, what) -> Optional[list]:
    if values is None:
        return None
    if isinstance(values, str):
        values = values.split(",")
    out = []
    for v in values:
        v = v.strip().lower()
        if not v:
            continue
        key = v if v in known else v + "_mm"
        if key not in known:
            raise ValueError(f"unknown {what} {v!r}; known: {', '.join(known)}")
        out.append(key)
    return out


def _shape(s) -> tuple:
    if isinstance(s, str):
        parts = s.lower().strip().split("x")
    else:
        parts = list(s)
    try:
        out_f, in_f = (int(p) for p in parts)
    except (TypeError, ValueError):
        raise ValueError(f"a shape is OUTxIN (two positive integers), got {s!r}") from None
    if out_f <= 0 or in_f <= 0:
        raise ValueError(f"a shape is OUTxIN (two positive integers), got {s!r}")
    return out_f, in_f


def _kernel_status(rows: list, ended: str) -> tuple:
    statuses = [r["status"] for r in rows]
    if "crash" in statuses:
        return "crashed", next(r["detail"] for r in rows if r["status"] == "crash")
    if "timeout" in statuses:
        return "timeout", next(r["detail"] for r in rows if r["status"] == "timeout")
    bad = [r for r in rows if r["status"] in ("fail", "error")]
    if bad:
        r = bad[0]
        return "failed", f"{len(bad)} of {len(rows)} cases; first: {r['out']}x{r['in']} " \
                         f"M={r['m']}: {r['detail']}"
    if "skipped" in statuses:
        return "incomplete", "the time budget ran out"
    if "pass" not in statuses:
        return "refused", rows[0]["detail"] if rows else "no case"
    return _records.PASSED, ""


def verify(*, ops: Optional[Sequence[str]] = None, dtypes: Optional[Sequence[str]] = None,
           backends: Optional[Sequence[str]] = None, quick: bool = False,
           shapes: Optional[Sequence] = None, m: Optional[Sequence[int]] = None,
           max_time: Optional[float] = None, timeout: Optional[float] = None,
           timing: Optional[bool] = None, write: bool = True, cache_dir: Optional[str] = None,
           output: Optional[str] = None, progress: Optional[bool] = None, details: bool = False,
           stream=None) -> dict:
    """Verify (and on a GPU time) every kernel that runs here; returns the record.

    Args:
        ops, dtypes, backends: limit the run (names as in ``factorkern.backends()``; dtypes
            fp16/bf16/fp32). Default: every op, backend with kernels, and fp16 + bf16 (bf16
            with ``quick``; fp16 in the interpreter).
        quick: the small matrix (one model shape, one ragged shape, one M per bucket).
        shapes, m: replace the matrix's shapes ((out, in) pairs or "OUTxIN" strings) and M.
        max_time: seconds; jobs not started by then are recorded as not run ("incomplete").
        timeout: seconds a case may take before its child is killed (default 300 on a GPU,
            120 in the interpreter; the first call of a kernel includes its autotuning).
        timing: time the passing kernels (default: on a GPU; never in the interpreter).
        write: write the record to the cache (``cache_dir`` overrides where), merged with the
            record already there for this device and software (the kernels this run did not
            cover are kept); ``output``: also write it to that file.
        progress: progress bar on stderr (default: when stderr is a terminal);
            ``details``: print every row, not only the summary.
    Returns:
        The record (``factorkern.records``), with "path" set to where it was written.
    """
    import torch

    from .. import dispatch
    from . import cases, report
    from .runner import Pool, deadline

    stream = stream or sys.stdout
    shapes_arg = shapes
    interpreted = os.environ.get("TRITON_INTERPRET", "0") == "1"
    on_gpu = torch.cuda.is_available() and not interpreted
    mode = "interpreted" if interpreted else "quick" if quick else "full"
    shapes, ms, default_dtypes = cases.matrix(mode)
    if shapes_arg is not None:
        shapes = tuple(_shape(s) for s in (shapes_arg.split(",") if isinstance(shapes_arg, str)
                                           else shapes_arg))
    if m is not None:
        ms = tuple(int(v) for v in (m.split(",") if isinstance(m, str) else m))
        if any(v <= 0 for v in ms):
            raise ValueError(f"M values must be positive, got {m}")
    dnames = [_DTYPE_NAMES.get(d.strip().lower()) for d in
              (dtypes.split(",") if isinstance(dtypes, str) else dtypes or default_dtypes)]
    if None in dnames:
        raise ValueError(f"dtypes are fp16, bf16, fp32; got {dtypes}")
    dnames = list(dict.fromkeys(dnames))
    op_list = _names(ops, dispatch.OPS, "op") or list(dispatch.OPS)
    all_backends = [b for b in dispatch.backend_names() if b != "torch"]
    b_list = _names(backends, all_backends, "backend") or all_backends
    timeout = timeout or (120.0 if interpreted else 300.0)
    timing = on_gpu if timing is None else (bool(timing) and on_gpu)
    device = f"cuda:{torch.cuda.current_device()}" if on_gpu else "cpu"

    dev_key = _records.device_key(torch.device(device) if on_gpu else None)
    soft = _records.software_key()
    record = _records.new_record(dev_key, soft, interpreted=interpreted, quick=quick, settings={
        "mode": mode, "shapes": [list(s) for s in shapes], "m": list(ms), "dtypes": dnames,
        "ops": op_list, "backends": b_list, "tolerance": {d: cases.TOL[d] for d in dnames},
        "timing": timing, "timeout_s": timeout})

    jobs = []
    for b in b_list:
        ok, why = dispatch.availability(b)
        registered = [op for (op, bk) in dispatch.kernels(b) if op in op_list]
        if not ok:
            for op in registered or ["*"]:
                for d in dnames:
                    record["kernels"].append({"op": op, "backend": b, "dtype": d,
                                              "status": "unavailable", "detail": why})
            continue
        for op in dispatch.OPS:
            if op in registered:
                jobs += [(op, b, d) for d in dnames]
    total = len(jobs) * len(shapes) * len(ms)
    bar = report.Progress(total, sys.stderr.isatty() if progress is None else progress)
    expired = deadline(max_time)
    pool = Pool()
    t0 = time.monotonic()
    try:
        for op, b, d in jobs:
            todo = [(o, i, m) for o, i in shapes for m in ms]
            if expired():
                rows = [dict(op=op, backend=b, dtype=d, out=o, m=m, status="skipped",
                             detail="not run: the time budget (max_time) ran out", **{"in": i})
                        for o, i, m in todo]
                bar.skip(len(rows))
            else:
                job = {"op": op, "backend": b, "dtype": d, "shapes": [list(s) for s in shapes],
                       "ms": list(ms), "timing": timing, "device": device}
                rows, ended, detail = pool.run(job, todo, timeout, bar.row)
            for r in rows:
                for k, v in ROW_DEFAULTS.items():
                    r.setdefault(k, v)
                r["m_bucket"] = r["m_bucket"] or _records.m_bucket(r["m"])
            status, why = _kernel_status(rows, "")
            record["kernels"].append({"op": op, "backend": b, "dtype": d, "status": status,
                                      "detail": why})
            record["rows"] += rows
    finally:
        pool.close()
        bar.close()
    record["settings"]["seconds"] = round(time.monotonic() - t0, 1)
    record["settings"]["children"] = pool.spawned

    if write:
        from pathlib import Path

        folder = Path(cache_dir) / "records" if cache_dir else _records.cache_dir()
        path = folder / _records.file_name(dev_key, soft, interpreted)
        old = _records.load(path) if path.exists() else None
        if old is not None and old["device"] == dev_key and old["software"] == soft:
            record = _records.merge(old, record)
        record_path = _records.save(record, path)
        if output:
            _records.save(record, output)
        dispatch.reload_records()
    else:
        record_path = None
        if output:
            _records.save(record, output)
    record["path"] = str(record_path) if record_path else output
    report.print_summary(record, stream, details=details, on_gpu=on_gpu)
    return record


__all__ = ["verify"]
