"""``python -m bench.sweep``: every op x shape x M x dtype x backend, with the baselines a user
would pick, timed in the same process (run from the repository root).

    python -m bench.sweep                                   # everything (GPU), markdown on stdout
    python -m bench.sweep --quick                           # llama2-7b, M 1/16/2048, bf16
    python -m bench.sweep --ops monarch_mm --shape 4096x4096 --m 1,2048 --json out.json
    python -m bench.sweep --json bench/results_h100.json --plot bench/speedup_h100.png

Rows: every available factorkern backend (``fk:torch`` = the library path, the fastest composite
of library calls in the input dtype, ``fk:triton``, ``fk:cuda``, ``fk:cuda_sm90``; unverified
kernels are benchmarked too, by name; the row ``auto`` takes here is marked "(auto)", see
``bench.auto``, and on a GPU the kernel rows are added to the device's verification record) and
the
baselines of ``bench.baselines`` (dense, composite, torch-2:4, fly-bmm). Columns: median ms
(L2-cold, see ``bench.timing``) with its 20-80% spread, useful TFLOP/s and minimum-bytes GB/s
(``bench.roofline``), percent of the roofline floor (ceilings measured once per device and
cached), speedup vs dense ``F.linear`` and vs the fastest other baseline, compression (dense
weight bytes / factor bytes), and the relative Frobenius error against the float64 reference
(rows past the tolerance are marked WRONG: a fast wrong kernel is not a result). A backend or
baseline that raises becomes an error cell, never a crash.

Without a GPU the sweep times the CPU reference and the CPU baselines at small sizes (``--quick``
is the default there; ``--full`` overrides), says GPU numbers need a GPU, and exits 0.
``--plot`` needs matplotlib (``pip install matplotlib``, or the ``bench`` extra); without it the
sweep says so at the start and the end, writes the table and the JSON anyway, and still exits 0:
the plot is a view of the JSON, which can be plotted later.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time

from . import measure

ROW_KEYS = ("op", "config", "variant", "shape", "model", "layer", "M", "dtype", "backend", "kind",
            "ms", "ms_p20", "ms_p80", "samples", "timer", "rotations", "tflops", "gbps",
            "roofline_pct", "speedup_vs_dense", "speedup_vs_best_baseline", "best_baseline",
            "compression", "flops", "bytes", "factor_bytes", "rel_err", "ok", "error", "note",
            "device", "peak_tflops", "peak_gbps", "commit", "torch", "auto", "shape_class")

_DTYPES = {"bf16": "bfloat16", "bfloat16": "bfloat16", "fp16": "float16", "float16": "float16",
           "half": "float16", "fp32": "float32", "float32": "float32", "float": "float32"}


def _csv(text):
    return [t.strip() for t in text.split(",") if t.strip()]


def _number(text):
    v = float(text)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return v


def parse_args(argv=None):
    from .cases import FactorSizes

    d = FactorSizes()
    p = argparse.ArgumentParser(prog="python -m bench.sweep", description=(
        "Benchmark factorkern's ops against dense F.linear and the torch baselines."))
    p.add_argument("--ops", type=_csv, default=None,
                   help="comma list of ops (default all): sparse_mm, dense_sparse_mm, sparse_dense_mm, "
                        "armor_mm, littlebit_mm, monarch_mm, lowrank_mm (the _mm may be left out)")
    p.add_argument("--backends", type=_csv, default=None,
                   help="comma list among torch, triton, cuda, cuda_sm90 (factorkern) and dense, "
                        "composite, "
                        "torch-2:4, fly-bmm (baselines); default: every available factorkern "
                        "backend (only torch on the CPU) and every baseline; a backend with "
                        "LittleBit's opt-in popcount kernel also gets a <backend>:popcount row")
    p.add_argument("--shapes", type=_csv, default=None,
                   help="named model shapes: llama2-7b, llama3-8b, bert-base (default all three)")
    p.add_argument("--shape", action="append", default=[], metavar="OUTxIN",
                   help="a layer shape W (out, in), e.g. 4096x11008; repeatable; replaces the "
                        "named shapes unless --shapes is given too")
    p.add_argument("--m", type=_csv, default=None,
                   help="comma list of M (tokens), default 1,16,128,2048,8192")
    p.add_argument("--dtype", type=_csv, default=None,
                   help="comma list among bf16, fp16, fp32 (default bf16 on a GPU, fp32 on the "
                        "CPU)")
    p.add_argument("--quick", action="store_true",
                   help="small sweep: llama2-7b shapes, M 1,16,2048 (GPU); bert-base, M 1,16 (CPU, "
                        "the default there)")
    p.add_argument("--full", action="store_true", help="on the CPU, do not default to --quick")
    p.add_argument("--json", metavar="FILE", help="write the rows as a JSON list")
    p.add_argument("--plot", metavar="FILE.png", help="speedup vs M per op, one panel per shape")
    p.add_argument("--from-json", type=_csv, default=None, metavar="FILE[,FILE...]",
                   help="run nothing: render the table (and --json, --plot) from saved rows, "
                        "e.g. to merge a sweep split by --shapes")
    g = p.add_argument_group("factor sizes (defaults from the papers)")
    g.add_argument("--ds-k", type=_number, default=d.ds_k,
                   help="dense-sparse inner size k: a fraction of in (<= 1) or a size (default "
                        "0.5 = in/2, DSFormer)")
    g.add_argument("--armor-block", type=int, default=d.armor_block,
                   help="ARMOR block size of A and B (default 128)")
    g.add_argument("--littlebit-r", type=int, default=d.littlebit_rank,
                   help="LittleBit rank (default 256)")
    g.add_argument("--littlebit-terms", type=int, default=d.littlebit_terms,
                   help="LittleBit terms: 2 = main + residual path (default), 1 = main only")
    g.add_argument("--monarch-nblocks", type=_csv, default=list(d.monarch_nblocks),
                   help="comma list of Monarch nblocks, integers or 'sqrt' (default 4,sqrt)")
    g.add_argument("--lowrank-r", type=_number, default=d.lowrank_r,
                   help="low-rank r: a fraction of in (<= 1) or a rank (default 0.25 = in/4)")
    t = p.add_argument_group("timing")
    t.add_argument("--warmup-ms", type=float, default=None, help="warm-up time per row")
    t.add_argument("--rep-ms", type=float, default=None, help="measuring time per row")
    t.add_argument("--no-graph", action="store_true",
                   help="time eager launches (includes Python and launch overhead) instead of "
                        "CUDA-graph replays")
    t.add_argument("--l2-factor", type=float, default=2.0,
                   help="rotate input copies totalling this many times the L2 size (default 2)")
    t.add_argument("--remeasure-peaks", action="store_true",
                   help="measure the device's bandwidth and matmul rate again (else cached)")
    t.add_argument("--cache-dir", default=None,
                   help="where the measured peaks are cached (default ~/.cache/factorkern, or "
                        "$FACTORKERN_CACHE_DIR)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--no-check", action="store_true",
                   help="skip the error check of every row against the float64 reference")
    t.add_argument("--no-record", action="store_true",
                   help="do not add the kernel rows to this GPU's verification record")
    pr = p.add_mutually_exclusive_group()
    pr.add_argument("--progress", action="store_true", default=None,
                    help="progress counter on stderr (default: when stderr is a terminal)")
    pr.add_argument("--no-progress", dest="progress", action="store_false")
    return p.parse_args(argv)


class Progress:
    """A plain stderr counter (no tqdm dependency)."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.done, self.enabled = total, 0, enabled
        self.t0 = time.perf_counter()
        self.tty = sys.stderr.isatty()

    def step(self, what: str):
        self.done += 1
        if not self.enabled:
            return
        el = time.perf_counter() - self.t0
        msg = f"[{self.done}/{self.total}] {el:6.1f}s {what}"
        if self.tty:
            sys.stderr.write("\r\033[K" + msg[:150])
        else:
            sys.stderr.write(msg + "\n")
        sys.stderr.flush()

    def close(self):
        if self.enabled and self.tty:
            sys.stderr.write("\n")


def _commit() -> str:
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except Exception:
        return "unknown"


def _resolve_ops(names):
    from .roofline import OPS

    if names is None:
        return list(OPS)
    out = []
    for n in names:
        key = n if n.endswith("_mm") else n + "_mm"
        if key not in OPS:
            raise SystemExit(f"bench.sweep: unknown op {n!r}; ops are {', '.join(OPS)}")
        out.append(key)
    return out


def _resolve_backends(names, on_gpu):
    """(factorkern backends, baselines, explicitly asked)."""
    from . import baselines as bl

    if names is None:
        return (list(measure.FK_BACKENDS) if on_gpu else ["torch"]), list(bl.NAMES), False
    fk_b, base = [], []
    for n in names:
        key = n[3:] if n.startswith("fk:") else n
        key = bl.ALIASES.get(key, key)
        if key in measure.FK_BACKENDS:
            fk_b.append(key)
        elif key in bl.NAMES:
            base.append(key)
        else:
            raise SystemExit(f"bench.sweep: unknown backend {n!r}; factorkern: "
                             f"{', '.join(measure.FK_BACKENDS)}; baselines: {', '.join(bl.NAMES)}")
    return fk_b, base, True


def run(args, out=None) -> list[dict]:
    import torch

    from . import auto
    from . import baselines as bl
    from . import cases as cs
    from . import report, roofline
    from .shapes import M_FULL, M_QUICK_CPU, M_QUICK_GPU, model_shapes, parse_shape
    on_gpu = torch.cuda.is_available()
    device = torch.device("cuda" if on_gpu else "cpu")
    quick = args.quick or (not on_gpu and not args.full)

    ops = _resolve_ops(args.ops)
    fk_backends, base_names, explicit = _resolve_backends(args.backends, on_gpu)
    if args.shape:
        shapes = [parse_shape(s) for s in args.shape]
        if args.shapes:
            shapes = model_shapes(args.shapes) + shapes
    else:
        names = args.shapes or (["llama2-7b"] if quick and on_gpu else
                                ["bert-base"] if quick else ["llama2-7b", "llama3-8b",
                                                             "bert-base"])
        shapes = model_shapes(names)
    ms = [int(m) for m in args.m] if args.m else list(
        M_FULL if not quick else M_QUICK_GPU if on_gpu else M_QUICK_CPU)
    if any(m <= 0 for m in ms):
        raise SystemExit("bench.sweep: --m values must be positive")
    dnames = [_DTYPES.get(d.lower()) for d in (args.dtype or (["bf16"] if on_gpu else ["fp32"]))]
    if None in dnames:
        raise SystemExit(f"bench.sweep: --dtype takes bf16, fp16, fp32; got {args.dtype}")
    dtypes = [getattr(torch, n) for n in dict.fromkeys(dnames)]
    warmup_ms = args.warmup_ms if args.warmup_ms is not None else (5 if quick else 10)
    rep_ms = args.rep_ms if args.rep_ms is not None else (
        (20 if on_gpu else 10) if quick else 50)
    fs = cs.FactorSizes(ds_k=args.ds_k, armor_block=args.armor_block,
                        littlebit_rank=args.littlebit_r, littlebit_terms=args.littlebit_terms,
                        monarch_nblocks=tuple(args.monarch_nblocks), lowrank_r=args.lowrank_r)

    if args.plot and not report.have_matplotlib():
        print("bench.sweep: --plot needs matplotlib (pip install matplotlib); the sweep runs "
              "and writes the table/JSON, but no plot", file=sys.stderr)

    import factorkern as fk

    info = fk.backends()
    notes = []
    for b in fk_backends:
        if b != "torch" and not info[b]["available"]:
            notes.append(f"fk:{b} not benchmarked: {info[b]['reason']}")
    if not on_gpu:
        notes.append("GPU numbers need a GPU: no CUDA device here, so this run timed the CPU "
                     "reference and the CPU baselines at small sizes (--quick); run "
                     "`python -m bench.sweep` on a CUDA machine for the real table.")
        notes.append("on the CPU, % roofline can pass 100: the weights stay in the CPU caches "
                     "between calls (no L2-cold rotation there).")
        if "triton" in fk_backends and explicit:
            notes.append("fk:triton on the CPU runs Triton's interpreter: its times say nothing "
                         "about GPU speed.")

    commit = _commit()
    torch.manual_seed(args.seed)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    ctx = argparse.Namespace(device=device, gen=gen, l2=measure.l2_bytes(device), args=args,
                             warmup_ms=warmup_ms, rep_ms=rep_ms, dtype=None, floor=None,
                             dense_floor=None)
    cases = [c for shape in shapes for op in ops for c in cs.make_cases(op, shape, fs)]
    per_case = len(fk_backends) + len(base_names)
    progress = Progress(len(dtypes) * len(cases) * len(ms) * per_case,
                        sys.stderr.isatty() if args.progress is None else args.progress)

    rows: list[dict] = []
    peaks_by_dtype = {}
    for dtype in dtypes:
        dname = str(dtype).replace("torch.", "")
        pk = roofline.peaks(device, dtype, args.cache_dir, args.remeasure_peaks)
        peaks_by_dtype[dname] = pk
        b = torch.finfo(dtype).bits // 8
        ctx.dtype = dtype
        for case in cases:
            o, i = case.shape.out, case.shape.inp
            factor_b = roofline.factor_bytes(case.op, o, i, b, **case.sizes)
            comp = roofline.compression(case.op, o, i, b, **case.sizes)
            try:
                sets = [case.build(dtype, device, gen)]
                build_error = None
            except Exception as e:  # a shape the format cannot take: error rows, not a crash
                sets, build_error = [], measure.short_error(e)
            for m in ms:
                n_flops = roofline.flops(case.op, m, o, i, **case.sizes)
                n_bytes = roofline.min_bytes(case.op, m, o, i, b, **case.sizes)
                floor = roofline.floor_seconds(n_flops, n_bytes, pk["matmul_tflops"],
                                               pk["bandwidth_gbps"])
                dense_flops = roofline.flops("dense", m, o, i)
                dense_bytes = roofline.min_bytes("dense", m, o, i, b)
                dense_floor = roofline.floor_seconds(dense_flops, dense_bytes,
                                                     pk["matmul_tflops"], pk["bandwidth_gbps"])
                ctx.floor, ctx.dense_floor = floor, dense_floor
                xs, ref = [torch.randn(m, i, generator=gen, device=device).to(dtype)], None
                if sets:
                    if not args.no_check:
                        try:
                            f64 = {k: (v.to(torch.float64) if hasattr(v, "to") else v)
                                   for k, v in sets[0].items()}
                            ref = case.call(f64, xs[0].double(), "torch")
                        except Exception:
                            ref = None
                group = []
                for kind, name in measure.variants(case, fk_backends, base_names):
                    label = f"fk:{name}" if kind == "factorkern" else name
                    progress.step(f"{dname} {case.op} {case.config} {case.shape.name} M={m} "
                                  f"{label}")
                    if kind == "factorkern":
                        fk_op = measure.QUANTIZED_OP if name.endswith(":popcount") else case.op
                        if measure.fk_usable(fk_op, name.split(":")[0]) is not None:
                            continue  # listed once in the notes, not as a row per case
                    else:
                        if bl.applies(name, case.op, device, dtype) is not None:
                            continue
                    is_dense = kind == "baseline" and name == "dense"
                    row = {"op": case.op, "config": case.config, "variant": case.variant,
                           "shape": case.shape.name,
                           "model": case.shape.model, "layer": case.shape.layer, "M": m,
                           "dtype": dname, "backend": label, "kind": kind,
                           "flops": dense_flops if is_dense else n_flops,
                           "bytes": dense_bytes if is_dense else n_bytes,
                           "factor_bytes": roofline.factor_bytes("dense", o, i, b) if is_dense
                           else factor_b,
                           "compression": 1.0 if is_dense else comp,
                           "device": pk["device"], "peak_tflops": pk["matmul_tflops"],
                           "peak_gbps": pk["bandwidth_gbps"], "commit": commit,
                           "torch": torch.__version__, "ms": None, "error": None}
                    if name == "torch-2:4":
                        row["note"] = bl.semi_structured_backend()
                    if build_error is not None and not is_dense:
                        row["error"] = f"building factors: {build_error}"
                    else:
                        measure.measure(row, case, kind, name, sets, xs, ref, ctx)
                    group.append(row)
                measure.speedups(group)
                if sets:
                    auto.mark(group, case, sets[0], xs[0])
                rows += group
            del sets
            if on_gpu:
                torch.cuda.empty_cache()
    progress.close()
    if on_gpu and not args.no_record:
        auto.extend_record(rows, measure.TOL, notes)

    header = _header(device, commit, peaks_by_dtype, quick, args, notes, info)
    _emit(rows, header, args, out)
    return rows


def _emit(rows, header, args, out):
    from . import report

    out = out or sys.stdout
    out.write(report.markdown(rows, header))
    out.flush()
    if args.json:
        report.write_json([{k: r.get(k) for k in ROW_KEYS} for r in rows], args.json)
        print(f"bench.sweep: wrote {len(rows)} rows to {args.json}", file=sys.stderr)
    if args.plot:
        if report.have_matplotlib():
            report.plot(rows, args.plot)
            print(f"bench.sweep: wrote {args.plot}", file=sys.stderr)
        else:
            print(f"bench.sweep: no plot written to {args.plot}: matplotlib is not installed "
                  "(pip install matplotlib)", file=sys.stderr)


def from_json(args, out=None) -> list[dict]:
    """Re-render saved rows (several files are concatenated: a sweep split by --shapes or
    --ops) as the table, and --json / --plot, without running anything."""
    import json

    rows = []
    for path in args.from_json:
        with open(path) as f:
            rows += json.load(f)
    devices = sorted({str(r.get("device")) for r in rows})
    commits = sorted({str(r.get("commit")) for r in rows})
    header = ["# factorkern bench.sweep (re-rendered)", "",
              f"- device: {', '.join(devices)}", f"- commit: {', '.join(commits)}",
              f"- from: {', '.join(args.from_json)}"]
    _emit(rows, header, args, out)
    return rows


def _header(device, commit, peaks_by_dtype, quick, args, notes, info):
    import torch

    dev = next(iter(peaks_by_dtype.values()))["device"] if peaks_by_dtype else str(device)
    cmd = "python -m bench.sweep " + " ".join(sys.argv[1:]) if args._argv is None else \
        "python -m bench.sweep " + " ".join(args._argv)
    lines = ["# factorkern bench.sweep", "",
             f"- device: {dev} ({'GPU' if device.type == 'cuda' else 'CPU'})",
             f"- commit: {commit}; torch {torch.__version__}; python "
             f"{platform.python_version()}; date {datetime.date.today().isoformat()}",
             f"- command: `{cmd.strip()}`" + (" (quick)" if quick else "")]
    for d, pk in peaks_by_dtype.items():
        lines.append(f"- roofline ceilings ({d}): {pk['bandwidth_gbps']:.4g} GB/s copy, "
                     f"{pk['matmul_tflops']:.4g} TFLOP/s matmul "
                     f"({'cached' if pk['cached'] else 'measured now'})")
    avail = ", ".join(f"{b}: {'yes' if v['available'] else 'no'}" for b, v in info.items()
                      if b != "auto")
    lines.append(f"- factorkern backends here: {avail}")
    if "auto" in info:
        lines.append(f"- auto here: {info['auto']['reason']}")
    timer = "CUDA graph replays over rotating L2-cold input copies (events)" if \
        device.type == "cuda" and not args.no_graph else \
        "CUDA events around eager launches" if device.type == "cuda" else \
        "time.perf_counter around each call"
    lines.append(f"- timing: {timer}; median with the 20-80% spread; speedups are ratios "
                 "within this run")
    lines += [f"- note: {n}" for n in notes]
    return lines


def main(argv=None) -> int:
    args = parse_args(argv)
    args._argv = list(argv) if argv is not None else None
    if args.from_json:
        from_json(args)
    else:
        run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
