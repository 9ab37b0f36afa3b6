"""The launch path of the Triton kernels, as a GPU runs it, replayed on the CPU.

* Launch replay: every config of every autotune space runs in Triton's interpreter through the
  same tuner, argument binding and launch code a GPU uses (``force(config=EACH)``), and matches
  the float64 oracle. A config the launcher binds incompletely (a meta-parameter the kernel
  declares but neither the config nor the launcher supplies, as the chain decode kernel's BM
  once was) fails here with the TypeError the GPU would raise.
* The tuner: no benchmarking during CUDA-graph capture or torch.compile, only resource errors
  skip a config (a CUDA error propagates), every launch runs with x's device current.
* Each LittleBit launch owns zeroed counters (CUDA-graph safe).
"""

from __future__ import annotations

import contextlib
import zlib

import pytest
import torch

import factorkern as fk
from factorkern.triton_kernels import _common
from factorkern.triton_kernels._common import EACH, force

from families import rel_err

TOL = {torch.float16: 1e-2, torch.float32: 1e-5}


def _make(op, dtype, n_in, n_out, **size):
    g = torch.Generator().manual_seed(zlib.crc32(f"{op} {n_in} {n_out}".encode()))

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    if op == "dense_sparse_mm":
        k = size["k"]
        D, S = r(n_out, k, scale=k ** -0.5), fk.prune_24(r(k, n_in, scale=(n_in / 2) ** -0.5))
        return lambda x, b, be: fk.dense_sparse_mm(x, D, S, b, backend=be), (D, S)
    if op == "sparse_dense_mm":
        k = size["k"]
        S, D = fk.prune_24(r(n_out, k, scale=(k / 2) ** -0.5)), r(k, n_in, scale=n_in ** -0.5)
        return lambda x, b, be: fk.sparse_dense_mm(x, S, D, b, backend=be), (S, D)
    if op == "lowrank_mm":
        k = size["k"]
        U, V = r(n_out, k, scale=k ** -0.5), r(n_in, k, scale=n_in ** -0.5)
        return lambda x, b, be: fk.lowrank_mm(x, U, V, b, backend=be), (U, V)
    if op == "armor_mm":
        bs = size["block"]
        A = fk.BlockDiag(r(n_out // bs, bs, bs, scale=bs ** -0.5))
        B = fk.BlockDiag(r(n_in // bs, bs, bs, scale=bs ** -0.5))
        S = fk.prune_24(r(n_out, n_in, scale=(n_in / 2) ** -0.5))
        return lambda x, b, be: fk.armor_mm(x, A, S, B, b, backend=be), (A, S, B)
    if op == "littlebit_mm":
        from factorkern.formats import LittleBitFactors

        rk = size["k"]
        F = LittleBitFactors.from_real([(r(n_out, rk), r(n_in, rk), r(n_out, scale=1 / rk),
                                         r(rk).abs() + 0.5, r(n_in, scale=n_in ** -0.5))
                                        for _ in range(2)])
        return lambda x, b, be: fk.littlebit_mm(x, F, b, backend=be), (F,)
    if op == "monarch_mm":
        from factorkern.formats import MonarchFactors

        M = MonarchFactors.random(n_in, n_out, size["nblocks"], dtype=dtype, generator=g)
        return lambda x, b, be: fk.monarch_mm(x, M, b, backend=be), (M,)
    raise ValueError(op)


def _f64(f):
    return f.double() if isinstance(f, torch.Tensor) else f.to(torch.float64)


# (op, in, out, sizes, variants): small shapes (the interpreter runs programs one by one) that
# still give several tiles or chunks along the axes the configs split.
REPLAY = [
    ("dense_sparse_mm", 96, 40, dict(k=48), ("decode", "prefill")),   # prefill: t resident
    ("dense_sparse_mm", 64, 24, dict(k=72), ("chunked",)),            # t chunked (k > T_MAX)
    ("sparse_dense_mm", 40, 72, dict(k=64), ("decode", "prefill")),
    ("sparse_dense_mm", 24, 40, dict(k=80), ("chunked",)),
    ("lowrank_mm", 72, 56, dict(k=20), ("decode", "prefill")),
    ("lowrank_mm", 48, 40, dict(k=72), ("chunked",)),
    ("armor_mm", 128, 64, dict(block=32), ("decode", "prefill")),
    ("littlebit_mm", 100, 70, dict(k=40), ("decode", "prefill")),
    ("monarch_mm", 256, 256, dict(nblocks=4), ("decode", "prefill")),  # mode "by j"
    ("monarch_mm", 64, 64, dict(nblocks=8), ("decode", "prefill")),    # mode "by ri"
]
M_OF = {"decode": 3, "prefill": 37, "chunked": 37}


@pytest.mark.parametrize("op,n_in,n_out,size,variant",
                         [(c[0], c[1], c[2], c[3], v) for c in REPLAY for v in c[4]],
                         ids=[f"{c[0]}-{c[1]}x{c[2]}-{list(c[3].values())[0]}-{v}"
                              for c in REPLAY for v in c[4]])
def test_every_config_replays(op, n_in, n_out, size, variant, monkeypatch):
    """Every config of the space the GPU would tune over, bound and launched by the real
    launcher (interpreter), matches the oracle; the outputs are NaN-poisoned before each run.
    "chunked": the prefill path that recomputes t per output tile (k above ``_chain.T_MAX``,
    lowered here so that a small k takes it)."""
    m = M_OF[variant]
    if variant == "chunked":
        from factorkern.triton_kernels import _chain

        monkeypatch.setattr(_chain, "T_MAX", 32)
        variant = "prefill"
    dtype = torch.float16 if len(op) % 2 else torch.float32
    call, factors = _make(op, dtype, n_in, n_out, **size)
    g = torch.Generator().manual_seed(m)
    x = torch.randn(m, n_in, generator=g).to(dtype)
    bias = torch.randn(n_out, generator=g).to(dtype)
    spaces = []
    real = _common._tuned

    def spy(name, key, configs, run, device):
        spaces.append(configs)
        return real(name, key, configs, run, device)

    monkeypatch.setattr(_common, "_tuned", spy)
    with force(variant, config=EACH, poison=True) as runs:
        call(x, bias, "triton")
    # every config of the space ran (the interpreter ignores warps and stages: one run per
    # distinct set of meta-parameters)
    distinct = sum(len({tuple(sorted((k, v) for k, v in c.items()
                                     if k not in ("num_warps", "num_stages"))) for c in sp})
                   for sp in spaces)
    assert spaces and len(runs) == distinct, f"{len(runs)} runs for {distinct} configs"
    oracle = _oracle(op, factors, x, bias)
    for name, cfg, y in runs:
        assert torch.isfinite(y).all(), f"{name} {cfg}: unwritten (NaN) outputs"
        err = rel_err(y, oracle)
        assert err < TOL[dtype], f"{name} {variant} {cfg}: rel err {err:.2e}"


def _oracle(op, factors, x, bias):
    f64 = [_f64(f) for f in factors]
    fn = getattr(fk, op)
    return fn(x.double(), *f64, bias.double(), backend="torch")


def test_spaces_bind_every_kernel_argument():
    """Each config dict of each space, plus what its launcher binds, names every constexpr the
    kernel declares: checked by binding it as Triton's JIT does (no interpreter shortcut)."""
    import inspect

    seen = []

    def record(kernel, grid, kwargs):
        fn = getattr(kernel, "fn", kernel)
        sig = inspect.signature(fn)
        opts = {k: v for k, v in kwargs.items() if k not in ("num_warps", "num_stages")}
        sig.bind(**opts)  # TypeError: missing a required argument
        seen.append(fn.__name__)

    old = _common._RECORDER
    _common._RECORDER = record
    try:
        for op, n_in, n_out, size, _ in REPLAY:
            call, _ = _make(op, torch.float16, n_in, n_out, **size)
            for variant in ("decode", "prefill"):
                with force(variant, config=EACH):
                    call(torch.randn(3, n_in).half(), None, "triton")
    finally:
        _common._RECORDER = old
    assert {"_chain_phased_kernel", "_chain_fused_kernel", "_armor_phased_kernel",
            "_armor_fused_kernel", "_littlebit_kernel", "_monarch_kernel"} <= set(seen)


# ---------------------------------------------------------------------------------------------
# The tuner
# ---------------------------------------------------------------------------------------------
CONFIGS = [dict(BLOCK=1, num_warps=4, num_stages=2), dict(BLOCK=2, num_warps=4, num_stages=2),
           dict(BLOCK=3, num_warps=4, num_stages=2)]


@pytest.fixture
def gpu_branch(monkeypatch):
    """Reach the tuner's GPU branch on the CPU: not interpreting, a CUDA device, no real device
    switch, and a do_bench that records its calls."""
    import triton.testing

    benched = []

    def fake_bench(fn, *a, **k):
        benched.append(1)
        fn()
        return float(len(benched))

    monkeypatch.setattr(_common, "interpreting", lambda: False)
    monkeypatch.setattr(_common, "device_guard", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(triton.testing, "do_bench", fake_bench)
    monkeypatch.setattr(_common, "_PICKED", {})
    return benched


def test_tuner_times_every_config_and_caches(gpu_branch):
    ran = []
    _common.tuned("k", ("a",), CONFIGS, lambda c: ran.append(c["BLOCK"]), torch.device("cuda"))
    assert len(gpu_branch) == 3 and ran[-1] == 1   # the fastest (first timed) runs
    ran.clear()
    _common.tuned("k", ("a",), CONFIGS, lambda c: ran.append(c["BLOCK"]), torch.device("cuda"))
    assert len(gpu_branch) == 3 and ran == [1]      # cached: no timing


@pytest.mark.parametrize("why", ["graph capture", "torch.compile"])
def test_tuner_never_benchmarks_while_capturing_or_compiling(gpu_branch, monkeypatch, why):
    if why == "graph capture":
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    else:
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    ran = []
    _common.tuned("k", ("b",), CONFIGS, lambda c: ran.append(c["BLOCK"]), torch.device("cuda"))
    assert gpu_branch == [] and ran == [1]          # the default config, untimed
    assert not _common._PICKED                       # and nothing cached: eager calls still tune


def test_tuner_skips_only_resource_errors(gpu_branch):
    from triton.runtime.errors import OutOfResources

    def run(c):
        if c["BLOCK"] == 1:
            raise OutOfResources(300_000, 232_448, "shared memory")
        return c["BLOCK"]

    assert _common.tuned("k", ("c",), CONFIGS, run, torch.device("cuda")) == 2

    def broken(c):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    with pytest.raises(RuntimeError, match="illegal memory access"):
        _common.tuned("k", ("d",), CONFIGS, broken, torch.device("cuda"))


def test_tuner_says_when_nothing_fits(gpu_branch):
    from triton.runtime.errors import OutOfResources

    def run(c):
        raise OutOfResources(300_000, 232_448, "shared memory")

    with pytest.raises(RuntimeError, match="no config of the autotune space fits"):
        _common.tuned("k", ("e",), CONFIGS, run, torch.device("cuda"))


@pytest.mark.parametrize("op", ["dense_sparse_mm", "armor_mm", "littlebit_mm", "monarch_mm"])
def test_every_launch_makes_x_device_current(monkeypatch, op):
    """Triton launches on the current device: each launch and the tuning around it run under a
    guard for x's device."""
    devices = []
    real = _common.device_guard

    def guard(device):
        devices.append(device)
        return real(device)

    monkeypatch.setattr(_common, "device_guard", guard)
    size = dict(dense_sparse_mm=dict(k=16), armor_mm=dict(block=32), littlebit_mm=dict(k=32),
                monarch_mm=dict(nblocks=4))[op]
    call, _ = _make(op, torch.float16, 64, 64, **size)
    call(torch.randn(2, 64).half(), None, "triton")
    assert devices and all(d == torch.device("cpu") for d in devices)
    assert len(devices) >= 2  # the tuner's guard and the launch's


def test_littlebit_launches_own_zeroed_counters(monkeypatch):
    """Two launches never share counter state (a cached per-stream counter would be shared by
    CUDA graphs replayed on other streams or concurrently), and each starts from zero."""
    seen = []
    old = _common._RECORDER

    def record(kernel, grid, kwargs):
        cnt = kwargs["cnt_ptr"]
        seen.append((cnt, cnt.clone()))
        _common._RECORDER = None
        try:
            _common.launch_kernel(kernel, grid, kwargs, cnt.device)
        finally:
            _common._RECORDER = record

    call, _ = _make("littlebit_mm", torch.float16, 64, 48, k=32)
    _common._RECORDER = record
    try:
        call(torch.randn(2, 64).half(), None, "triton")
        call(torch.randn(2, 64).half(), None, "triton")
    finally:
        _common._RECORDER = old
    (c1, z1), (c2, z2) = seen
    assert c1 is not c2 and c1.data_ptr() != c2.data_ptr()
    assert int(z1.abs().sum()) == 0 and int(z2.abs().sum()) == 0
    assert not hasattr(_common, "_COUNTERS")
