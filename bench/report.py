"""Report: markdown tables (decode and prefill apart), a summary, JSON rows, the speedup plot.

A row is a dict (one op x shape x M x dtype x backend). Required keys of the JSON rows: op, shape,
M, dtype, backend, ms, tflops, gbps, roofline_pct, speedup_vs_dense; the others are documented in
``bench.sweep.ROW_KEYS``. A row whose call raised has ``ms = None`` and ``error`` set.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict

from .shapes import DECODE_MAX_M

_COLUMNS = ("op", "factors", "shape", "M", "dtype", "backend", "ms (median ±spread)", "TFLOP/s",
            "GB/s", "% roofline", "vs dense", "vs best base", "compression", "rel err")


def _fmt(v, spec, suffix=""):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v, spec) + suffix


def _ms_cell(r) -> str:
    if r.get("ms") is None:
        msg = (r.get("error") or "error").replace("|", "/").replace("\n", " ")
        return f"error: {msg[:90]}"
    spread = ""
    if r.get("ms_p20") is not None and r["ms"] > 0:
        half = (r["ms_p80"] - r["ms_p20"]) / 2 / r["ms"] * 100
        spread = f" ±{half:.0f}%"
    eager = " (eager)" if r.get("timer") == "eager" else ""  # not graph-captured on a GPU
    return f"{r['ms']:.4g}{spread}{eager}"


def _err_cell(r) -> str:
    e = r.get("rel_err")
    if e is None:
        return "-"
    cell = f"{e:.1e}"
    return cell if r.get("ok", True) else f"**WRONG {cell}**"


def row_cells(r) -> list[str]:
    backend = r["backend"] + (" (auto)" if r.get("auto") else "")
    return [r["op"], r.get("config", ""), r["shape"], str(r["M"]), r["dtype"], backend,
            _ms_cell(r), _fmt(r.get("tflops"), ".3g"), _fmt(r.get("gbps"), ".4g"),
            _fmt(r.get("roofline_pct"), ".1f"), _fmt(r.get("speedup_vs_dense"), ".2f", "x"),
            _fmt(r.get("speedup_vs_best_baseline"), ".2f", "x"),
            _fmt(r.get("compression"), ".2f", "x"), _err_cell(r)]


def markdown_table(rows) -> str:
    lines = ["| " + " | ".join(_COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
    lines += ["| " + " | ".join(row_cells(r)) + " |" for r in rows]
    return "\n".join(lines)


def _best(rows, kind, exclude=()):
    ok = [r for r in rows if r["kind"] == kind and r.get("ms") is not None
          and r["backend"] not in exclude]
    return min(ok, key=lambda r: r["ms"]) if ok else None


def summary_table(rows) -> str:
    """Per op x factors x shape x dtype: the fastest factorkern backend's speedup over dense at
    each M, and the fastest baseline's (other than dense) beside it."""
    groups = defaultdict(list)
    ms = sorted({r["M"] for r in rows})
    for r in rows:
        groups[(r["op"], r.get("config", ""), r["shape"], r["dtype"])].append(r)
    head = ["op", "factors", "shape", "dtype"] + [f"M={m}" for m in ms]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, rs in groups.items():
        cells = list(key)
        for m in ms:
            at = [r for r in rs if r["M"] == m]
            fk, base = _best(at, "factorkern"), _best(at, "baseline", exclude=("dense",))
            cell = "-"
            if fk is not None and fk.get("speedup_vs_dense") is not None:
                cell = f"{fk['speedup_vs_dense']:.2f}x ({fk['backend']})"
            if base is not None and base.get("speedup_vs_dense") is not None:
                cell += f"; base {base['speedup_vs_dense']:.2f}x"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(rows, header_lines=()) -> str:
    """The whole report: header, decode table, prefill table, summary."""
    decode = [r for r in rows if r["M"] <= DECODE_MAX_M]
    prefill = [r for r in rows if r["M"] > DECODE_MAX_M]
    parts = list(header_lines)
    parts += ["", f"## Decode (M <= {DECODE_MAX_M}: bytes bound)", "",
              markdown_table(decode) if decode else "(no decode rows)",
              "", f"## Prefill (M > {DECODE_MAX_M}: compute bound)", "",
              markdown_table(prefill) if prefill else "(no prefill rows)",
              "", "## Summary: fastest factorkern backend vs dense F.linear "
              "(and the fastest other baseline)", "", summary_table(rows) if rows else "(none)"]
    return "\n".join(parts) + "\n"


def write_json(rows, path) -> None:
    with open(path, "w") as f:
        json.dump(rows, f, indent=1)
        f.write("\n")


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def plot(rows, path) -> None:
    """Speedup over dense vs M: one panel per shape, one line per op (solid: fastest
    factorkern backend; dashed: fastest other baseline). Needs matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    dtypes = list(dict.fromkeys(r["dtype"] for r in rows))
    ncols = min(3, max(1, len(shapes)))
    nrows = math.ceil(len(shapes) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.5 * ncols, 4 * nrows), squeeze=False)
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]

    def key(r):  # one line (and one colour in every panel) per op setting and dtype
        return (r["op"], r.get("variant") or "", r["dtype"])
    colors = {k: palette[i % len(palette)] for i, k in enumerate(dict.fromkeys(map(key, rows)))}
    for ax, shape in zip(axes.flat, shapes):
        at_shape = [r for r in rows if r["shape"] == shape]
        for k in dict.fromkeys(map(key, at_shape)):
            op, variant, dtype = k
            rs = [r for r in at_shape if key(r) == k]
            label = " ".join(x for x in (op, variant, dtype if len(dtypes) > 1 else "") if x)
            for kind, style, exclude, suffix in (("factorkern", "-o", (), ""),
                                                 ("baseline", "--", ("dense",), " (baseline)")):
                pts = []
                for m in sorted({r["M"] for r in rs}):
                    b = _best([r for r in rs if r["M"] == m], kind, exclude)
                    if b is not None and b.get("speedup_vs_dense") is not None:
                        pts.append((m, b["speedup_vs_dense"]))
                if pts:
                    ax.plot(*zip(*pts), style, color=colors[k], markersize=3,
                            label=label + suffix if kind == "factorkern" else None)
        ax.axhline(1.0, color="gray", linewidth=0.8)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        ax.set_title(shape)
        ax.set_xlabel("M (tokens)")
        ax.set_ylabel("speedup vs dense F.linear")
        ax.grid(True, which="both", alpha=0.3)
    for ax in list(axes.flat)[len(shapes):]:
        ax.axis("off")
    legend = {}
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(lab, h)
    handles, labels = list(legend.values()), list(legend)
    fig.legend(handles, labels, loc="lower center", ncol=min(4, max(1, len(labels))),
               fontsize="small")
    device = rows[0].get("device", "") if rows else ""
    fig.suptitle(f"factorkern speedup over dense ({device}); dashed: fastest other baseline")
    fig.tight_layout(rect=(0, 0.08 + 0.02 * math.ceil(len(labels) / 4), 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)
