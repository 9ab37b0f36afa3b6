"""What verify prints: a progress bar on stderr and the summary table on stdout."""

from __future__ import annotations

import sys
import time

from .. import records as _records


class Progress:
    """``verify [#####.......]  120/400  1m23s  triton lowrank_mm float16 4096x4096 M=16``:
    redrawn in place on a terminal, one line per kernel elsewhere."""

    WIDTH = 24

    def __init__(self, total: int, enabled: bool):
        self.total, self.done, self.enabled = max(total, 1), 0, enabled
        self.tty = sys.stderr.isatty()
        self.t0 = time.monotonic()
        self.last = None

    def _line(self, what: str) -> str:
        fill = int(self.WIDTH * self.done / self.total)
        el = int(time.monotonic() - self.t0)
        return (f"verify [{'#' * fill}{'.' * (self.WIDTH - fill)}] {self.done:>5}/{self.total} "
                f"{el // 60}m{el % 60:02d}s  {what}")

    def row(self, r: dict) -> None:
        self.done += 1
        if not self.enabled:
            return
        what = f"{r['backend']} {r['op']} {r['dtype']} {r['out']}x{r['in']} M={r['m']} " \
               f"{r['status']}"
        kernel = (r["backend"], r["op"], r["dtype"])
        if self.tty:
            sys.stderr.write("\r\033[K" + self._line(what)[:160])
        elif kernel != self.last:
            sys.stderr.write(self._line(f"{r['backend']} {r['op']} {r['dtype']}") + "\n")
        self.last = kernel
        sys.stderr.flush()

    def skip(self, n: int) -> None:
        self.done += n

    def close(self) -> None:
        if self.enabled and self.tty:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def _table(headers, rows) -> list[str]:
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(str(h))
              for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()
    return [line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows]


def summary_lines(record: dict, details: bool = False, on_gpu: bool = True) -> list[str]:
    dev, soft = record["device"], record["software"]
    cap = f" sm_{''.join(map(str, dev['capability']))}, {dev['sms']} SMs" if dev.get(
        "capability") else ""
    out = [f"factorkern verify: {dev['name']}{cap}; torch {soft['torch']}, triton "
           f"{soft['triton']}, CUDA {soft['cuda']}, driver {soft['driver']}"
           + ("; Triton interpreter (numerics only)" if record["interpreted"] else ""),
           f"{len(record['rows'])} cases in {record['settings'].get('seconds', '?')} s, "
           f"{record['settings'].get('children', '?')} child process(es); record: "
           f"{record.get('path') or '(not written)'}", ""]
    table = _records.Table(record)
    rows_by = {}
    for r in record["rows"]:
        rows_by.setdefault((r["op"], r["backend"], r["dtype"]), []).append(r)
    body = []
    for k in record["kernels"]:
        key = (k["op"], k["backend"], k["dtype"])
        rows = rows_by.get(key, [])
        passed = sum(r["status"] == "pass" for r in rows)
        refused = sum(r["status"] == "refused" for r in rows)
        errs = [r["rel_err"] for r in rows if r["rel_err"] is not None and r["status"] == "pass"]
        timed = [r["library_ms"] / r["ms"] for r in rows if r.get("ms") and r.get("library_ms")]
        faster = sum(s > 1 for s in timed)
        picks = sum(1 for d, _m, _c, b, _w in table.picks(k["op"]) if b == k["backend"]
                    and d == k["dtype"])
        body.append([k["backend"], k["op"], k["dtype"], k["status"],
                     f"{passed}/{len(rows) - refused}" + (f" (+{refused} refused)" if refused
                                                           else ""),
                     _fmt(max(errs) if errs else None, ".1e"),
                     f"{faster}/{len(timed)}" + (f" (best {max(timed):.2f}x)" if timed else "")
                     if timed else "-", picks or "-"])
    out += _table(["backend", "op", "dtype", "kernel", "passed", "worst err",
                   "faster than library", "auto cells"], body)
    ops = sorted({k["op"] for k in record["kernels"]})
    takes = [f"  {op}: " + ", ".join(f"{b} for {d} M {m} {c}" for d, m, c, b, _ in table.picks(op))
             for op in ops if table.picks(op)]
    if record["device"].get("type") == "cuda" and not record["interpreted"]:
        out += ["", "auto takes (elsewhere the library path):"] + (takes or ["  no kernel: the "
                                                                           "library path "
                                                                           "everywhere"])
    notes = [f"  {k['backend']} {k['op']} {k['dtype']}: {k['status']}: {k['detail']}"
             for k in record["kernels"] if k["status"] not in (_records.PASSED,) and k["detail"]]
    if notes:
        out += ["", "why not passed:"] + notes
    if details:
        drows = [[r["backend"], r["op"], r["dtype"], f"{r['out']}x{r['in']}", r["m"],
                  r.get("shape_class") or "-", r["status"], _fmt(r["rel_err"], ".1e"),
                  _fmt(r["ms"], ".4f"), _fmt(r["library_ms"], ".4f"), _fmt(r["dense_ms"], ".4f"),
                  _fmt(r["library_rel_err"], ".1e"), (r.get("detail") or "")[:60]]
                 for r in record["rows"]]
        out += [""] + _table(["backend", "op", "dtype", "shape", "M", "class", "status", "err",
                              "ms", "library ms", "dense ms", "library err", "detail"], drows)
    if record["interpreted"]:
        out += ["", "interpreted record: numerics only, never used by auto on a GPU."]
    elif not on_gpu:
        out += ["", "no GPU: auto is the library path on the CPU; this record is informative."]
    return out


def print_summary(record: dict, stream, details: bool = False, on_gpu: bool = True) -> None:
    stream.write("\n".join(summary_lines(record, details, on_gpu)) + "\n")
    stream.flush()
