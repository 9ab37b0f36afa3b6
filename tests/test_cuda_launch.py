"""The CUDA launchers' host logic without a GPU: ``factorkern._C._testing`` swaps the CUDA runtime
for a fake one (csrc/python/testing.cpp) that records every call, so these tests see which kernel
each call launches with which grid, which device is current during the launch, what is cached,
which errors are left pending, and whether the GIL is free while a launch blocks. Pointers are
fake (never dereferenced: no kernel runs). Skips when the extension was not built."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import threading
import time
from types import SimpleNamespace

import pytest
import torch

C = pytest.importorskip("factorkern._C", reason="CUDA extension not built (pure-Python install)")

from factorkern import cuda as fkc  # noqa: E402
from factorkern import cuda_sm90 as sm90  # noqa: E402
from factorkern.cuda_sm90 import launch as sm90_launch  # noqa: E402

T = C._testing
FAKE = 1 << 40  # 256-byte aligned, never dereferenced
MB = 1 << 20
LIB = os.path.join(os.path.dirname(os.path.abspath(C.__file__)), "lib", "libfactorkern.so")


@pytest.fixture
def fake():
    """Install the fake runtime (keyword arguments: see _C._testing.install); restore after."""
    def install(**kw):
        T.install(**kw)
        return T

    yield install
    T.uninstall()


def _events(what):
    return [e for e in T.events() if e["what"] == what]


def _ds(n, device=-1, k=4096, out=4096, n_in=4096):
    """fk_dense_sparse_mm through _C with fake pointers."""
    C.dense_sparse_mm(C.FLOAT16, n, n_in, k, out, FAKE, n_in, FAKE, FAKE, FAKE, 0, FAKE, out,
                      FAKE, 64 * MB, 0, device)


def _lb(n, popcount, device=-1):
    terms = [(FAKE, FAKE, FAKE, FAKE, FAKE, 512, 16)]
    C.littlebit_mm(C.BFLOAT16, n, 4096, 4096, FAKE, 4096, terms, 0, FAKE, 4096, FAKE, 64 * MB, 0,
                   popcount, device)


# --- the co-resident grid: cached per kernel and device -----------------------------------------
def test_coresident_grid_is_cached_per_kernel_not_per_params_type(fake):
    # The 1-token kernel fits 2 CTAs per SM, the 16-token one 1: a 16-token call after a 1-token
    # call must size its cooperative grid from its own occupancy (a grid sized for the 1-token
    # kernel is cudaErrorCooperativeLaunchTooLarge on a GPU).
    fake(sms=4, occupancy=[2, 1, 1])
    _ds(1)
    _ds(16)
    _ds(1)
    _ds(3)
    occ = _events("occupancy")
    launches = _events("launch")
    assert [e["kernel"] for e in occ] == [0, 1, 2]  # each token bucket queried once
    assert all(e["block"] == 256 for e in occ)
    assert [(e["kernel"], e["grid"][0]) for e in launches] == [(0, 8), (1, 4), (0, 8), (2, 4)]
    assert all(e["cooperative"] for e in launches)


def test_exact_and_popcount_littlebit_are_separate_cache_entries(fake):
    fake(sms=2, occupancy=[2, 1])
    _lb(1, popcount=False)
    _lb(1, popcount=True)
    occ, launches = _events("occupancy"), _events("launch")
    assert len(occ) == 2 and occ[0]["kernel"] != occ[1]["kernel"]
    assert [e["grid"][0] for e in launches] == [4, 2]


def test_grid_cache_is_per_device(fake):
    fake(sms=4, occupancy=[2, 1])
    _ds(1, device=0)
    _ds(1, device=1)
    _ds(1, device=1)
    occ = _events("occupancy")
    assert [e["device"] for e in occ] == [0, 1]
    assert [e["grid"][0] for e in _events("launch")] == [8, 4, 4]
    assert T.cached_facts() == 4  # co-resident CTAs and SM count, per device


def test_grid_is_sized_by_the_work_with_one_cta_per_sm_at_least(fake):
    fake(sms=132, occupancy=[2, 2])
    # k = out = 64 rows: a handful of warp items; still one CTA per SM, so a small stage's items
    # spread over the SMs.
    _ds(1, k=64, out=64, n_in=128)
    # 4096 x 4096: 1024 warp items of the 1-token kernel = 128 CTAs, below 132 SMs.
    _ds(1)
    # 16 tokens: 2 rows per lane group at k = 4096 -> 2048 items = 256 CTAs, capped at 264.
    _ds(16, k=4096, out=8192)
    assert [e["grid"][0] for e in _events("launch")] == [132, 132, 256]


# --- device guard ----------------------------------------------------------------------------------
def test_launch_runs_with_the_tensors_device_current(fake):
    fake(device=0)
    _ds(4, device=1)
    ev = [(e["what"], e["device"]) for e in T.events()]
    assert ev == [("set_device", 1), ("occupancy", 1), ("launch", 1), ("set_device", 0)]
    assert T.current_device() == 0


def test_no_device_switch_when_already_current(fake):
    fake(device=1)
    _ds(4, device=1)
    _ds(4, device=-1)
    assert not _events("set_device")
    assert [e["device"] for e in _events("launch")] == [1, 1]


def test_device_guard_restores_after_a_failed_launch(fake):
    fake(device=0, launch_error=T.LAUNCH_FAILURE)
    with pytest.raises(RuntimeError, match="cudaErrorLaunchFailure"):
        _ds(4, device=1)
    assert T.current_device() == 0


def test_glue_passes_the_tensors_device():
    x = SimpleNamespace(device=torch.device("cuda", 1))
    assert fkc._device(x) == 1
    assert fkc._device(SimpleNamespace(device=torch.device("cpu"))) == -1


def test_glue_end_to_end_on_cpu_tensors(fake, monkeypatch):
    # The Python glue down to the launch, with CPU tensors standing in for CUDA ones.
    from families import make_case

    monkeypatch.setattr(fkc, "_reason_common", lambda x: None)
    monkeypatch.setattr(fkc, "_stream", lambda device: 0)
    monkeypatch.setattr(fkc, "_device", lambda x: 1)
    fake(sms=132, occupancy=[1])
    case = make_case("dense_sparse_mm", 256, 256, dtype=torch.float16, k=128)
    D, S = case.factors
    x = torch.randn(5, 256, dtype=torch.float16)
    y = fkc.dense_sparse_mm(x, D, S.values, S.meta, None, [])
    assert y.shape == (5, 256)
    (launch,) = _events("launch")
    assert launch["device"] == 1 and launch["cooperative"]


# --- GIL --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("call", ["dense_sparse", "littlebit", "sm90"])
def test_launch_releases_the_gil(fake, call):
    fake(launch_sleep_ms=300)
    ticks = []
    done = threading.Event()

    def count():
        while not done.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0.001)

    th = threading.Thread(target=count)
    th.start()
    time.sleep(0.02)
    t0 = time.perf_counter()
    if call == "dense_sparse":
        _ds(4)
    elif call == "littlebit":
        _lb(4, popcount=False)
    else:
        assert C.sm90_sparse_gemm(1, 64, 64, 128, FAKE, 64, FAKE, FAKE, 64, 0, 0, 128, FAKE, 128,
                                  0, -1) == 0
    t1 = time.perf_counter()
    done.set()
    th.join()
    assert t1 - t0 >= 0.25
    during = [t for t in ticks if t0 <= t <= t1]
    # A thread holding the GIL for 300 ms would leave no tick in that window.
    assert len(during) >= 20, (len(during), t1 - t0)


# --- errors -----------------------------------------------------------------------------------------
def test_own_error_is_cleared(fake):
    fake(launch_error=T.COOPERATIVE_LAUNCH_TOO_LARGE)
    with pytest.raises(RuntimeError, match="cudaErrorCooperativeLaunchTooLarge"):
        _ds(4)
    assert T.pending_error() == 0


def test_error_of_other_code_stays_pending(fake):
    # An error was pending before the call (another library's failed launch): the launcher's own
    # failure must not clear the record its owner will read.
    fake(launch_error=T.COOPERATIVE_LAUNCH_TOO_LARGE, pending_error=T.LAUNCH_FAILURE)
    with pytest.raises(RuntimeError):
        _ds(4)
    assert T.pending_error() != 0


def test_sm90_launch_does_not_consume_a_pending_error(fake):
    # The sm90 launcher used to learn its launch status from cudaGetLastError(), reporting (and
    # clearing) whatever error other code had left pending.
    fake(pending_error=T.LAUNCH_FAILURE)
    st = C.sm90_sparse_gemm(1, 64, 64, 128, FAKE, 64, FAKE, FAKE, 64, 0, 0, 128, FAKE, 128, 0, -1)
    assert st == 0, C.sm90_last_error()
    assert T.pending_error() == T.LAUNCH_FAILURE
    (launch,) = _events("launch")
    assert not launch["cooperative"] and launch["grid"] == (1, 1, 1) and launch["block"] == 128


# --- sm90: attributes once per kernel and device ----------------------------------------------------
def _sm90(dtype=1, device=-1, armor=0):
    return C.sm90_sparse_gemm(dtype, 64, 64, 128, FAKE, 64, FAKE, FAKE, 64, 0, armor, 128, FAKE,
                              128, 0, device)


def test_sm90_attributes_once_per_kernel_and_device(fake):
    fake(device=0)
    for _ in range(3):
        assert _sm90() == 0
    assert len(_events("func_attributes")) == 1 and len(_events("set_max_smem")) == 1
    assert _sm90(device=1) == 0
    assert _sm90(device=1) == 0
    assert [e["device"] for e in _events("set_max_smem")] == [0, 1]
    assert _sm90(dtype=0) == 0  # fp16: its own kernel
    assert _sm90(armor=FAKE) == 0  # the ARMOR epilogue: its own kernel
    assert len({e["kernel"] for e in _events("set_max_smem")}) == 3
    assert len(_events("launch")) == 7
    smem = {e["smem"] for e in _events("launch")}
    assert smem == {e["smem"] for e in _events("set_max_smem")} and min(smem) > 48 * 1024


def test_sm90_refuses_other_images_and_devices(fake):
    fake(binary_version=80)
    assert _sm90() == 2 and "sm_80, not sm_90a" in C.sm90_last_error()
    fake(cc=89)
    assert _sm90() == 2 and "sm_89" in C.sm90_last_error()
    assert not _events("launch")


# --- sm90 Python glue -------------------------------------------------------------------------------
def _sparse(rows, cols, dtype):
    from factorkern.formats import prune_24

    return prune_24(torch.randn(rows, cols, generator=torch.Generator().manual_seed(0)).to(dtype))


@pytest.fixture
def sm90_on_cpu(fake, monkeypatch):
    """The sm90 glue with CPU tensors and the fake runtime standing in for an H100."""
    monkeypatch.setattr(sm90_launch, "_stream", lambda device: 0)
    fake(device=0)
    return sm90_launch


def test_sm90_glue_passes_null_pointers_as_integers(sm90_on_cpu):
    # pybind11 refuses None for uintptr_t: absent bias and ARMOR fragments must go as 0.
    S = _sparse(200, 72, torch.bfloat16)
    x = torch.randn(5, 72, dtype=torch.bfloat16)
    y = sm90.sparse_mm(x, S.values, S.meta, 72)
    assert y.shape == (5, 200)
    (launch,) = _events("launch")
    assert launch["grid"] == (2, 1, 1)  # ceil(200 / 128) row tiles x ceil(5 / 128) token tiles


@pytest.mark.parametrize("case, names", [("x fp32", "x is torch.float32"),
                                         ("values", "S values"), ("armor", "ARMOR A blocks"),
                                         ("bias", "bias is"), ("out", "out is")])
def test_sm90_glue_checks_dtypes(sm90_on_cpu, case, names):
    S = _sparse(128, 64, torch.bfloat16)
    x = torch.randn(3, 64, dtype=torch.bfloat16)
    kw = {}
    if case == "x fp32":
        x = x.float()
    elif case == "values":
        S = _sparse(128, 64, torch.float16)
    elif case == "armor":
        kw["armor"] = sm90.armor_frag(torch.randn(1, 128, 128))  # fp32 fragments
    elif case == "bias":
        kw["bias"] = torch.randn(128, dtype=torch.float16)
    else:
        kw["out"] = torch.empty(3, 128, dtype=torch.float16)
    with pytest.raises(TypeError, match=names):  # the argument named, before any launch
        sm90.sparse_mm(x, S.values, S.meta, 64, **kw)
    assert not _events("launch")


def test_sm90_glue_copies_a_contiguous_but_misaligned_x(sm90_on_cpu):
    base = torch.randn(3 * 64 + 1, dtype=torch.float16)
    x = base[1:].view(3, 64)
    assert x.is_contiguous() and x.data_ptr() % 16 != 0
    xp = sm90_launch._prep_x(x)
    assert xp.data_ptr() % 16 == 0 and torch.equal(xp, x)
    S = _sparse(128, 64, torch.float16)
    sm90.sparse_mm(x, S.values, S.meta, 64)  # the C side would refuse a misaligned x
    assert len(_events("launch")) == 1


# --- the C library exports the sm90 functions ------------------------------------------------------
def test_libfactorkern_exports_the_sm90_api():
    if not os.path.exists(LIB):
        pytest.skip("libfactorkern.so not built")
    lib = ctypes.CDLL(LIB)
    for name in ("fk_sm90_sparse_gemm", "fk_sm90_sparse_available", "fk_sm90_last_error",
                 "fk_dense_sparse_mm", "fk_littlebit_popcount_mm"):
        assert hasattr(lib, name), name
    if shutil.which("nm"):
        out = subprocess.run(["nm", "-D", "--defined-only", LIB], capture_output=True, text=True)
        exported = {line.split()[-1] for line in out.stdout.splitlines() if line.strip()}
        assert {"fk_sm90_sparse_gemm", "fk_sm90_last_error"} <= exported
        # Internal C++ symbols stay hidden.
        assert not any(s.startswith("_ZN2fk") for s in exported)
