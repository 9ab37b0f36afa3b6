"""Timing inside a verification child: the median of single calls between CUDA events, with the
L2 cache flushed before each (weights read from HBM, as in a model whose layers do not fit in
L2). The kernel, the library path and dense F.linear of a case are timed the same way in the same
process, so their ratios compare like with like."""

from __future__ import annotations

import statistics

import torch

_FLUSH: dict = {}


def _flush_buffer(device) -> torch.Tensor:
    buf = _FLUSH.get(device)
    if buf is None:
        l2 = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0) or 64 << 20
        buf = _FLUSH[device] = torch.empty(2 * l2 // 4, dtype=torch.int32, device=device)
    return buf


def time_cuda(fn, device, *, warmup_ms: float = 5.0, rep_ms: float = 25.0, min_reps: int = 5,
              max_reps: int = 100) -> float:
    """Median milliseconds of one call of ``fn`` (already called once: compiled and tuned)."""
    flush = _flush_buffer(device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(3):
        fn()
    end.record()
    end.synchronize()
    est = max(start.elapsed_time(end) / 3, 1e-3)
    for _ in range(min(int(warmup_ms / est), 100)):
        fn()
    n = max(min_reps, min(max_reps, int(rep_ms / est)))
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    for s, e in zip(starts, ends):
        flush.zero_()
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize(device)
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends))
