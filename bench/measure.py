"""One row of the sweep: which variants a case has, and checking and timing one of them.

A variant is a factorkern backend (``torch``, ``triton``, ``cuda``; ``cuda:popcount`` is
LittleBit's opt-in quantized-activation kernel on that backend) or a baseline of
``bench.baselines``. ``measure`` fills a row: relative error against the float64 reference,
L2-cold median time, TFLOP/s, GB/s and percent of the roofline floor; an exception becomes the
row's ``error``, never a crash of the sweep.
"""

from __future__ import annotations

import math

from . import baselines as bl
from . import cases as cs
from .timing import time_fn

FK_BACKENDS = ("torch", "triton", "cuda", "cuda_sm90")
# Relative Frobenius error past which a row is flagged WRONG (docs/index.md; bf16 has 3
# fewer mantissa bits than fp16, and the composite baselines round every intermediate).
TOL = {"float16": 1e-2, "bfloat16": 3e-2, "float32": 1e-4}
# LittleBit's quantized-activation path quantizes x per token to int8: about 5e-3 relative error
# against the exact path by design (factorkern.reference.littlebit_quant), so a looser bound.
QUANTIZED_OP = "littlebit_mm_popcount"
TOL_QUANTIZED = 2e-2


def variants(case, fk_backends, base_names):
    """(kind, name) of every row of a case: factorkern backends (``cuda:popcount`` = LittleBit's
    opt-in quantized-activation kernel on that backend; the quantized torch reference is a float64
    oracle, not a speed path, so it is left out), then the baselines."""
    out = [("factorkern", b) for b in fk_backends]
    if case.call_quantized is not None:
        out += [("factorkern", f"{b}:popcount") for b in fk_backends if b != "torch"]
    return out + [("baseline", b) for b in base_names]


def fk_usable(op, backend):
    """None when factorkern's ``backend`` has a kernel for ``op`` here, else why not."""
    from factorkern import dispatch

    if op not in dispatch.OPS:
        return f"this factorkern has no op {op}"
    if backend == "torch":
        return None
    ok, why = dispatch.availability(backend)
    if not ok:
        return why
    if (op, backend) not in dispatch._KERNELS:
        return f"no {backend} kernel for {op} yet"
    return None


def measure(row, case, kind, name, sets, xs, ref, ctx):
    """Check one variant against the reference and time it; fills ``row`` (ms None and
    ``error`` set when it raises). ``sets``/``xs``: factor sets and inputs, extended here with
    copies up to the L2-cold rotation this row needs."""
    is_dense = name == "dense"
    m, o, dname = row["M"], case.shape.out, row["dtype"]
    fns = None
    try:
        rot = 1
        if ctx.l2:
            rot = max(1, min(256, math.ceil(ctx.args.l2_factor * ctx.l2 / row["bytes"])))
        while sets and len(sets) < rot:
            sets.append(cs.clone(sets[0]))
        while len(xs) < rot:
            xs.append(xs[0].clone())
        if kind == "factorkern":
            call, b = (case.call, name) if ":" not in name else (
                case.call_quantized, name.split(":")[0])
            fns = [(lambda f=f, x=x: call(f, x, b)) for f, x in zip(sets, xs[:rot])]
        else:
            fns = []  # dense needs no factors: it runs when they fail to build
            for f, x in zip(sets[:rot] if sets else [{}] * rot, xs[:rot]):
                fn = bl.build(name, case, f, ctx.dtype, ctx.device, ctx.gen)
                fns.append(lambda fn=fn, x=x: fn(x))
        fns = fns[:rot]
        y = fns[0]()
        if tuple(y.shape) != (m, o):
            raise RuntimeError(f"output shape {tuple(y.shape)}, expected {(m, o)}")
        if ref is not None and not is_dense:
            row["rel_err"] = _rel_err(y, ref)
            tol = TOL[dname] if ":popcount" not in name else max(TOL[dname], TOL_QUANTIZED)
            row["ok"] = bool(row["rel_err"] <= tol)
        del y
        t = time_fn(fns, ctx.device, warmup_ms=ctx.warmup_ms, rep_ms=ctx.rep_ms,
                    use_graph=not ctx.args.no_graph)
        row.update(ms=t.ms, ms_p20=t.p20_s * 1e3, ms_p80=t.p80_s * 1e3, samples=t.samples,
                   timer=t.timer, rotations=rot)
        row["tflops"] = row["flops"] / t.median_s / 1e12
        row["gbps"] = row["bytes"] / t.median_s / 1e9
        row["roofline_pct"] = 100 * (ctx.dense_floor if is_dense else ctx.floor) / t.median_s
    except Exception as e:
        row["error"] = short_error(e)
        if ctx.device.type == "cuda":
            _recover_cuda()
    finally:
        fns = None


def _rel_err(y, ref) -> float:
    y64, r64 = y.double(), ref.double()
    den = r64.norm().item()
    return (y64 - r64).norm().item() / (den if den > 0 else 1.0)


def short_error(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {msg}"[:160]


def speedups(group):
    """Fill speedup_vs_dense and speedup_vs_best_baseline within one op x shape x M x dtype."""
    dense = next((r for r in group if r["backend"] == "dense" and r["ms"] is not None), None)
    bases = [r for r in group if r["kind"] == "baseline" and r["backend"] != "dense"
             and r["ms"] is not None]
    best = min(bases, key=lambda r: r["ms"]) if bases else None
    for r in group:
        if r["ms"] is None:
            continue
        r["speedup_vs_dense"] = dense["ms"] / r["ms"] if dense else None
        r["speedup_vs_best_baseline"] = best["ms"] / r["ms"] if best else None
        r["best_baseline"] = best["backend"] if best else None


def l2_bytes(device) -> int:
    import torch

    if device.type != "cuda":
        return 0
    return int(getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0) or 50 << 20)


def _recover_cuda():
    """After a failed call: free cached blocks (an OOM) and wait for the stream (an error raised
    asynchronously). A sticky CUDA error (illegal address) makes every later row an error row."""
    import torch

    try:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
    except Exception:
        pass
