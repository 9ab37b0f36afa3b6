"""The Triton decode kernels in the static performance model (bench/model.py): what the current
triton_kernels source compiles to for sm_90a, read without a GPU.

In a child process without TRITON_INTERPRET (the kernels must be JIT functions), every op runs
with ``backend="triton"`` on CPU tensors at decode sizes inside the compile audit's recorder
(``factorkern.triton_kernels._compile.recording`` with ``force(config=EACH)``): the launchers
bind every config of their autotune space through the same code a GPU runs, and each launch is
recorded with Triton's own specialization of its arguments (16-byte alignment of pointers and
integers) instead of running. Each record is compiled for sm_90a; the SASS goes through the same
analysis as the CUDA kernels. Nothing runs.

Per kernel and token count the result is the config the model ranks best, with its registers,
spills, shared memory, and for its hottest loop (the innermost loop with the most bytes of
global loads per iteration): the bytes each thread loads per iteration and the widest vector,
the bytes in flight per thread before their first use, Little's law over the resident warps
(``f_mem``) and the issue bound (``f_issue``). The phased kernels' time per call is not
predicted (their phases hand work out through atomic tickets); ``min(f_mem, f_issue)`` is the
steady-state fraction of the bytes bound their hottest loop allows.

Results are cached by a hash of the triton_kernels sources and Triton's version, so re-running
after another change of the kernels recompiles only then.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from collections import Counter

from . import model

OPS = ("dense_sparse_mm", "sparse_dense_mm", "armor_mm", "lowrank_mm", "littlebit_mm",
       "monarch_mm", "sparse_mm")
SHAPE = (4096, 4096)
MS = (1, 16)


def _sources_hash() -> str:
    import triton

    import factorkern.triton_kernels as tk

    h = hashlib.sha256(triton.__version__.encode())
    folder = os.path.dirname(tk.__file__)
    for name in sorted(os.listdir(folder)):
        if name.endswith(".py"):
            with open(os.path.join(folder, name), "rb") as f:
                h.update(name.encode() + f.read())
    for path in (model.__file__, __file__):  # the analysis too
        with open(path, "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:20]


def _record(op: str, m: int):
    """Every launch the op's Triton path makes for m tokens, once per config of its autotune
    space, as ``_compile.Launch`` records (the launchers' own argument binding and Triton's
    specialization for sm_90a); nothing runs."""
    import torch

    import factorkern.dispatch as dispatch
    from factorkern.triton_kernels import _compile as tc
    from factorkern.triton_kernels._common import EACH, force

    from .cases import FactorSizes, make_cases
    from .shapes import Shape

    saved = getattr(dispatch, "_interpret", None)
    if saved is not None:
        dispatch._interpret = lambda: True  # CPU tensors reach the Triton launchers
    try:
        (case,) = make_cases(op, Shape(*SHAPE), FactorSizes())[:1]
        gen = torch.Generator().manual_seed(0)
        factors = case.build(torch.bfloat16, "cpu", gen)
        x = torch.randn(m, SHAPE[1], generator=gen).to(torch.bfloat16)
        with tc.recording() as got, force(config=EACH):
            case.call(factors, x, "triton")
    finally:
        if saved is not None:
            dispatch._interpret = saved
    return got


def _config(launch) -> dict:
    """The tile meta-parameters and launch options of a recorded launch."""
    meta = {k: v for k, v in launch.meta().items()
            if k.isupper() and k.startswith(("B", "G", "R"))}
    return dict(meta, **launch.options)


def _compile(launch):
    """Triton's compile of a recorded launch for sm_90a."""
    import triton

    from factorkern.triton_kernels import _compile as tc

    return triton.compile(launch.ast_source(), target=tc.target(), options=dict(launch.options))


def _analyze(compiled) -> dict:
    # cuobjdump on the cubin: the same SASS format (addresses) and resource usage as for the
    # CUDA kernels.
    tool = model.cuda_tool("cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        sass = model.parse_sass(model._run(tool, "-sass", f.name))
        res = model.resource_usage(model._run(tool, "-res-usage", f.name))
    ((name, ins),) = sass.items()
    r = res.get(name, {})
    md = compiled.metadata
    regs, shared, warps = r.get("REG", 0), md.shared, md.num_warps
    spills = r.get("STACK", 0) + r.get("LOCAL", 0)
    best = None
    lps = model.loops(ins)
    for lp in lps:
        if any(model._inside(o, lp) for o in lps):
            continue
        body = ins[lp[0]:lp[1] + 1]
        ops = Counter(model.opcode(t) for _, t in body)
        ldg = {k: v for k, v in ops.items() if k.startswith("LDG")}
        nbytes = sum(model.load_bytes(k) * v for k, v in ldg.items())
        if nbytes and (best is None or nbytes > best[0]):
            best = (nbytes, len(body), ldg, body)
    out = {"regs": regs, "spills": spills, "shared": shared, "warps": warps,
           "ldl_stl": sum(model.opcode(t).startswith(("LDL", "STL")) for _, t in ins)}
    if best is None:
        return out
    nbytes, n_ins, ldg, body = best
    # Every global load counts (Triton gives no hint to tell factors from activations).
    saved = model.is_weight_load
    model.is_weight_load = lambda op: op.startswith("LDG")
    try:
        inflight, before = model.bytes_in_flight(body)
    finally:
        model.is_weight_load = saved
    threads = 32 * warps
    per_thread = max(8, -(-max(regs, 1) // 8) * 8)
    ctas = max(1, min(model.REGS_PER_SM // (per_thread * threads),
                      (228 * 1024) // max(shared, 1) if shared else 32,
                      model.MAX_WARPS_PER_SM // warps))
    need = model.HBM_BW * model.LATENCY_NS * 1e-9 / model.SMS
    bw_sm = model.HBM_BW / model.SMS / model.CLOCK_HZ
    f_mem = min(1.0, inflight * threads * ctas / need)
    f_issue = min(1.0, model.ISSUE_PER_SM * 32 * nbytes / n_ins / bw_sm)
    widest = max(model.load_bytes(k) for k in ldg)
    out.update(loop_instructions=n_ins, loop_bytes=nbytes, widest=widest,
               narrow=sum(v for k, v in ldg.items() if model.load_bytes(k) < 16),
               inflight=inflight, before_first_use=before, ctas=ctas, f_mem=f_mem,
               f_issue=f_issue, f=min(f_mem, f_issue))
    return out


def collect() -> list[dict]:
    """Run in a process without TRITON_INTERPRET: one record per (op, m, kernel, config)."""
    rows = []
    for op in OPS:
        for m in MS:
            try:
                launches = _record(op, m)
            except Exception as e:  # noqa: BLE001 - reported in the table
                rows.append({"op": op, "m": m, "kernel": "-", "error": str(e)[:200]})
                continue
            for launch in launches:
                row = {"op": op, "m": m, "kernel": launch.kernel, "config": _config(launch)}
                try:
                    row.update(_analyze(_compile(launch)))
                except Exception as e:  # noqa: BLE001 - a config that does not compile
                    row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
                rows.append(row)
    return rows


def results(timeout: float = 3600) -> list[dict]:
    """collect() in a child process without TRITON_INTERPRET, cached by source hash."""
    cache = os.path.join(tempfile.gettempdir(), "factorkern-model", f"triton-{_sources_hash()}.json")
    if os.path.exists(cache):
        with open(cache) as f:
            return json.load(f)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = "import json, sys; from bench import model_triton; json.dump(model_triton.collect(), sys.stdout)"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True,
                       text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"compiling the Triton decode kernels failed:\n{r.stderr[-3000:]}")
    rows = json.loads(r.stdout)
    os.makedirs(os.path.dirname(cache), exist_ok=True)
    with open(cache, "w") as f:
        json.dump(rows, f)
    return rows


def table_rows() -> tuple[list[str], str]:
    rows = results()
    note = (f"bf16, shape {SHAPE[0]}x{SHAPE[1]}, every config of each decode launch's autotune "
            "space compiled; the row shows the config the model ranks best (highest min(f_mem, "
            "f_issue) of its hottest loop) and how many of the space compile. Loads are all the "
            "global loads of the loop (factors and activations: Triton's SASS does not tell them "
            "apart), so f_mem is an upper estimate.")
    out = ["| op | M | kernel | configs ok / all | best config | regs | spills | smem KB | "
           "loop B/thread | widest B | in flight B/thread | f_mem | f_issue |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["op"], r["m"], r["kernel"]), []).append(r)
    for (op, m, kernel), rs in groups.items():
        ok = [r for r in rs if "error" not in r]
        if not ok:
            out.append(f"| {op} | {m} | {kernel} | 0 / {len(rs)} | {rs[0].get('error', '')} | "
                       "| | | | | | | |")
            continue
        best = max(ok, key=lambda r: r.get("f", 0.0))
        cfg = ", ".join(f"{k}={v}" for k, v in best["config"].items())
        out.append(
            f"| {op} | {m} | {kernel} | {len(ok)} / {len(rs)} | {cfg} | {best['regs']} | "
            f"{best['spills']} | {best['shared'] / 1024:.0f} | {best.get('loop_bytes', 0)} | "
            f"{best.get('widest', 0)} | {best.get('inflight', 0)} | {best.get('f_mem', 0):.2f} | "
            f"{best.get('f_issue', 0):.2f} |")
    return out, note


if __name__ == "__main__":
    json.dump(collect(), sys.stdout, indent=1)
