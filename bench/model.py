"""Static performance model of the decode kernels (M <= 16 tokens): what their compiled code can
sustain on an H100, predicted without a GPU. It is a model awaiting GPU measurements: every number
it prints is a prediction from the SASS and the constants below, none is a timing.

At decode a kernel's time is set by the bytes it reads. The model reads the SASS the build made
(``cuobjdump -sass`` of ``factorkern._C``; Triton's decode kernels compiled for sm_90a from the
current source, ``bench.model_triton``), finds each stage's hot loop (the innermost loop that
issues the factor loads) and takes from it

- the bytes in flight per lane: 16-byte factor loads issued before their first use (a walk
  through the loop in issue order, loads retire at the first instruction that reads them);
- the instructions per loop iteration (the issue cost), and per work item outside it;
- registers (``cuobjdump -res-usage``), hence resident CTAs and warps per SM.

With the tile parameters of the build (``factorkern._C.tiles()``: rows per lane group, chunks
per iteration) and the layer's shape it derives, per stage, the work items, the lanes each row
keeps busy, the warps active per SM, and then

- ``f_mem``, Little's law: bytes in flight per SM when every resident warp is busy (vector
  width x loads before first use x active lanes x resident warps), against the bytes in flight
  HBM needs to run at full speed (bandwidth x latency / SMs). The code's memory parallelism;
- ``f_issue``: the bandwidth the loop's instruction count allows (4 warp instructions per
  cycle per SM), against the bytes bound;
- ``t``: the predicted time of the call, stage by stage: the work items of a stage spread over
  the SMs, each SM's share bound by the issue rate (its instructions / 4 per cycle), by its share
  of HBM (its bytes / (3.35 TB/s / 132)) and by the chain of one warp's items (each loop
  iteration waits one latency for its loads, then issues its instructions), whichever is
  longest; plus the grid barriers;
- ``f_pred = t_bytes / t``: the predicted fraction of the bytes bound (t_bytes = unique bytes /
  3.35 TB/s), and the speedup over ``F.linear`` (its dense weight at ``DENSE_EFFICIENCY`` of
  the bytes bound, one latency of fill).

The constants (H100 SXM) are the model's assumptions, not measurements: HBM3 3.35 TB/s,
loaded latency 700 ns (600-800 ns), 132 SMs at 1.755 GHz, 4 schedulers issuing one warp
instruction per cycle each, a cooperative grid barrier of 1 us, F.linear at 90 % of the bytes
bound. ``python -m bench.model`` prints the table (``--markdown docs/perf_model.md`` writes the
page); tests/test_cuda_sass.py holds the kernels to it.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import re
import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass, field

# --- the machine (assumed, see the module docstring) ---------------------------------------------
HBM_BW = 3.35e12          # bytes / s
LATENCY_NS = 700.0        # loaded DRAM latency; the issue range is 600-800 ns
LATENCY_RANGE_NS = (600.0, 800.0)
SMS = 132
CLOCK_HZ = 1.755e9
ISSUE_PER_SM = 4          # warp instructions per cycle (4 schedulers)
REGS_PER_SM = 65536
MAX_WARPS_PER_SM = 64
GRID_SYNC_NS = 1000.0     # one cooperative grid barrier (assumed; to be measured)
DENSE_EFFICIENCY = 0.90   # F.linear (cuBLAS GEMV) as a fraction of the bytes bound (assumed)
THREADS = 256             # every decode kernel: 8 warps per CTA

# The kinds of decode kernels in factorkern._C and their stages in program order. A stage is
# (loop kind, what it reads its activations from); the kinds are those of factorkern._C.tiles().
CUDA_KERNELS = {
    "dense_sparse": ("sparse24", "dense"),
    "sparse_dense": ("dense", "sparse24"),
    "armor": ("dense", "sparse24", "dense"),
    "littlebit_exact": ("sign", "sign_terms"),
    "littlebit_popcount": ("popcount", "sign_terms"),
}
# Columns of one 16-byte chunk of a row, and 16-byte factor loads per chunk and row. "sign_terms"
# is LittleBit's stage 2, whose hot loop runs over the terms (one chunk of each per iteration).
CHUNK_COLS = {"sparse24": 128, "dense": 8, "sign": 128, "sign_terms": 128, "popcount": 128}
LOADS_PER_CHUNK = {"sparse24": 9, "dense": 1, "sign": 1, "sign_terms": 1, "popcount": 1}


# --- SASS ----------------------------------------------------------------------------------------
def cuda_tool(name: str) -> str | None:
    """cuobjdump / nvdisasm: the toolkit's, else the copy Triton ships."""
    found = shutil.which(name)
    if found:
        return found
    try:
        import triton
    except ImportError:
        return None
    p = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
    return p if os.path.exists(p) else None


_INS = re.compile(r"^\s+/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
_FUNC = re.compile(r"Function : (\S+)")


def parse_sass(text: str) -> dict[str, list[tuple[int, str]]]:
    """cuobjdump -sass text -> {function: [(address, instruction)]}."""
    funcs: dict[str, list] = {}
    cur = None
    for line in text.splitlines():
        m = _FUNC.search(line)
        if m:
            cur = funcs.setdefault(m.group(1), [])
            continue
        m = _INS.match(line)
        if m and cur is not None:
            cur.append((int(m.group(1), 16), m.group(2)))
    return funcs


def opcode(ins: str) -> str:
    return re.sub(r"^@!?U?P\w+\s+", "", ins).split()[0]


def is_weight_load(op: str) -> bool:
    """The factor loads: 16-byte, non-coherent, L1::no_allocate (ld_weight16 in device.cuh)."""
    return op.startswith("LDG") and ".NA." in op


def load_bytes(op: str) -> int:
    for w, b in ((".128", 16), (".64", 8), (".U16", 2), (".S16", 2), (".U8", 1), (".S8", 1)):
        if w in op:
            return b
    return 4


def loops(ins) -> list[tuple[int, int]]:
    """(first, last) instruction indices of every backward branch (a loop), in address order."""
    index = {a: i for i, (a, _) in enumerate(ins)}
    out = []
    for i, (a, t) in enumerate(ins):
        if opcode(t).startswith("BRA"):
            m = re.search(r"\b(0x[0-9a-f]+)\b", t)
            if m and int(m.group(1), 16) < a and int(m.group(1), 16) in index:
                j = index[int(m.group(1), 16)]
                if i - j > 4:  # not a self-loop (the trap at the end of every kernel)
                    out.append((j, i))
    return sorted(out)


def _inside(inner, outer):
    return inner != outer and outer[0] <= inner[0] and inner[1] <= outer[1]


def weight_loops(ins, all_loops=None) -> list[tuple[int, int]]:
    """The stages' hot loops: innermost loops that issue factor loads, in program order. (Loops
    the compiler emits for diverged warps hold no factor loads and are not counted.)"""
    all_loops = loops(ins) if all_loops is None else all_loops
    weight_at = [k for k, (_, t) in enumerate(ins) if ".NA." in t and is_weight_load(opcode(t))]
    with_w = [lp for lp in all_loops if any(lp[0] <= k <= lp[1] for k in weight_at)]
    return [lp for lp in with_w if not any(_inside(o, lp) for o in with_w)]


def bytes_in_flight(body) -> tuple[int, int]:
    """(peak bytes of factor loads outstanding per lane, loads issued before the first use),
    walking the loop body once in issue order. A load retires at the first instruction that
    reads one of its registers (and with it every load issued before it)."""
    out: list[tuple[set, int]] = []
    peak, before_first, first = 0, 0, None
    for _, t in body:
        t2 = re.sub(r"^@!?U?P\w+\s+", "", t)
        op = t2.split()[0]
        operands = [o.strip() for o in t2[len(op):].split(",")]
        srcs = operands if op.startswith(("ST", "RED", "ATOM")) else operands[1:]
        used = {int(m.group(1)) for s in srcs for m in re.finditer(r"\bR(\d+)", s)}
        hit = [k for k, (regs, _) in enumerate(out) if regs & used]
        if hit:
            if first is None:
                first = before_first
            out = out[max(hit) + 1:]
        if is_weight_load(op):
            m = re.match(r"R(\d+)", operands[0])
            nb = load_bytes(op)
            regs = set(range(int(m.group(1)), int(m.group(1)) + max(1, nb // 4))) if m else set()
            out.append((regs, nb))
            before_first += 1
        peak = max(peak, sum(b for _, b in out))
    return peak, (first if first is not None else before_first)


@dataclass
class LoopCode:
    """One stage's hot loop in the SASS."""

    instructions: int         # per iteration (inner runtime loops counted with their trips)
    static_instructions: int
    weight_loads: int         # 16-byte factor loads per iteration (per lane)
    inflight: int             # peak factor bytes outstanding per lane
    before_first_use: int     # factor loads issued before the first use
    epilogue: int             # instructions per work item outside the loop (reduction, stores)
    mix: Counter = field(default_factory=Counter, repr=False)
    narrow_loads: int = 0     # global loads narrower than 16 bytes inside the loop


def loop_code(ins, lp, inner_trips: int = 1, all_loops=None) -> LoopCode:
    j, i = lp
    body = ins[j:i + 1]
    n = len(body)
    dyn = n
    all_loops = loops(ins) if all_loops is None else all_loops
    for inner in all_loops:
        if _inside(inner, lp):
            dyn += (inner_trips - 1) * (inner[1] - inner[0] + 1)
    # The work-item loop: the smallest loop around this one; what it adds is per item.
    around = [o for o in all_loops if _inside(lp, o)]
    epi = 0
    if around:
        o = min(around, key=lambda x: x[1] - x[0])
        epi = (o[1] - o[0] + 1) - n
    ops = Counter(opcode(t) for _, t in body)
    peak, before = bytes_in_flight(body)
    narrow = sum(v for k, v in ops.items() if k.startswith("LDG") and load_bytes(k) < 16)
    return LoopCode(dyn, n, sum(v for k, v in ops.items() if is_weight_load(k)), peak, before,
                    epi, ops, narrow)


@dataclass
class KernelCode:
    name: str
    kind: str
    dtype: str
    nt: int
    regs: int
    stack: int
    local: int
    stages: list[LoopCode]
    mix: Counter = field(default_factory=Counter, repr=False)


_KERNEL = re.compile(r"(dense_sparse|sparse_dense|armor|littlebit_exact|littlebit_popcount)"
                     r"_kernelI(6__half|13__nv_bfloat16)Li(\d+)E")


def resource_usage(text: str) -> dict[str, dict[str, int]]:
    """cuobjdump -res-usage text -> {function: {"REG": .., "STACK": .., "LOCAL": .., ...}}."""
    out, cur = {}, None
    for line in text.splitlines():
        m = re.match(r"\s*Function (\S+):", line)
        if m:
            cur = m.group(1)
            continue
        if cur and "REG:" in line:
            out[cur] = {k: int(v) for k, v in re.findall(r"(\w+(?:\[\d+\])?):(\d+)", line)}
            cur = None
    return out


def _run(tool: str, *args) -> str:
    r = subprocess.run([tool, *args], capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"{os.path.basename(tool)} {' '.join(args)} failed: {r.stderr[-2000:]}")
    return r.stdout


@functools.lru_cache(maxsize=4)
def cuda_sass(path: str, arch: str = "sm_90a") -> tuple[dict, dict]:
    """(SASS per function, resource usage per function) of a binary holding the CUDA kernels."""
    tool = cuda_tool("cuobjdump")
    if tool is None:
        raise RuntimeError("cuobjdump not found (ships with triton: triton/backends/nvidia/bin)")
    return parse_sass(_run(tool, "-sass", "-arch", arch, path)), \
        resource_usage(_run(tool, "-res-usage", "-arch", arch, path))


def cuda_kernels(path: str | None = None, tiles: dict | None = None) -> dict[tuple, KernelCode]:
    """{(kind, dtype, nt): KernelCode} of every decode kernel in factorkern._C (or `path`)."""
    from factorkern import _C

    return _cuda_kernels(path or _C.__file__, _freeze(tiles or _C.tiles()))


def _freeze(d):
    return tuple(sorted((k, _freeze(v) if isinstance(v, dict) else v) for k, v in d.items()))


def _thaw(t):
    return {k: _thaw(v) if isinstance(v, tuple) and v and isinstance(v[0], tuple) else v
            for k, v in t}


@functools.lru_cache(maxsize=4)
def _cuda_kernels(path: str, frozen_tiles) -> dict[tuple, KernelCode]:
    tiles = _thaw(frozen_tiles)
    funcs, res = cuda_sass(path)
    out = {}
    for name, ins in funcs.items():
        m = _KERNEL.search(name)
        if not m:
            continue
        kind, nt = m.group(1), int(m.group(3))
        dtype = "fp16" if "half" in m.group(2) else "bf16"
        kinds = CUDA_KERNELS[kind]
        all_loops = loops(ins)
        lps = weight_loops(ins, all_loops)
        if len(lps) != len(kinds):
            raise RuntimeError(f"{name}: found {len(lps)} factor-load loops, expected "
                               f"{len(kinds)} stages {kinds}")
        stages = [loop_code(ins, lp, tiles[nt][k].get("q_trips", 1), all_loops)
                  for lp, k in zip(lps, kinds)]
        r = res.get(name, {})
        out[(kind, dtype, nt)] = KernelCode(name, kind, dtype, nt, r.get("REG", 0),
                                            r.get("STACK", 0), r.get("LOCAL", 0), stages,
                                            Counter(opcode(t) for _, t in ins))
    return out


# --- shapes ----------------------------------------------------------------------------------------
@dataclass
class Stage:
    """One stage of a call: `rows` rows reducing over `cols` columns of a factor of `kind`."""

    kind: str
    rows: int
    cols: int
    factor_bytes: int
    repeat: int = 1  # times the hot loop runs per work item (LittleBit stage 2: once per term)


def littlebit_rank_for_bits(out_f: int, in_f: int, bits_per_weight: float, terms: int = 2) -> int:
    """Rank per term that spends `bits_per_weight` (signs: r (in + out) bits per term; scales h,
    l, g in 16 bits)."""
    budget = bits_per_weight * out_f * in_f / terms - 16 * (out_f + in_f)
    return max(1, int(budget // (out_f + in_f + 16)))


def stages_of(op: str, out_f: int, in_f: int, **size) -> list[Stage]:
    """The stages of one decode call and the factor bytes each reads."""
    if op == "dense_sparse":
        k = size["k"]
        return [Stage("sparse24", k, in_f, k * in_f * 9 // 8), Stage("dense", out_f, k, 2 * out_f * k)]
    if op == "sparse_dense":
        k = size["k"]
        return [Stage("dense", k, in_f, 2 * k * in_f), Stage("sparse24", out_f, k, out_f * k * 9 // 8)]
    if op == "armor":
        ba, bb = size.get("block_a", 128), size.get("block_b", 128)
        return [Stage("dense", in_f, bb, 2 * in_f * bb), Stage("sparse24", out_f, in_f, out_f * in_f * 9 // 8),
                Stage("dense", out_f, ba, 2 * out_f * ba)]
    if op in ("littlebit_exact", "littlebit_popcount"):
        r, terms = size["rank"], size.get("terms", 2)
        rpad = 128 * -(-r // 128)
        first = "sign" if op == "littlebit_exact" else "popcount"
        # Stage 1, the rows of all terms together: V (r, in / 32 words) plus g; stage 2: U (out,
        # rpad / 32 words) plus h and l, its loop once per term.
        return [Stage(first, terms * rpad, in_f, terms * (r * in_f // 8 + 2 * in_f)),
                Stage("sign_terms", out_f, rpad, terms * (out_f * rpad // 8 + 2 * out_f + 2 * r),
                      repeat=terms)]
    raise ValueError(f"unknown decode op {op!r}")


def kernel_stages(op: str, stages: list[Stage], kernel: KernelCode):
    """Pair each Stage with the SASS loop that runs it."""
    return list(zip(stages, kernel.stages))


# --- the prediction --------------------------------------------------------------------------------
def resident_ctas(regs: int, threads: int = THREADS) -> int:
    """CTAs per SM the registers allow (allocation in units of 8 registers per thread)."""
    per_thread = max(8, -(-regs // 8) * 8)
    return max(1, min(REGS_PER_SM // (per_thread * threads), MAX_WARPS_PER_SM // (threads // 32)))


@dataclass
class StagePrediction:
    stage: Stage
    items: int
    lanes: int            # lanes per row group
    lane_use: float       # fraction of lanes with a chunk, averaged over the iterations
    warps_per_sm: float   # active warps per SM
    f_mem: float
    f_issue: float
    seconds: float


@dataclass
class Prediction:
    op: str
    nt: int
    shape: tuple
    size: dict
    bytes: int
    t_bytes: float
    t: float
    f_pred: float
    f_mem: float
    f_issue: float
    speedup_vs_dense: float
    stages: list[StagePrediction]
    regs: int


def predict(op: str, kernel: KernelCode, tiles: dict, out_f: int, in_f: int, n: int | None = None,
            latency_ns: float = LATENCY_NS, **size) -> Prediction:
    """The model for one call of the decode kernel `kernel` (bucket kernel.nt) with n tokens
    (default: the bucket's size)."""
    n = n or kernel.nt
    nt = kernel.nt
    lat = latency_ns * 1e-9 * CLOCK_HZ  # cycles
    bw_sm = HBM_BW / SMS / CLOCK_HZ     # bytes per cycle per SM at the bytes bound
    need_inflight = HBM_BW * latency_ns * 1e-9 / SMS
    ctas_sm = resident_ctas(kernel.regs)
    stages = stages_of(op, out_f, in_f, **size)
    paired = kernel_stages(op, stages, kernel)
    tile = tiles[nt]

    items_all = []
    geo = []
    for st, code in paired:
        t = tile[st.kind]
        chunks = st.cols // CHUNK_COLS[st.kind]
        lanes = _lanes(chunks, st.rows, t["rows"])
        rows_item = (32 // lanes) * t["rows"]
        items = -(-st.rows // rows_item)
        per_iter = 1 if st.kind in ("sparse24", "sign_terms") else t["unroll"]
        iters = -(-chunks // (lanes * per_iter))
        use = chunks / (iters * lanes * per_iter)
        items_all.append(items)
        geo.append((chunks, lanes, items, iters, use))
    grid = min(max(-(-max(items_all) // (THREADS // 32)), SMS), ctas_sm * SMS)
    grid_warps = grid * THREADS // 32
    sms_used = min(SMS, grid)

    preds, total_bytes_stage = [], 0
    t_total = 0.0
    mem_num = mem_den = iss_num = 0.0
    for (st, code), (chunks, lanes, items, iters, use) in zip(paired, geo):
        active = min(items, grid_warps)
        rounds = -(-items // grid_warps)
        w = min(ctas_sm * THREADS // 32, -(-active // sms_used))
        lane_bytes = code.weight_loads * 16 * use       # factor bytes per lane and iteration
        warp_bytes = 32 * lane_bytes
        ins = code.instructions * _token_share(n, nt)
        # Little's law at full residency: bytes in flight per SM vs what HBM needs.
        inflight_sm = code.inflight * use * 32 * ctas_sm * THREADS // 32
        f_mem = min(1.0, inflight_sm / need_inflight)
        f_issue = min(1.0, ISSUE_PER_SM * warp_bytes / ins / bw_sm)
        # The stage on one SM: the work of items / SMs warp items, bound by the issue rate, by
        # its share of HBM, and by the chain of one warp's items (each iteration waits for its
        # loads, then runs its instructions; other warps hide that only when there are some).
        per_sm = items / sms_used
        iter_ins = st.repeat * iters * ins
        issue = per_sm * (iter_ins + code.epilogue) / ISSUE_PER_SM
        memory = per_sm * st.repeat * iters * warp_bytes / bw_sm
        chain = rounds * (st.repeat * iters * (lat + ins) + code.epilogue)
        seconds = max(issue, memory, chain) / CLOCK_HZ
        preds.append(StagePrediction(st, items, lanes, use, w, f_mem, f_issue, seconds))
        t_total += seconds
        mem_num += f_mem * st.factor_bytes
        iss_num += f_issue * st.factor_bytes
        mem_den += st.factor_bytes
        total_bytes_stage += st.factor_bytes
    if op == "littlebit_popcount":
        # Stage 0 (quantize x * g per token and term): two passes over x and g per CTA, each at
        # least one latency; small next to the rest, and not a factor-load loop.
        t_total += 2 * latency_ns * 1e-9
    barriers = (3 if op == "armor" else 2 if op == "littlebit_popcount" else 1)
    t_total += barriers * GRID_SYNC_NS * 1e-9
    io = 2 * n * (in_f + out_f) + 2 * out_f  # x, y, bias
    nbytes = total_bytes_stage + io
    t_bytes = nbytes / HBM_BW
    t_dense = (2 * out_f * in_f + io) / (HBM_BW * DENSE_EFFICIENCY) + latency_ns * 1e-9
    return Prediction(op, nt, (out_f, in_f), size, nbytes, t_bytes, t_total, t_bytes / t_total,
                      mem_num / mem_den, iss_num / mem_den, t_dense / t_total, preds, kernel.regs)


def _lanes(chunks: int, rows: int, k_rows: int) -> int:
    from factorkern import _C

    return _C.lanes_per_row(chunks, rows, k_rows)


def _token_share(n: int, nt: int) -> float:
    """Share of a full bucket's loop instructions a call with n tokens runs (token blocks of 4
    past n are skipped; the rest of the loop is per token block)."""
    if nt <= 4:
        return 1.0
    return max(0.25, -(-n // 4) * 4 / nt)


# --- the table ------------------------------------------------------------------------------------
def llama_cases() -> list[tuple[str, int, int, dict]]:
    """(op, out, in, sizes) at the Llama shapes, with the benchmark's default factor sizes
    (bench.cases: k = in / 2, ARMOR blocks 128, LittleBit r = 256 x 2 terms), plus LittleBit at
    0.1 bits per weight on the 70B MLP shapes (the issue's 10x target)."""
    from .cases import FactorSizes, _size
    from .shapes import MODELS

    fs = FactorSizes()
    cases = []
    for model in ("llama2-7b", "llama3-8b"):
        for s in MODELS[model]:
            if s.out < 2048:
                continue  # the 1024-wide k/v projection: too small to say much at decode
            k = _size(fs.ds_k, s.inp, 128)
            cases.append(("dense_sparse", s.out, s.inp, {"k": k}))
            cases.append(("sparse_dense", s.out, s.inp, {"k": k}))
            cases.append(("armor", s.out, s.inp, {"block_a": 128, "block_b": 128}))
            for lb in ("littlebit_exact", "littlebit_popcount"):
                cases.append((lb, s.out, s.inp, {"rank": fs.littlebit_rank,
                                                  "terms": fs.littlebit_terms}))
    for out_f, in_f in ((28672, 8192), (8192, 28672)):
        r = littlebit_rank_for_bits(out_f, in_f, 0.1)
        for lb in ("littlebit_exact", "littlebit_popcount"):
            cases.append((lb, out_f, in_f, {"rank": r, "terms": 2, "bpw": 0.1}))
    seen, uniq = set(), []
    for c in cases:
        key = (c[0], c[1], c[2], tuple(sorted(c[3].items())))
        if key not in seen:
            seen.add(key)
            uniq.append(c)
    return uniq


def cuda_table(dtype: str = "bf16") -> list[Prediction]:
    from factorkern import _C

    tiles = _C.tiles()
    kernels = cuda_kernels(tiles=tiles)
    out = []
    for op, out_f, in_f, size in llama_cases():
        sz = {k: v for k, v in size.items() if k != "bpw"}
        for nt in (1, 4, 16):
            k = kernels[(op, dtype, nt)]
            p = predict(op, k, tiles, out_f, in_f, **sz)
            p.size = size
            out.append(p)
    return out


def _size_label(size: dict) -> str:
    if "k" in size:
        return f"k={size['k']}"
    if "block_a" in size:
        return f"blk={size['block_a']}"
    if "bpw" in size:
        return f"r={size['rank']}x{size['terms']} ({size['bpw']} b/w)"
    return f"r={size['rank']}x{size['terms']}"


def markdown(preds: list[Prediction], triton_rows: list | None = None,
             triton_note: str = "") -> str:
    lines = [
        "# Decode kernels: the static performance model",
        "",
        "**This is a model awaiting GPU measurements.** Every number below is a prediction made "
        "without a GPU from the compiled SASS (sm_90a) and assumed H100 constants; none is a "
        "timing. `python -m bench.model --markdown docs/perf_model.md` regenerates this page from "
        "the current build; `tests/test_cuda_sass.py` holds the kernels to it in CI. Compare with "
        "`python -m bench.sweep` as soon as a GPU gives measurements, and correct the constants "
        "where they disagree.",
        "",
        "## What it computes",
        "",
        "Per kernel, token bucket (NT = 1, 4, 16: the compiled variants; a call with n tokens runs "
        "the smallest bucket >= n) and layer shape:",
        "",
        "- **bytes**: unique bytes a call reads and writes (factors, x, y, bias); "
        "**t_bytes** = bytes / 3.35 TB/s, the bytes bound.",
        "- **f_mem** (Little's law): bytes of factor loads in flight per SM when every resident "
        "warp is busy (16-byte loads issued before their first use, read from the SASS, x active "
        "lanes x resident warps), over the bytes in flight HBM needs (3.35 TB/s x 700 ns / 132 "
        "SMs = 17.8 KB). Below 1 the code cannot keep HBM busy even with all the work in the "
        "world.",
        "- **f_issue**: the bandwidth the hot loop's instruction count allows (4 warp "
        "instructions per cycle per SM at 1.755 GHz), over 3.35 TB/s. Below 1 the kernel is "
        "bound by issuing instructions, not by bytes.",
        "- **t** and **f_pred = t_bytes / t**: the predicted time of the call and the predicted "
        "fraction of the bytes bound. Stage by stage, each SM's share of the work items is bound "
        "by the issue rate (its loop and reduction instructions / 4 per cycle), by its share of "
        "HBM (its bytes at 3.35 TB/s / 132), and by the chain of one warp's items "
        "(each loop iteration waits one DRAM latency for its loads, then issues its "
        "instructions), whichever is longest; plus 1 us per grid barrier. Small stages are "
        "latency-bound: a stage costs at least one DRAM round trip whatever its size.",
        "- **vs F.linear**: predicted speedup over the dense layer read at 90 % of 3.35 TB/s.",
        "",
        "Assumptions (H100 SXM, to be replaced by measurements): HBM3 3.35 TB/s, loaded "
        f"latency {LATENCY_NS:.0f} ns (f_mem is also given at 800 ns), 132 SMs, 1.755 GHz, one "
        "warp instruction per scheduler per cycle, 1 us per cooperative grid barrier, no L2 "
        "reuse of factors between calls.",
        "",
        "## CUDA decode kernels (factorkern._C, bf16)",
        "",
        "| kernel | shape (out x in) | factors | NT | regs | MB | t_bytes us | t us | f_pred | "
        "f_mem (800 ns) | f_issue | vs F.linear |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in preds:
        lines.append(
            f"| {p.op} | {p.shape[0]}x{p.shape[1]} | {_size_label(p.size)} | {p.nt} | {p.regs} | "
            f"{p.bytes / 1e6:.1f} | {p.t_bytes * 1e6:.2f} | {p.t * 1e6:.2f} | {p.f_pred:.2f} | "
            f"{p.f_mem:.2f} ({getattr(p, 'f_mem_800', p.f_mem):.2f}) | {p.f_issue:.2f} | "
            f"{p.speedup_vs_dense:.1f}x |")
    lines += ["", "Per stage (same order as the kernel's stages; LittleBit stage 1 once per term): "
              "items = warp work items, lanes = lanes per row group, use = lanes with work, W = "
              "warps active per SM.", "",
              "| kernel | shape | NT | stage | rows x cols | items | lanes | use | W | f_mem | "
              "f_issue | us |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in preds:
        if p.shape not in ((4096, 4096), (11008, 4096), (8192, 28672)):
            continue
        for i, s in enumerate(p.stages):
            lines.append(
                f"| {p.op} | {p.shape[0]}x{p.shape[1]} | {p.nt} | {i + 1} {s.stage.kind} | "
                f"{s.stage.rows}x{s.stage.cols} | {s.items} | {s.lanes} | {s.lane_use:.2f} | "
                f"{s.warps_per_sm:.0f} | {s.f_mem:.2f} | {s.f_issue:.2f} | {s.seconds * 1e6:.2f} |")
    lines += ["", *CHOICES.strip("\n").split("\n")]
    if triton_rows is not None:
        lines += ["", "## Triton decode kernels (triton_kernels, compiled for sm_90a)", "",
                  triton_note, ""]
        lines += triton_rows
    return "\n".join(lines) + "\n"


CHOICES = """
## What the model decided, and what it says is left

The tile parameters (csrc/common/tiles.h) were chosen with this model, each against the
alternative it rejected:

- **2:4 stage**: 2 rows per lane group at 4 and 16 tokens (4 rows spilled), 4 of the 8 value
  loads of a 128-column chunk issued together (all 8 with 4 rows needed ~250 registers); at one
  token 4 rows, which keeps 400-500 bytes of factor loads in flight per lane. Groups expanded to
  4 dense weights once per row at NT >= 4 (4 FMAs per token) instead of selecting activations per
  token (8 instructions per group and token).
- **lane groups**: the lanes per row are the largest power of two that keeps >= 90 % of the lanes
  busy: sparse_dense's second stage at k = 2048 (16 chunks) and the ARMOR block stages
  (block 128: 16 chunks) use 16-lane groups, LittleBit stage 2 at r = 256 two lanes, at r = 300
  one; before, 16 of 32, 16 of 32 and 4 of 32 lanes idled.
- **LittleBit**: signs applied as FFMA with +-1 (or +-h in stage 2) built once per row and column;
  stage 1 spreads the rows of all terms over the grid at once (it ran term after term, one warp per
  SM); stage 2 loads the next term's chunk before using the current one (one memory latency per
  term before); 4 rows per lane group at every token count (f_mem 0.46 with 2 rows at 16 tokens);
  the grid has at least one CTA per SM (a small stage used 24 SMs).
- **instruction cache**: loops over the 4 words of a sign or popcount chunk stay runtime loops
  at 4 and 16 tokens (unrolled, a chunk's body was 10k-40k instructions).

What it says is left for the GPU work (see csrc/README.md, GPU checks owed):

- **16 tokens** (every kernel): bound by FP32 instruction issue, 0.3-0.8 of the bytes rate (a
  kept 2:4 value costs 4 FMAs per token, a dense weight 1, plus conversions); the way out is
  `mma.sync` with the tokens as the M = 16 side.
- **ARMOR**: the two block-diagonal stages (1 MB each at 4096) are latency-bound (one DRAM round
  trip plus a barrier each), which keeps the call at 0.6-0.8 of the bytes bound.
- **LittleBit**: bound by instructions (about 3 per sign and token on CUDA cores, 0.75 on the
  popcount path) and by latency (its factors are 1-4 MB: a few microseconds of fixed cost dominate
  a bytes bound of 0.2-1.4 us). Its targets are speedups over F.linear, predicted in the table.
- **1 us per grid barrier** is an assumption; measure it first, it decides how close the 2:4
  kernels come at 1-4 tokens.
"""


def _with_800(preds: list[Prediction], kernels, tiles) -> None:
    for p in preds:
        k = kernels[(p.op, "bf16", p.nt)]
        sz = {a: b for a, b in p.size.items() if a != "bpw"}
        p.f_mem_800 = predict(p.op, k, tiles, *p.shape, latency_ns=800.0, **sz).f_mem


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--markdown", help="write the page (e.g. docs/perf_model.md)")
    ap.add_argument("--no-triton", action="store_true", help="only the CUDA kernels")
    args = ap.parse_args(argv)
    from factorkern import _C

    tiles = _C.tiles()
    kernels = cuda_kernels(tiles=tiles)
    preds = cuda_table()
    _with_800(preds, kernels, tiles)
    rows, note = None, ""
    if not args.no_triton:
        from . import model_triton

        rows, note = model_triton.table_rows()
    text = markdown(preds, rows, note)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text)
    print(text)


if __name__ == "__main__":
    main()
