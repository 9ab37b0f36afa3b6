"""Triton lowrank_mm against the reference (float64), every kernel path.

Interpreter (no GPU): fp16/fp32, small shapes, decode (phased) and prefill (fused) forced, outputs
and workspaces poisoned with NaN; r <= 256 keeps t resident on chip, r > 256 takes the recompute
path. GPU tests (bf16/fp16, real shapes, autotuned) are marked ``gpu``.
"""

import pytest
import torch

import factorkern as fk
from factorkern.triton_kernels._common import force

from families import make_x

TOL = {torch.float16: 1e-2, torch.bfloat16: 1e-2, torch.float32: 1e-5}

# (leading dims of x, in, out, r, bias, x layout)
CASES = [
    ((5,), 36, 13, 7, True, "contiguous"),
    ((2, 3), 64, 48, 32, False, "strided"),
    ((1,), 128, 96, 64, True, "contiguous"),
    ((19,), 40, 24, 260, True, "transposed"),
    ((33,), 20, 128, 16, False, "contiguous"),
]




def check(lead, n_in, out, r, has_bias, layout, dtype, device="cpu", v_transposed=False):
    x = make_x(lead, n_in, dtype, layout, device)
    U = torch.randn(out, r, dtype=dtype, device=device) / r ** 0.5
    if v_transposed:  # V (in, r) as a transposed view: strides (1, in)
        V = (torch.randn(r, n_in, dtype=dtype, device=device) / n_in ** 0.5).T
    else:
        V = torch.randn(n_in, r, dtype=dtype, device=device) / n_in ** 0.5
    bias = torch.randn(out, dtype=dtype, device=device) if has_bias else None
    ref = fk.lowrank_mm(x.double(), U.double(), V.double(),
                        None if bias is None else bias.double(), backend="torch")
    y = fk.lowrank_mm(x, U, V, bias, backend="triton")
    assert y.shape == (*lead, out) and y.dtype == dtype
    assert torch.isfinite(y).all()
    err = ((y.double() - ref).norm() / ref.norm()).item()
    assert err < TOL[dtype], f"lowrank {dtype} rel err {err:.2e}"


@pytest.mark.parametrize("variant", ["decode", "prefill"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16", "fp32"])
@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}x{c[1]}-o{c[2]}-r{c[3]}" for c in CASES])
def test_matches_reference(case, dtype, variant):
    torch.manual_seed(case[1] * 1000 + case[3])
    with force(variant, poison=True):
        check(*case, dtype)


@pytest.mark.parametrize("variant", ["decode", "prefill"])
def test_strided_factor(variant):
    torch.manual_seed(3)
    with force(variant, poison=True):
        check((6,), 48, 40, 24, True, "contiguous", torch.float16, v_transposed=True)


def test_auto_picks_variant_by_m():
    torch.manual_seed(1)
    with force(poison=True):
        check((3,), 40, 24, 16, True, "contiguous", torch.float16)
        check((33,), 40, 24, 16, False, "contiguous", torch.float16)


def test_refuses_float64_with_reason():
    x = torch.randn(2, 16, dtype=torch.float64)
    U, V = torch.randn(4, 3, dtype=torch.float64), torch.randn(16, 3, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="float16, bfloat16 and float32"):
        fk.lowrank_mm(x, U, V, backend="triton")


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 16, 2048])
@pytest.mark.parametrize("r", [64, 256, 512])
@pytest.mark.parametrize("shape", [(4096, 4096), (4096, 11008)], ids=["4096x4096", "4096x11008"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_gpu_real_shapes(dtype, shape, r, m):
    n_in, out = shape
    torch.manual_seed(0)
    check((m,), n_in, out, r, True, "contiguous", dtype, device="cuda")
