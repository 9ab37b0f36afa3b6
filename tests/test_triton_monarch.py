"""Triton monarch_mm vs the reference (float64): interpreter (fp16/fp32, small shapes) and GPU
(bf16/fp16, real shapes, @pytest.mark.gpu). Every chunking mode and the s-split are forced."""

from __future__ import annotations

import pytest
import torch

import factorkern as fk
from factorkern.formats import MonarchFactors

mon = pytest.importorskip("factorkern.triton_kernels.monarch")

TOL = {torch.float16: 1e-2, torch.bfloat16: 1e-2, torch.float32: 1e-5}


def _rel(y, ref):
    return ((y.double() - ref).norm() / ref.norm()).item()


def _check(in_f, out_f, nblocks, dtype, lead=(3,), bias=True, noncontig=False, device="cpu",
           config=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    M = MonarchFactors.random(in_f, out_f, nblocks, dtype=dtype, generator=g).to(device)
    if noncontig:  # a strided view: every other feature of a wider tensor
        x = torch.randn(*lead, 2 * in_f, generator=g).to(dtype).to(device)[..., ::2]
    else:
        x = torch.randn(*lead, in_f, generator=g).to(dtype).to(device)
    b = torch.randn(out_f, generator=g).to(dtype).to(device) if bias else None
    ref = fk.monarch_mm(x.double(), M.to(torch.float64), None if b is None else b.double(),
                        backend="torch")
    if config is None:
        y = fk.monarch_mm(x, M, b, backend="triton")
    else:
        y = mon.monarch_mm(x.reshape(-1, in_f), M.w1, M.w2, out_f, b, [], config=config)
        y = y.reshape(*lead, out_f)
    assert y.dtype == dtype and y.shape == (*lead, out_f)
    assert torch.isfinite(y).all()
    err = _rel(y, ref)
    assert err < TOL[dtype], f"rel err {err:.2e}"
    return err


# (in, out, nblocks, expected mode_r): fly's default nblocks=4, 16, sqrt(n), rectangular, padded
SHAPES = [
    (64, 64, 4, False),      # q/l = 4: mode J with padded ri tile
    (256, 256, 4, False),    # q/l = 16
    (64, 64, 8, True),       # sqrt(n): q = l
    (256, 256, 16, True),    # sqrt(n) and nblocks 16
    (96, 200, 4, True),      # rectangular (fly shapes), q % l != 0
    (200, 96, 4, True),      # rectangular the other way (q/l = 6: by-ri wins)
    (100, 60, 4, True),      # q = 15 odd: gcd(l, q) = 1, fully masked 16-wide j tile
    (98, 62, 4, False),      # padded in (k*p = 100) and out (l*s = 64), q/l = 4
    (37, 53, 4, True),       # odd, padded both sides (k*p = 40, l*s = 56)
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("in_f,out_f,nblocks,mode_r", SHAPES)
def test_monarch_interp(in_f, out_f, nblocks, mode_r, dtype):
    s1, s2 = MonarchFactors.fly_shapes(in_f, out_f, nblocks)
    assert mon.plan(s1, s2)["mode_r"] == mode_r
    _check(in_f, out_f, nblocks, dtype, lead=(2, 5), bias=True)


@pytest.mark.parametrize("n", [1, 16, 33])
def test_monarch_rows_nobias_noncontig(n):
    _check(64, 64, 8, torch.float16, lead=(n,), bias=False, noncontig=True)
    _check(256, 256, 4, torch.float32, lead=(n,), bias=False, noncontig=True)


FORCED = [
    # s split across programs (stage 1 recomputed), mode J with a group of 4 output blocks
    dict(BM=16, BK=16, BR=16, G=4, S_CAP=16, num_warps=4, num_stages=1),
    # whole s in one program, G = 1, 32-wide ri tile in mode R, wider M tile
    dict(BM=32, BK=32, BR=32, G=1, S_CAP=1024, num_warps=4, num_stages=1),
]


@pytest.mark.parametrize("cfg", FORCED)
@pytest.mark.parametrize("in_f,out_f,nblocks", [(256, 256, 4), (256, 256, 16), (96, 200, 4)])
def test_monarch_forced_configs(in_f, out_f, nblocks, cfg):
    _check(in_f, out_f, nblocks, torch.float32, lead=(19,), config=cfg)


def test_monarch_zero_rows():
    M = MonarchFactors.random(64, 64, 4, dtype=torch.float32)
    y = fk.monarch_mm(torch.randn(0, 64), M, backend="triton")
    assert y.shape == (0, 64)


def test_monarch_supports_float64():
    M = MonarchFactors.random(64, 64, 4, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="float64"):
        fk.monarch_mm(torch.randn(2, 64, dtype=torch.float64), M, backend="triton")


def test_monarch_opcheck():
    M = MonarchFactors.random(64, 64, 8, dtype=torch.float32)
    x = torch.randn(5, 64)
    torch.library.opcheck(torch.ops.factorkern.monarch_mm.default,
                          (x, M.w1, M.w2, 64, torch.randn(64), "triton", []),
                          test_utils=("test_schema", "test_faketensor"))


# ---- GPU: real shapes, bf16/fp16, every config of the autotune space ------------------------
GPU_SHAPES = [(4096, 4096, 4), (4096, 4096, 64), (4096, 4096, 16), (4096, 11008, 4),
              (11008, 4096, 4)]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n", [1, 16, 2048])
@pytest.mark.parametrize("in_f,out_f,nblocks", GPU_SHAPES)
def test_monarch_gpu(in_f, out_f, nblocks, n, dtype):
    _check(in_f, out_f, nblocks, dtype, lead=(n,), device="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("bucket,n", [("decode", 7), ("prefill", 300)])
def test_monarch_gpu_every_config(bucket, n):
    for cfg in mon._SPACE[bucket]:
        for in_f, out_f, nb in [(4096, 4096, 4), (4096, 4096, 64), (4096, 11008, 4)]:
            _check(in_f, out_f, nb, torch.bfloat16, lead=(n,), device="cuda", config=cfg,
                   noncontig=True)
