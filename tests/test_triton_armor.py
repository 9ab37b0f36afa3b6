"""Triton armor_mm against the reference (float64), every kernel path and block size.

Interpreter (no GPU): fp16/fp32, small shapes, decode (phased, three phases) and prefill (fused:
B prologue, 2:4 core, A epilogue) forced, outputs and workspaces poisoned with NaN. GPU tests
(bf16/fp16, real shapes, autotuned) are marked ``gpu``.
"""

import pytest
import torch

import factorkern as fk
from factorkern.triton_kernels._common import force

from families import make_x

TOL = {torch.float16: 1e-2, torch.bfloat16: 1e-2, torch.float32: 1e-5}

# (leading dims of x, in, out, A block, B block, bias, x layout)
CASES = [
    ((5,), 128, 64, 32, 64, True, "contiguous"),
    ((2, 3), 64, 128, 128, 32, False, "strided"),
    ((1,), 128, 128, 64, 128, True, "transposed"),
    ((19,), 96, 32, 32, 32, True, "contiguous"),
]




def factors(n_in, out, ba, bb, dtype, device):
    S = fk.prune_24(torch.randn(out, n_in, dtype=dtype, device=device) / (n_in / 2) ** 0.5)
    A = fk.BlockDiag(torch.randn(out // ba, ba, ba, dtype=dtype, device=device) / ba ** 0.5)
    B = fk.BlockDiag(torch.randn(n_in // bb, bb, bb, dtype=dtype, device=device) / bb ** 0.5)
    return A, S, B


def check(lead, n_in, out, ba, bb, has_bias, layout, dtype, device="cpu"):
    x = make_x(lead, n_in, dtype, layout, device)
    A, S, B = factors(n_in, out, ba, bb, dtype, device)
    bias = torch.randn(out, dtype=dtype, device=device) if has_bias else None
    f64 = torch.float64
    ref = fk.armor_mm(x.double(), A.to(f64), S.to(f64), B.to(f64),
                      None if bias is None else bias.double(), backend="torch")
    y = fk.armor_mm(x, A, S, B, bias, backend="triton")
    assert y.shape == (*lead, out) and y.dtype == dtype
    assert torch.isfinite(y).all()
    err = ((y.double() - ref).norm() / ref.norm()).item()
    assert err < TOL[dtype], f"armor {dtype} rel err {err:.2e}"


@pytest.mark.parametrize("variant", ["decode", "prefill"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16", "fp32"])
@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}x{c[1]}-o{c[2]}-a{c[3]}-b{c[4]}"
                                             for c in CASES])
def test_matches_reference(case, dtype, variant):
    torch.manual_seed(case[1] * 1000 + case[2])
    with force(variant, poison=True):
        check(*case, dtype)


def test_auto_picks_variant_by_m():
    torch.manual_seed(1)
    with force(poison=True):
        check((3,), 64, 64, 32, 32, True, "contiguous", torch.float16)
        check((33,), 64, 64, 32, 32, False, "contiguous", torch.float16)


def test_refuses_block_size_with_reason():
    x = torch.randn(2, 48, dtype=torch.float16)
    A, S, B = factors(48, 32, 32, 16, torch.float16, "cpu")
    with pytest.raises(RuntimeError, match="block sizes"):
        fk.armor_mm(x, A, S, B, backend="triton")


def test_refuses_float64_with_reason():
    x = torch.randn(2, 64, dtype=torch.float64)
    A, S, B = factors(64, 32, 32, 32, torch.float64, "cpu")
    with pytest.raises(RuntimeError, match="float16, bfloat16 and float32"):
        fk.armor_mm(x, A, S, B, backend="triton")


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 16, 2048])
@pytest.mark.parametrize("block", [32, 64, 128])
@pytest.mark.parametrize("shape", [(4096, 4096), (4096, 11008)], ids=["4096x4096", "4096x11008"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_gpu_real_shapes(dtype, shape, block, m):
    n_in, out = shape
    if out % block:
        pytest.skip(f"out={out} is not a multiple of block {block}")
    torch.manual_seed(0)
    check((m,), n_in, out, block, block, True, "contiguous", dtype, device="cuda")
