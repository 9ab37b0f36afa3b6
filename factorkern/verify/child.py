"""A verification child process (started by ``factorkern.verify.runner`` as
``python -m factorkern.verify.child FD``, FD one end of a socket pair): runs the cases of
the jobs the parent sends, one result message per case, so that a crash or a hang is charged
to the case in flight and never to the parent.

Protocol on the pipe: child -> ("ready", pid); parent -> job dict or None (quit); child ->
("row", row) per case, then ("done",), or ("restart",) after an exception that left the CUDA
context unusable (the parent goes on with a fresh child).
"""

from __future__ import annotations

import inspect
import math
import os
import traceback
import zlib

import torch


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


def _rel_err(y, ref) -> float:
    y64, r64 = y.double(), ref.double()
    den = r64.norm().item()
    return (y64 - r64).norm().item() / (den if den > 0 else 1.0)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _healthy(device) -> bool:
    try:
        _sync(device)
        torch.empty(1, device=device).fill_(1).item()
        return True
    except Exception:
        return False


def _call(fn, x, args, bias, extra, out_shape, poison: bool):
    """fn(x, *args, bias, extra); the output is poisoned with NaN beforehand: a NaN-filled
    ``out=`` buffer where the kernel takes one, else a freed NaN block of the output's size
    that the caching allocator hands out next."""
    kwargs = {}
    if poison:
        nan = torch.full(out_shape, math.nan, dtype=x.dtype, device=x.device)
        try:
            takes_out = "out" in inspect.signature(fn).parameters
        except (TypeError, ValueError):
            takes_out = False
        if takes_out:
            kwargs["out"] = nan
        else:
            del nan
    return fn(x, *args, bias, list(extra), **kwargs)


def run_job(job: dict, send) -> bool:
    """Run one job's cases; False when the process must be replaced (CUDA context lost)."""
    from .. import dispatch, layouts, library
    from .. import records as rec
    from . import cases
    from .timing import time_cuda

    op, backend, dname = job["op"], job["backend"], job["dtype"]
    dtype, device = getattr(torch, dname), torch.device(job["device"])
    tol = cases.TOL[dname]
    k = dispatch.kernels(backend).get((op, backend))
    oracle = dispatch.ORACLE[op]
    for out_f, in_f in job["shapes"]:
        todo = [m for m in job["ms"] if (out_f, in_f, m) in job["todo"]]
        if not todo:
            continue
        base = {"op": op, "backend": backend, "dtype": dname, "out": out_f, "in": in_f,
                "sizes": {}, "shape_class": None, "status": None, "rel_err": None, "tol": tol,
                "detail": "", "ms": None, "library_ms": None, "dense_ms": None,
                "library_rel_err": None, "source": "verify"}
        gen = torch.Generator().manual_seed(zlib.crc32(f"{op} {out_f} {in_f}".encode()))
        try:
            if k is None:
                raise RuntimeError(f"no {backend} kernel of {op} is registered in the child")
            built = cases.BUILDERS[op](out_f, in_f, dtype, device, gen)
            extra = layouts.prepared(built.fmt, backend) if built.fmt is not None else ()
            lib_key = library.layout_key(op, built.fmt)
            lib_extra = layouts.prepared(built.fmt, lib_key) if built.fmt is not None else ()
            lib_fn = library.kernel(op, lib_key)
            args64 = cases.to64(built.args)
            base["sizes"] = built.sizes
        except Exception as e:
            for m in todo:
                send(("row", dict(base, m=m, m_bucket=rec.m_bucket(m), status="error",
                                  detail=f"building the factors: {_short(e)}")))
            if not _healthy(device):
                return False
            continue
        for m in todo:
            row = dict(base, m=m, m_bucket=rec.m_bucket(m))
            x = cases.make_x(m, in_f, dtype, device, gen)
            bias = cases.make_bias(m, out_f, dtype, device, gen)
            row["shape_class"] = rec.shape_class(dispatch.OP_DIMS[op](x, *built.args))
            reason = k.supports(x, *built.args) if k.supports is not None else None
            if reason is not None:
                send(("row", dict(row, status="refused", detail=reason)))
                continue
            ref = oracle(x.double(), *args64, None if bias is None else bias.double())
            try:
                y = _call(k.fn, x, built.args, bias, extra, (m, out_f), poison=True)
                _sync(device)
                if not isinstance(y, torch.Tensor) or tuple(y.shape) != (m, out_f) \
                        or y.dtype != dtype or y.device != device:
                    got = (tuple(y.shape), y.dtype, y.device) if isinstance(y, torch.Tensor) \
                        else type(y).__name__
                    raise RuntimeError(f"returned {got}, expected ({m}, {out_f}) {dname} on "
                                       f"{device}")
                err = _rel_err(y, ref)
                row["rel_err"] = err if math.isfinite(err) else None
                ok = math.isfinite(err) and err <= tol
                row["status"] = "pass" if ok else "fail"
                if not ok:
                    row["detail"] = (f"relative error {err:.3g} > {tol:g}" if math.isfinite(err)
                                     else "NaN/Inf in the output (unwritten or overflowed)")
            except Exception as e:
                row.update(status="error", detail=_short(e))
                if os.environ.get("FACTORKERN_VERIFY_TRACEBACK"):
                    row["detail"] += "\n" + traceback.format_exc()
                send(("row", row))
                if not _healthy(device):
                    return False
                continue
            try:
                y_lib = lib_fn(x, *built.args, bias, list(lib_extra))
                row["library_rel_err"] = _rel_err(y_lib, ref)
                if ok and job["timing"]:
                    W = torch.randn(out_f, in_f, generator=gen, dtype=torch.float64)
                    W = (W / math.sqrt(in_f)).to(dtype).to(device)
                    row["ms"] = time_cuda(lambda: k.fn(x, *built.args, bias, list(extra)),
                                          device)
                    row["library_ms"] = time_cuda(
                        lambda: lib_fn(x, *built.args, bias, list(lib_extra)), device)
                    row["dense_ms"] = time_cuda(
                        lambda: torch.nn.functional.linear(x, W, bias), device)
            except Exception as e:
                row["detail"] = (row["detail"] + "; " if row["detail"] else "") + \
                    f"timing or the library path failed: {_short(e)}"
                if not _healthy(device):
                    send(("row", row))
                    return False
            send(("row", row))
    return True


def main(conn) -> None:
    """Entry point of the spawned child."""
    try:  # a kernel that crashes this process must not leave a core file behind
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ImportError, ValueError, OSError):
        pass
    conn.send(("ready", os.getpid()))
    while True:
        job = conn.recv()
        if job is None:
            return
        ok = run_job(job, conn.send)
        conn.send(("done",) if ok else ("restart",))
        if not ok:
            return


if __name__ == "__main__":
    import sys
    from multiprocessing.connection import Connection

    main(Connection(int(sys.argv[1])))
