"""``python -m factorkern.verify``: see ``factorkern.verify.verify`` and docs/dispatch.md."""

from __future__ import annotations

import argparse
import sys


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m factorkern.verify", description=(
        "Verify every factorkern kernel that runs here against the float64 oracle (in child "
        "processes: a crash or hang fails that kernel only), time the passing ones against the "
        "library path and dense F.linear on a GPU, and write the record auto dispatches from."))
    p.add_argument("--quick", action="store_true",
                   help="small matrix: one model shape, one ragged shape, one M per bucket, bf16")
    p.add_argument("--ops", default=None, help="comma list of ops (the _mm may be left out)")
    p.add_argument("--dtypes", default=None, help="comma list among fp16, bf16, fp32")
    p.add_argument("--backends", default=None,
                   help="comma list of kernel backends (default: all with kernels here)")
    p.add_argument("--shapes", default=None, metavar="OUTxIN,...",
                   help="replace the matrix's layer shapes, e.g. 4096x4096,1000x1500")
    p.add_argument("--m", default=None, help="replace the matrix's M list, e.g. 1,16,2048")
    p.add_argument("--max-time", type=float, default=None, metavar="SECONDS",
                   help="stop starting new kernels after this many seconds (the rest is "
                        "recorded as not run)")
    p.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="seconds one case may take before its child process is killed "
                        "(default 300; 120 in the interpreter)")
    p.add_argument("--no-timing", action="store_true", help="numerics only")
    p.add_argument("--cache-dir", default=None,
                   help="write the record under DIR/records (default ~/.cache/factorkern or "
                        "$FACTORKERN_CACHE_DIR)")
    p.add_argument("--output", default=None, metavar="FILE", help="also write the record here")
    p.add_argument("--no-write", action="store_true", help="do not write to the cache")
    p.add_argument("--details", action="store_true", help="print every case, not only the "
                                                          "summary")
    pr = p.add_mutually_exclusive_group()
    pr.add_argument("--progress", action="store_true", default=None)
    pr.add_argument("--no-progress", dest="progress", action="store_false")
    return p.parse_args(argv)


def main(argv=None) -> int:
    from . import verify

    a = parse_args(argv)
    try:
        verify(ops=a.ops, dtypes=a.dtypes, backends=a.backends, quick=a.quick,
               shapes=a.shapes, m=a.m,
               max_time=a.max_time, timeout=a.timeout, timing=False if a.no_timing else None,
               write=not a.no_write, cache_dir=a.cache_dir, output=a.output,
               progress=a.progress, details=a.details)
    except ValueError as e:
        print(f"factorkern.verify: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
