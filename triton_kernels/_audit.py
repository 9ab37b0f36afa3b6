"""The compile audit: every Triton kernel of this package x every config of its autotune space x
fp16/bf16/fp32, for each shape class its launcher tells apart, compiled for sm_90a (an H100)
on a machine without a GPU, through the launchers' own binding code (``_compile.recording``).

For each compiled launch it records the dynamic shared memory (against the H100's 232,448-byte
per-block limit, ``_compile.H100_MAX_SHARED``), registers, stack and spill bytes (ptxas -v),
local-memory instructions in the SASS, for the decode kernels the width of every global load on
the lines that read weights, signs, metadata and activations (``_compile.WIDE_MARK``), and for
kernels with a phase counter whether every release is preceded by a CTA barrier in the PTX.

The results live in a table (``tests/triton_audit.json``) keyed by a hash of the kernel source,
the specialization and the options (``_compile.Launch.source_hash``), rendered in
``docs/triton_configs.md``. CI (tests/test_triton_audit.py) checks that the table covers every
current launch, asserts its properties, and recompiles a sample to check it against this Triton.

    python -m factorkern.triton_kernels._audit --full --write [--jobs N]   # refresh table + docs
    python -m factorkern.triton_kernels._audit --markdown                  # docs from the table
    python -m factorkern.triton_kernels._audit --check --sample N          # what CI runs

Run without TRITON_INTERPRET (the kernels must be compiled functions).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from typing import Callable

import torch

from . import _compile
from ._common import EACH, force

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
DECODE_M = (1, 16)     # M = 1 is its own specialization (Triton turns an argument of 1 into a
PREFILL_M = 2048       # constant); any 2 <= M <= 16 compiles like M = 16.
# The lines marked WIDE_MARK must load 128 bits per instruction in these dtypes (fp32 decode
# is reported, not held to it).
WIDE_DTYPES = ("fp16", "bf16")


@dataclass
class Case:
    """One shape class of one op in one dtype: the op's launcher and CPU tensors of a
    representative shape, ``args`` = (x, *factors, bias, extra) as the custom op passes them (the
    compiled code depends on the class, not on the sizes)."""

    op: str
    variant: str
    shape_class: str
    dtype: str
    args: tuple

    @property
    def label(self) -> str:
        return f"{self.op} {self.variant} {self.shape_class} {self.dtype}"

    def kernel(self):
        from factorkern import dispatch

        dispatch._load("triton")
        return dispatch._KERNELS[(self.op, "triton")]

    def call(self):
        return self.kernel().fn(*self.args)

    def refused(self) -> str | None:
        """The reason the op's ``supports`` gives for this class, or None if it takes it."""
        k = self.kernel()
        return None if k.supports is None else k.supports(*self.args[:-2])


def _e(*shape, dtype):
    return torch.empty(*shape, dtype=dtype)


def cases() -> list[Case]:
    """Every (op, variant, shape class, dtype) the audit compiles."""
    from factorkern.formats import MonarchFactors

    out: list[Case] = []
    i16, i32 = torch.int16, torch.int32
    for dname, dt in DTYPES.items():
        def ds(m, k, dt=dt):
            return (_e(m, 4096, dtype=dt), _e(4096, k, dtype=dt), _e(k, 2048, dtype=dt),
                    _e(k, 256, dtype=i16), _e(4096, dtype=dt), [])

        def sd(m, k, dt=dt):
            return (_e(m, 4096, dtype=dt), _e(4096, k // 2, dtype=dt),
                    _e(4096, -(-k // 16), dtype=i16), _e(k, 4096, dtype=dt), _e(4096, dtype=dt),
                    [])

        def lr(m, r, dt=dt):
            return (_e(m, 4096, dtype=dt), _e(4096, r, dtype=dt), _e(4096, r, dtype=dt),
                    _e(4096, dtype=dt), [])

        for op, make, k_dec, k_big in (("dense_sparse_mm", ds, 2048, 2048),
                                       ("sparse_dense_mm", sd, 2048, 2048),
                                       ("lowrank_mm", lr, 256, 512)):
            for m in DECODE_M:
                out.append(Case(op, "decode", f"M={m} k={k_dec}", dname, make(m, k_dec)))
            for k in (16, 32, 64, 128, 256):
                out.append(Case(op, "prefill", f"k={k} (t resident)", dname,
                                make(PREFILL_M, k)))
            out.append(Case(op, "prefill", f"k={k_big} (t chunked)", dname,
                            make(PREFILL_M, k_big)))

        def arm(m, ba, bb, dt=dt):
            return (_e(m, 4096, dtype=dt), _e(4096 // ba, ba, ba, dtype=dt),
                    _e(4096, 2048, dtype=dt), _e(4096, 256, dtype=i16),
                    _e(4096 // bb, bb, bb, dtype=dt), _e(4096, dtype=dt), [])

        for ba, bb in ((128, 128), (64, 64), (32, 32), (128, 32), (32, 128)):
            for m in DECODE_M:
                out.append(Case("armor_mm", "decode", f"M={m} bA={ba} bB={bb}", dname,
                                arm(m, ba, bb)))
            out.append(Case("armor_mm", "prefill", f"bA={ba} bB={bb}", dname,
                            arm(PREFILL_M, ba, bb)))

        def lb(m, dt=dt, T=2, r=256, n_out=4096, n_in=4096):
            st = [_e(T, n_out, r // 32, dtype=i32), _e(T, r, n_in // 32, dtype=i32),
                  _e(T, n_out, dtype=dt), _e(T, r, dtype=dt), _e(T, n_in, dtype=dt)]
            per_term = [[_e(n_out, r // 32, dtype=i32)] * T, [_e(r, n_in // 32, dtype=i32)] * T,
                        [_e(n_out, dtype=dt)] * T, [_e(r, dtype=dt)] * T, [_e(n_in, dtype=dt)] * T]
            return (_e(m, n_in, dtype=dt), *per_term, _e(n_out, dtype=dt), st)

        for m in DECODE_M:
            out.append(Case("littlebit_mm", "decode", f"M={m} r=256 x2 terms", dname, lb(m)))
        out.append(Case("littlebit_mm", "prefill", "r=256 x2 terms", dname, lb(PREFILL_M)))

        def mon(m, n_in, n_out, nb, dt=dt):
            s1, s2 = MonarchFactors.fly_shapes(n_in, n_out, nb)
            return (_e(m, n_in, dtype=dt), _e(*s1, dtype=dt), _e(*s2, dtype=dt), n_out,
                    _e(n_out, dtype=dt), [])

        for n_in, n_out, nb in ((4096, 4096, 4), (4096, 4096, 16), (4096, 4096, 64),
                                (4096, 11008, 4)):
            for m in DECODE_M:
                out.append(Case("monarch_mm", "decode", f"M={m} {n_out}x{n_in} nblocks={nb}",
                                dname, mon(m, n_in, n_out, nb)))
            out.append(Case("monarch_mm", "prefill", f"{n_out}x{n_in} nblocks={nb}", dname,
                            mon(PREFILL_M, n_in, n_out, nb)))

        def sp(m, dt=dt):
            return (_e(m, 4096, dtype=dt), _e(4096, 2048, dtype=dt), _e(4096, 256, dtype=i16),
                    _e(4096, dtype=dt), [])

        for m in DECODE_M:
            out.append(Case("sparse_mm", "decode", f"M={m} 4096x4096", dname, sp(m)))
        out.append(Case("sparse_mm", "prefill", "4096x4096", dname, sp(PREFILL_M)))
    return out


@dataclass
class Item:
    """One compiled launch of the audit: a case, one config of its space, and its Launch."""

    case: Case
    index: int          # position of the config in the space (0 = the default)
    config: dict
    launch: "_compile.Launch"

    def key(self) -> str:
        return self.launch.source_hash()


def refusals(selected: list[Case] | None = None) -> list[dict]:
    """The cases the ops' ``supports`` refuses, with the reason (nothing to compile)."""
    out = []
    for case in selected if selected is not None else cases():
        why = case.refused()
        if why is not None:
            out.append(dict(op=case.op, variant=case.variant, shape_class=case.shape_class,
                            dtype=case.dtype, refused=why))
    return out


def items(selected: list[Case] | None = None) -> list[Item]:
    """Bind every config of every case ``supports`` takes (nothing is compiled)."""
    out = []
    for case in selected if selected is not None else cases():
        if case.refused() is not None:
            continue
        with _compile.recording() as rec, force(case.variant, config=EACH) as runs:
            case.call()
        if len(rec) != len(runs):
            raise RuntimeError(f"{case.label}: {len(runs)} configs but {len(rec)} launches")
        out += [Item(case, i, dict(cfg), launch)
                for i, ((_, cfg, _), launch) in enumerate(zip(runs, rec))]
    return out


# ---- PTX and SASS checks ---------------------------------------------------------------------
_LABEL = re.compile(r"^\$?[A-Za-z_.$][\w.$]*:")
# Labels that only mark source positions for line info ($L__tmpN), never branch targets: they do
# not end a basic block.
_DEBUG_LABEL = re.compile(r"^\$L__tmp\d+:")


def release_fenced(ptx: str) -> bool | None:
    """True if every release atomic in ``ptx`` (a phase counter's signal) is preceded, within its
    basic block and after the block's last global store, by a CTA barrier (bar.sync); None if the
    kernel has no release. Without that barrier, the release publishes only the releasing
    thread's own stores, not the other warps' (PTX memory model: release is cumulative over what
    the thread has observed, and bar.sync is what makes the CTA's stores observed)."""
    lines = [ln.split("//")[0].strip() for ln in ptx.splitlines()]
    found = False
    for i, ln in enumerate(lines):
        if not (re.search(r"\b(atom|red)\.[\w.]*release", ln)):
            continue
        found = True
        ok = False
        for j in range(i - 1, -1, -1):
            prev = lines[j]
            if re.match(r"(bar|barrier)\.sync|bar\.sync|barrier\.sync", prev):
                ok = True
                break
            if _DEBUG_LABEL.match(prev):
                continue
            if re.match(r"st\.global|red\.global|atom\.global", prev) or _LABEL.match(prev) \
                    or prev.startswith(".entry") or prev == "{":
                break
        if not ok:
            return False
    return True if found else None


def wide_load_report(lines, marks: dict) -> tuple[int, list]:
    """(number of global loads on marked lines at least as wide as their mark, [(file, line,
    opcode)] of the narrower ones)."""
    wide, narrow = 0, []
    for f, n, op in _compile.global_loads(lines):
        if (f, n) not in marks:
            continue
        if _compile.load_bits(op) >= marks[(f, n)]:
            wide += 1
        else:
            narrow.append((f, n, op))
    return wide, narrow


_MARKS: dict | None = None


def _marks():
    """The marked lines of this package's sources, read once (the kernels were compiled from
    the sources as they were at import)."""
    global _MARKS
    if _MARKS is None:
        here = os.path.dirname(os.path.abspath(__file__))
        _MARKS = _compile.marked_lines([os.path.join(here, f) for f in sorted(os.listdir(here))
                                        if f.endswith(".py")])
    return _MARKS


def measure(launch, sass_lines: bool = True) -> dict:
    """Compile one Launch for sm_90a and measure it (runs in a worker process). Without
    ``sass_lines`` (prefill launches, whose load widths and local-memory instructions nothing
    checks) the SASS is not read by line: ``local_ops``, ``wide_loads`` and ``narrow_loads`` are
    None (spills still come from ptxas)."""
    import triton

    res = _compile.compile_launch(launch, with_text=False)
    k = triton.compile(launch.ast_source(), target=_compile.target(),
                       options=dict(launch.options))  # served from Triton's cache
    out = dict(shared=res.shared, regs=res.regs, stack=res.stack,
               spill_stores=res.spill_stores, spill_loads=res.spill_loads,
               local_ops=None, wide_loads=None, narrow_loads=None,
               release_fenced=release_fenced(k.asm["ptx"]))
    if sass_lines:
        lines = _compile.sass_with_lines(k.asm["cubin"])
        wide, narrow = wide_load_report(lines, _marks())
        out.update(local_ops=sum(1 for _, _, op in lines if op.startswith(("LDL", "STL"))),
                   wide_loads=wide, narrow_loads=[list(x) for x in narrow])
    return out


# Local runs keep each measured launch here, by its key (``Launch.source_hash``) and Triton's
# version, so that an interrupted or repeated full audit measures only what changed.
CACHE = os.environ.get("FACTORKERN_AUDIT_CACHE",
                       os.path.join(tempfile.gettempdir(), "factorkern-audit"))


def _cache_path(launch, sass_lines: bool) -> str:
    return os.path.join(CACHE, f"{launch.source_hash()}-{triton_version()}-"
                               f"{int(sass_lines)}.json")


def _measure_safe(job):
    launch, sass_lines, cached = job
    path = _cache_path(launch, sass_lines) if cached else None
    if path and os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    try:
        m = measure(launch, sass_lines)
    except Exception as e:  # reported in the table: a config that does not compile at all
        return dict(error=f"{type(e).__name__}: {str(e)[:300]}")
    if path:
        os.makedirs(CACHE, exist_ok=True)
        tmp = f"{path}.{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(m, f)
        os.replace(tmp, path)
    return m


def measure_all(launches: list, jobs: int, sass_lines=None, cached: bool = False) -> list[dict]:
    """Measure every launch (``sass_lines``: per launch, default all True); ``cached``: reuse
    and fill the local result cache (``CACHE``). Progress goes to stderr."""
    sass_lines = sass_lines if sass_lines is not None else [True] * len(launches)
    work = list(zip(launches, sass_lines, [cached] * len(launches)))
    out = []
    if jobs <= 1:
        results = map(_measure_safe, work)
        ex = None
    else:
        ex = concurrent.futures.ProcessPoolExecutor(jobs)
        results = ex.map(_measure_safe, work, chunksize=1)
    try:
        for i, m in enumerate(results, 1):
            out.append(m)
            if cached and (i % 10 == 0 or i == len(work)):
                print(f"audit: {i}/{len(work)} launches measured", file=sys.stderr, flush=True)
    finally:
        if ex is not None:
            ex.shutdown()
    return out


# ---- the table -------------------------------------------------------------------------------
TABLE = os.path.join("tests", "triton_audit.json")


def entry(item: Item, m: dict) -> dict:
    return dict(key=item.key(), op=item.case.op, variant=item.case.variant,
                shape_class=item.case.shape_class, dtype=item.case.dtype,
                kernel=item.launch.kernel, index=item.index, config=item.config, **m)


def triton_version() -> str:
    import triton

    return triton.__version__


def write_table(entries: list[dict], refused: list[dict], path: str) -> None:
    """One JSON document, one entry per line (diffs stay readable)."""
    head = dict(triton=triton_version(), target="sm_90a", shared_limit=_compile.H100_MAX_SHARED)

    def line(d):
        return json.dumps(d, sort_keys=True, separators=(",", ":"))

    with open(path, "w") as f:
        f.write("{\n")
        for k, v in head.items():
            f.write(f"{json.dumps(k)}: {json.dumps(v)},\n")
        for name, rows in (("refused", refused), ("entries", entries)):
            f.write(f"{json.dumps(name)}: [\n")
            f.write(",\n".join(line(r) for r in rows))
            f.write("\n]" + ("," if name == "refused" else "") + "\n")
        f.write("}\n")


def read_table(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def problems(entries: list[dict]) -> list[str]:
    """What the audit must not find (CI fails on any): faults that break a launch or its result.
    - a (op, variant, shape class, dtype) with no config that fits the H100's shared memory,
      or whose default config (the first: what runs under CUDA-graph capture before tuning)
      does not fit;
    - a config that fails to compile;
    - a phase-counter release not preceded by a CTA barrier.
    Costs in speed are ``findings``."""
    out = []
    groups: dict = {}
    for e in entries:
        groups.setdefault((e["op"], e["variant"], e["shape_class"], e["dtype"]), []).append(e)
        if "error" in e:
            out.append(f"{_where(e)}: does not compile: {e['error']}")
            continue
        if e["release_fenced"] is False:
            out.append(f"{_where(e)}: a phase-counter release without a CTA barrier before it")
    for g, es in groups.items():
        fits = [e for e in es if "error" not in e and e["shared"] <= _compile.H100_MAX_SHARED]
        if not fits:
            out.append(f"{' '.join(g)}: no config fits {_compile.H100_MAX_SHARED} B of shared "
                       "memory")
        default = [e for e in es if e["index"] == 0]
        if default and ("error" in default[0] or
                        default[0]["shared"] > _compile.H100_MAX_SHARED):
            out.append(f"{' '.join(g)}: the default config does not fit")
    return out


def findings(entries: list[dict]) -> list[str]:
    """What costs decode bandwidth without breaking anything: a decode config with spilled
    registers or local-memory instructions, or (fp16/bf16) a narrower-than-128-bit global load
    on a marked line. The reviewed ones are listed in ``FINDINGS`` (CI fails on any other) and
    on the docs page; each is work owed, and the GPU tuner may still pick such a config where it
    measures fastest."""
    out = []
    for e in entries:
        if "error" in e or e["variant"] != "decode":
            continue
        if e["spill_stores"] or e["spill_loads"] or e["local_ops"]:
            out.append(f"{_where(e)}: spills")
        if e["dtype"] in WIDE_DTYPES and e["narrow_loads"]:
            out.append(f"{_where(e)}: narrow loads")
    return out


def _where(e: dict) -> str:
    return f"{e['op']} {e['variant']} {e['shape_class']} {e['dtype']} config {e['index']}"


# The reviewed findings, one per line (``--write`` rewrites it from the table).
FINDINGS = os.path.join("tests", "triton_audit_findings.txt")


def read_findings(path: str = FINDINGS) -> list[str]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [ln.rstrip("\n") for ln in f if ln.strip() and not ln.startswith("#")]


def write_findings(entries: list[dict], path: str = FINDINGS) -> None:
    with open(path, "w") as f:
        f.write("# Decode configs that spill or load narrower than 128 bits (compile audit),\n"
                "# reviewed: CI fails on any finding not listed here. Written by --write.\n")
        for ln in findings(entries):
            f.write(ln + "\n")


# ---- docs ------------------------------------------------------------------------------------
DOC = os.path.join("docs", "triton_configs.md")


def _cfg_str(c: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in c.items() if k not in ("num_warps", "num_stages")) + \
        f" w{c.get('num_warps', '')}s{c.get('num_stages', '')}"


def _na(v) -> str:
    return "-" if v is None else str(v)


def render_doc(doc: dict) -> str:
    entries = doc["entries"]
    lim = doc["shared_limit"]
    lines = [
        "# What each Triton config costs on an H100 (compile audit)",
        "",
        "Generated by `python -m factorkern.triton_kernels._audit --full --write` "
        f"(Triton {doc['triton']}, target {doc['target']}; it compiles every launch and writes "
        "the table `tests/triton_audit.json` and this page; `--markdown` re-renders the page "
        "from the table alone); do not edit by hand. Every kernel x "
        "every config of its autotune space x fp16/bf16/fp32, for each shape class its launcher "
        "tells apart, compiled for sm_90a without a GPU through the launchers' own argument "
        "binding (Triton's specialization of the actual arguments included). "
        f"`tests/test_triton_audit.py` holds what is below.",
        "",
        f"- **Shared memory limit: {lim:,} bytes** per block: the H100 has 228 KB of shared "
        "memory per SM, of which one block may take at most 227 KB (232,448 bytes) of dynamic "
        "shared memory with the opt-in attribute Triton sets; 1 KB per block is reserved by the "
        "system. Triton raises OutOfResources at launch above it, and the tuner skips such a "
        "config. Every shape class keeps at least one config (and its default, the first) "
        "under it.",
        "- **Registers**: at most 255 per thread (64K per SM). **Spills**: bytes ptxas stores to "
        "and loads from local memory; decode kernels must have none (and no local-memory "
        "instruction in their SASS).",
        "- **Wide loads** (decode, fp16/bf16): global loads of weights, signs, metadata, "
        "activations and workspaces (source lines marked `# sass: 128`) must be 128 bits wide "
        "(`LDG.E.128`, or `LDGSTS.E.BYPASS.128` when Triton pipelines them through shared "
        "memory). Shapes with dims that are multiples of 16 (the representative shapes here) "
        "get them; odd dims get narrower loads (no 16-byte alignment).",
        "- Load widths and local-memory instructions are read from the SASS of the decode "
        "launches only (\"-\" for prefill, whose spills come from ptxas).",
        "- **Barrier**: every phase-counter release has a CTA barrier (`bar.sync`) before it in "
        "the PTX.",
        "",
        "## Summary per kernel, shape class and dtype",
        "",
        "| op | variant | shape class | dtype | configs | fit | smem min..max (B) | "
        "default: smem / regs / spill | max regs | max spill (B) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    groups: dict = {}
    for e in entries:
        groups.setdefault((e["op"], e["variant"], e["shape_class"], e["dtype"]), []).append(e)
    for g, es in groups.items():
        ok = [e for e in es if "error" not in e]
        fit = sum(1 for e in ok if e["shared"] <= lim)
        d = next((e for e in es if e["index"] == 0), None)
        dstr = "error" if d is None or "error" in d else \
            f"{d['shared']:,} / {d['regs']} / {d['spill_stores']}"
        smin = min((e["shared"] for e in ok), default=0)
        smax = max((e["shared"] for e in ok), default=0)
        lines.append(f"| {g[0]} | {g[1]} | {g[2]} | {g[3]} | {len(es)} | {fit} | "
                     f"{smin:,}..{smax:,} | {dstr} | {max((e['regs'] for e in ok), default=0)} "
                     f"| {max((e['spill_stores'] for e in ok), default=0)} |")
    if doc.get("refused"):
        lines += ["", "## Shape classes the kernels refuse", "",
                  "`supports` refuses these (the dispatcher says why; `backend=\"torch\"` "
                  "takes them):", "", "| op | variant | shape class | dtype | reason |",
                  "|---|---|---|---|---|"]
        for r in doc["refused"]:
            lines.append(f"| {r['op']} | {r['variant']} | {r['shape_class']} | {r['dtype']} | "
                         f"{r['refused']} |")
    found = findings(entries)
    if found:
        lines += ["", "## Findings: decode configs that cost bandwidth (owed work)", "",
                  "Spilled registers or narrow loads in these decode configs (reviewed, listed in "
                  "`tests/triton_audit_findings.txt`; CI fails on a new one). They compile and run "
                  "correctly; on a GPU the tuner still times them and keeps a clean config "
                  "where that is faster. fp32 decode reads twice the bytes of fp16/bf16 and is "
                  "not the bandwidth path.", ""]
        lines += [f"- {f}" for f in found]
    lines += ["", "## Every config", "",
              "| op | variant | shape class | dtype | # | config | smem (B) | fits H100 | regs | "
              "spill (B) | local ops | 128-bit / narrow marked loads | release fenced |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for e in entries:
        if "error" in e:
            lines.append(f"| {e['op']} | {e['variant']} | {e['shape_class']} | {e['dtype']} | "
                         f"{e['index']} | {_cfg_str(e['config'])} | error | no | | | | | |")
            continue
        fits = "yes" if e["shared"] <= lim else "**no**"
        loads = "-" if e["narrow_loads"] is None else \
            f"{e['wide_loads']} / {len(e['narrow_loads'])}"
        rel = {True: "yes", False: "**no**", None: "-"}[e["release_fenced"]]
        lines.append(f"| {e['op']} | {e['variant']} | {e['shape_class']} | {e['dtype']} | "
                     f"{e['index']} | {_cfg_str(e['config'])} | {e['shared']:,} | {fits} | "
                     f"{e['regs']} | {e['spill_stores']} | {_na(e['local_ops'])} | {loads} | "
                     f"{rel} |")
    return "\n".join(lines) + "\n"


def write_doc(doc: dict, path: str = DOC) -> None:
    """Write the docs page (``render_doc``) for the table ``doc``."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(render_doc(doc))


# ---- CLI -------------------------------------------------------------------------------------
def sample(all_items: list[Item], n: int) -> list[Item]:
    """The launches CI compiles fresh: the default config of each decode kernel in fp16 at
    M = 16, then in bf16 at M = 1 (their SASS and PTX are checked), up to n."""
    out = []
    for dtype, m_class in (("fp16", "M=16 "), ("bf16", "M=1 ")):
        seen = set()
        for it in all_items:
            c = it.case
            if (c.variant == "decode" and it.index == 0 and c.dtype == dtype
                    and c.shape_class.startswith(m_class) and it.launch.kernel not in seen):
                seen.add(it.launch.kernel)
                out.append(it)
    return out[:n]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m factorkern.triton_kernels._audit")
    ap.add_argument("--full", action="store_true", help="compile every launch")
    ap.add_argument("--write", action="store_true", help="write the table and the docs page")
    ap.add_argument("--check", action="store_true", help="CI: coverage + a fresh sample")
    ap.add_argument("--sample", type=int, default=8)
    ap.add_argument("--jobs", type=int, default=max(1, min(2, os.cpu_count() or 1)))
    ap.add_argument("--table", default=TABLE)
    ap.add_argument("--json", help="write the check report here")
    ap.add_argument("--only", help="regex on case labels (development)")
    ap.add_argument("--markdown", action="store_true",
                    help="only render the docs page from the committed table (no compiling)")
    a = ap.parse_args(argv)
    if a.markdown:
        write_doc(read_table(a.table))
        return 0
    why = _compile.available()
    if why:
        print(f"cannot audit here: {why}", file=sys.stderr)
        return 2
    selected = cases()
    if a.only:
        selected = [c for c in selected if re.search(a.only, c.label)]
    its = items(selected)
    if a.full:
        ms = measure_all([it.launch for it in its], a.jobs,
                         sass_lines=[it.case.variant == "decode" for it in its], cached=True)
        entries = [entry(it, m) for it, m in zip(its, ms)]
        refused = refusals(selected)
        for p in problems(entries):
            print("PROBLEM:", p)
        for p in findings(entries):
            print("finding:", p)
        if a.write:
            if a.only:
                # merge into the existing table
                old = read_table(a.table) if os.path.exists(a.table) else {}
                labels = {(c.op, c.variant, c.shape_class, c.dtype) for c in selected}

                def keep(e):
                    return (e["op"], e["variant"], e["shape_class"], e["dtype"]) not in labels

                order = {(c.op, c.variant, c.shape_class, c.dtype): i
                         for i, c in enumerate(cases())}

                def rank(e):
                    return (order.get((e["op"], e["variant"], e["shape_class"], e["dtype"]),
                                      1 << 30), e.get("index", 0))

                entries = sorted([e for e in old.get("entries", []) if keep(e)] + entries,
                                 key=rank)
                refused = sorted([e for e in old.get("refused", []) if keep(e)] + refused,
                                 key=rank)
            write_table(entries, refused, a.table)
            write_findings(entries)
            write_doc(read_table(a.table))
        else:
            for e in entries:
                print(json.dumps({k: v for k, v in e.items() if k != "key"}))
        return 0
    if a.check:
        table = read_table(a.table)
        by_key = {e["key"]: e for e in table["entries"]}
        missing = [it.case.label + f" config {it.index}" for it in its if it.key() not in by_key]
        # configs that fit the H100's shared memory, per shape class supports accepts (a class
        # whose launcher made no launch at all counts 0)
        fitting = {c.label: 0 for c in selected if c.refused() is None}
        for it in its:
            e = by_key.get(it.key())
            if e is not None and "error" not in e and e["shared"] <= _compile.H100_MAX_SHARED:
                fitting[it.case.label] += 1
        smp = sample(its, a.sample)
        fresh = measure_all([it.launch for it in smp], a.jobs)
        report = dict(
            triton=triton_version(), table_triton=table["triton"], n_items=len(its),
            n_cases=len(selected), n_table=len(table["entries"]), missing=missing,
            fitting=fitting,
            refused=[r["op"] + " " + r["variant"] + " " + r["shape_class"] + " " + r["dtype"]
                     for r in refusals(selected)],
            problems=problems([by_key[it.key()] for it in its if it.key() in by_key]),
            findings=findings([by_key[it.key()] for it in its if it.key() in by_key]),
            reviewed=read_findings(),
            sample=[dict(label=it.case.label, index=it.index, kernel=it.launch.kernel,
                         table=by_key.get(it.key()), fresh=m) for it, m in zip(smp, fresh)])
        text = json.dumps(report, indent=1)
        if a.json:
            with open(a.json, "w") as f:
                f.write(text)
        else:
            print(text)
        return 0
    ap.error("say --full or --check")
    return 2


if __name__ == "__main__":
    sys.exit(main())
