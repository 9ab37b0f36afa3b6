"""Triton littlebit_mm vs the reference (float64): interpreter (fp16/fp32, small shapes) and GPU
(bf16/fp16, real shapes, @pytest.mark.gpu). Decode and prefill variants are both forced."""

from __future__ import annotations

import pytest
import torch

import factorkern as fk
from factorkern.formats import LittleBitFactors

lbk = pytest.importorskip("factorkern.triton_kernels.littlebit")

TOL = {torch.float16: 1e-2, torch.bfloat16: 1e-2, torch.float32: 1e-5}


def _factors(in_f, out_f, ranks, dtype, g, device):
    terms = []
    for r in ranks:
        U = torch.randn(out_f, r, generator=g)
        V = torch.randn(in_f, r, generator=g)
        h = (torch.rand(out_f, generator=g) + 0.5) / r
        l_ = torch.rand(r, generator=g) + 0.5
        gg = (torch.rand(in_f, generator=g) + 0.5) / in_f ** 0.5
        terms.append(tuple(t.to(dtype) for t in (U, V, h, l_, gg)))
    return LittleBitFactors.from_real(terms).to(device)


def _check(in_f, out_f, ranks, dtype, lead=(3,), bias=True, noncontig=False, variant=None,
           config=None, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    F = _factors(in_f, out_f, ranks, dtype, g, device)
    if noncontig:
        x = torch.randn(*lead, 2 * in_f, generator=g).to(dtype).to(device)[..., ::2]
    else:
        x = torch.randn(*lead, in_f, generator=g).to(dtype).to(device)
    b = torch.randn(out_f, generator=g).to(dtype).to(device) if bias else None
    ref = fk.littlebit_mm(x.double(), F.to(torch.float64), None if b is None else b.double(),
                          backend="torch")
    if variant is None and config is None:
        y = fk.littlebit_mm(x, F, b, backend="triton")
    else:
        y = lbk.littlebit_mm(x.reshape(-1, in_f), *F.lists(), b, list(F.prepare("triton")),
                             variant=variant, config=config).reshape(*lead, out_f)
    assert y.dtype == dtype and y.shape == (*lead, out_f)
    assert torch.isfinite(y).all()
    err = ((y.double() - ref).norm() / ref.norm()).item()
    assert err < TOL[dtype], f"rel err {err:.2e}"
    return err


# (in, out, ranks): r and in not multiples of 32, 1 and 2 terms, unequal ranks
SHAPES = [(64, 48, [32]), (100, 70, [40, 24]), (33, 65, [17, 17]), (96, 128, [64, 64])]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("variant", ["decode", "prefill"])
@pytest.mark.parametrize("in_f,out_f,ranks", SHAPES)
def test_littlebit_interp(in_f, out_f, ranks, variant, dtype):
    _check(in_f, out_f, ranks, dtype, lead=(2, 5), variant=variant)


@pytest.mark.parametrize("n", [1, 16, 37])
def test_littlebit_public_op(n):
    # the public op picks decode (n <= 16) or prefill; no bias, strided x
    _check(100, 70, [40, 24], torch.float16, lead=(n,), bias=False, noncontig=True)
    _check(64, 48, [32], torch.float32, lead=(n,), bias=True, noncontig=True)


def test_littlebit_layout_padding_is_exact():
    # unequal ranks: padded ranks carry l = 0 and zero words and must add exactly nothing; word
    # counts are padded to multiples of 4 (16-byte rows) with zero words
    g = torch.Generator().manual_seed(1)
    F = _factors(40, 24, [9, 33], torch.float32, g, "cpu")
    u, v, h, l_, gg = F.prepare("triton")
    assert u.shape == (2, 24, 4) and v.shape == (2, 33, 4) and l_.shape == (2, 33)
    assert (l_[0, 9:] == 0).all() and (v[0, 9:] == 0).all()
    assert (u[:, :, 2:] == 0).all() and (v[:, :, 2:] == 0).all()


def test_littlebit_zero_rows():
    F = _factors(64, 48, [32], torch.float32, torch.Generator().manual_seed(0), "cpu")
    assert fk.littlebit_mm(torch.randn(0, 64), F, backend="triton").shape == (0, 48)


def test_littlebit_supports_float64():
    F = _factors(64, 48, [32], torch.float64, torch.Generator().manual_seed(0), "cpu")
    with pytest.raises(RuntimeError, match="float64"):
        fk.littlebit_mm(torch.randn(2, 64, dtype=torch.float64), F, backend="triton")


def test_littlebit_opcheck():
    F = _factors(64, 48, [32, 32], torch.float32, torch.Generator().manual_seed(0), "cpu")
    uw, vw, h, l_, g = F.lists()
    torch.library.opcheck(torch.ops.factorkern.littlebit_mm.default,
                          (torch.randn(3, 64), uw, vw, h, l_, g, None, "triton", []),
                          test_utils=("test_schema", "test_faketensor"))


# ---- GPU: real shapes (LittleBit residual, r = 256), bf16/fp16, every config ------------------
GPU_SHAPES = [(4096, 4096), (4096, 11008), (11008, 4096)]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n", [1, 16, 2048])
@pytest.mark.parametrize("in_f,out_f", GPU_SHAPES)
def test_littlebit_gpu(in_f, out_f, n, dtype):
    _check(in_f, out_f, [256, 256], dtype, lead=(n,), device="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("variant,n", [("decode", 1), ("decode", 16), ("prefill", 300)])
def test_littlebit_gpu_every_config(variant, n):
    for cfg in lbk._SPACE[variant]:
        _check(4096, 11008, [256, 200], torch.bfloat16, lead=(n,), variant=variant, config=cfg,
               device="cuda", noncontig=True)
