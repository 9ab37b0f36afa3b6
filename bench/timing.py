"""Timing: medians with spread, L2-cold on a GPU.

On a GPU, ``fns`` is a list of closures each bound to its own copy of the inputs and factors
(the sweep makes enough copies to exceed twice the L2 cache), so consecutive calls never find
their operands in L2. The calls are captured once into a CUDA graph and the graph is replayed
between CUDA events: a sample is one replay of all the copies, divided by their number. The graph
removes the Python and launch overhead of the ops (what a served model with CUDA graphs sees); a
call that cannot be captured falls back to eager launches between events (``timer="eager"``,
which includes that overhead). On the CPU a sample is one ``time.perf_counter`` interval around
one call.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Sequence


@dataclass
class Timing:
    median_s: float
    p20_s: float
    p80_s: float
    samples: int
    timer: str  # "graph" | "eager" | "cpu"

    @property
    def ms(self) -> float:
        return self.median_s * 1e3


def _quantile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    i = min(len(xs) - 1, max(0, int(round(q * (len(xs) - 1)))))
    return xs[i]


def _summary(per_call_s: list[float], timer: str) -> Timing:
    return Timing(statistics.median(per_call_s), _quantile(per_call_s, 0.2),
                  _quantile(per_call_s, 0.8), len(per_call_s), timer)


def time_fn(fns: Sequence[Callable], device, *, warmup_ms: float = 25, rep_ms: float = 100,
            use_graph: bool = True, min_reps: int = 5, max_reps: int = 200) -> Timing:
    """Median time of one call. ``fns``: closures over rotating input copies (on the CPU one is
    enough). The first call of each is a warm-up (it prepares layouts and autotunes)."""
    if device.type == "cuda":
        return _time_cuda(list(fns), warmup_ms, rep_ms, use_graph, min_reps, max_reps)
    return _time_cpu(list(fns), warmup_ms, rep_ms, min_reps, max_reps)


def _time_cpu(fns, warmup_ms, rep_ms, min_reps, max_reps) -> Timing:
    # The first call of each copy is the warm-up; the last one estimates the time of a call.
    for fn in fns:
        t0 = time.perf_counter()
        fn()
    est = max(time.perf_counter() - t0, 1e-7)
    for i in range(min(int(warmup_ms / 1e3 / est), 50)):
        fns[i % len(fns)]()
    # Slow calls (the reference at bert sizes) take fewer samples on the CPU.
    n = max(min(min_reps, 3), min(max_reps, int(rep_ms / 1e3 / est)))
    out = []
    for i in range(n):
        fn = fns[i % len(fns)]
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return _summary(out, "cpu")


def _capture(fns):
    """A CUDA graph replaying every fn once, or None when a call cannot be captured."""
    import torch

    g = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(g):
            for fn in fns:
                fn()
    except Exception:
        try:
            torch.cuda.synchronize()
        except Exception:
            pass
        return None
    return g


def _time_cuda(fns, warmup_ms, rep_ms, use_graph, min_reps, max_reps) -> Timing:
    import torch

    # Warm up on a side stream (required before graph capture; it also prepares layouts,
    # compiles and autotunes every kernel outside the timed region).
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            for fn in fns:
                fn()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()

    graph = _capture(fns) if use_graph else None
    if graph is not None:
        run, timer = graph.replay, "graph"
    else:
        def run():
            for fn in fns:
                fn()
        timer = "eager"

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    run()
    end.record()
    end.synchronize()
    est_ms = max(start.elapsed_time(end), 1e-4)
    for _ in range(min(int(math.ceil(warmup_ms / est_ms)), 1000)):
        run()
    n = max(min_reps, min(max_reps, int(rep_ms / est_ms)))
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    for s, e in zip(starts, ends):
        s.record()
        run()
        e.record()
    torch.cuda.synchronize()
    per_call = [s.elapsed_time(e) / 1e3 / len(fns) for s, e in zip(starts, ends)]
    del graph
    return _summary(per_call, timer)
