"""Triton dense_sparse_mm / sparse_dense_mm against the reference (float64), every kernel path.

Without a GPU the kernels run in Triton's interpreter (conftest sets TRITON_INTERPRET=1): fp16 and
fp32 only (the interpreter's bf16 dot is wrong), small shapes, one small config. ``force`` picks
the decode (phased) or prefill (fused) kernel whatever M is, and poisons outputs and workspaces
with NaN. GPU tests (bf16/fp16, real shapes, autotuned) are marked ``gpu``.
"""

import pytest
import torch

import factorkern as fk
from factorkern.triton_kernels._common import force

from families import make_x

TOL = {torch.float16: 1e-2, torch.bfloat16: 1e-2, torch.float32: 1e-5}
OPS = ("dense_sparse_mm", "sparse_dense_mm")

# (leading dims of x, in, k, out, bias, x layout): odd and aligned sizes, M = 1, batch dims,
# k > 256 (t not resident: the recompute path of the prefill kernel), strided and transposed x.
CASES = [
    ((5,), 36, 20, 13, True, "contiguous"),
    ((2, 3), 64, 32, 48, False, "strided"),
    ((1,), 128, 64, 96, True, "contiguous"),
    ((17,), 44, 300, 24, True, "transposed"),
    ((4, 5), 20, 8, 128, False, "contiguous"),
]




def make_factors(op, n_in, k, out, dtype, device):
    if op == "dense_sparse_mm":
        S = fk.prune_24(torch.randn(k, n_in, dtype=dtype, device=device) / n_in ** 0.5)
        D = torch.randn(out, k, dtype=dtype, device=device) / k ** 0.5
        return D, S
    S = fk.prune_24(torch.randn(out, k, dtype=dtype, device=device) / k ** 0.5)
    D = torch.randn(k, n_in, dtype=dtype, device=device) / n_in ** 0.5
    return S, D


def call(op, x, f1, f2, bias, backend):
    return getattr(fk, op)(x, f1, f2, bias, backend=backend)


def rel_err(y, ref):
    return ((y.double() - ref).norm() / ref.norm()).item()


def check(op, lead, n_in, k, out, has_bias, layout, dtype, device="cpu"):
    x = make_x(lead, n_in, dtype, layout, device)
    f1, f2 = make_factors(op, n_in, k, out, dtype, device)
    bias = torch.randn(out, dtype=dtype, device=device) if has_bias else None
    ref = call(op, x.double(), f1.to(torch.float64), f2.to(torch.float64),
               None if bias is None else bias.double(), "torch")
    y = call(op, x, f1, f2, bias, "triton")
    assert y.shape == (*lead, out) and y.dtype == dtype
    assert torch.isfinite(y).all()
    err = rel_err(y, ref)
    assert err < TOL[dtype], f"{op} {dtype} rel err {err:.2e}"
    return err


@pytest.mark.parametrize("variant", ["decode", "prefill"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16", "fp32"])
@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}x{c[1]}-k{c[2]}-o{c[3]}" for c in CASES])
@pytest.mark.parametrize("op", OPS)
def test_matches_reference(op, case, dtype, variant):
    torch.manual_seed(case[1] * 1000 + case[2])
    with force(variant, poison=True):
        check(op, *case, dtype)


@pytest.mark.parametrize("op", OPS)
def test_auto_picks_variant_by_m(op):
    # Unforced: M <= 16 runs the decode kernel, larger M the prefill kernel; both must match.
    torch.manual_seed(1)
    with force(poison=True):
        check(op, (3,), 40, 24, 16, True, "contiguous", torch.float16)
        check(op, (33,), 40, 24, 16, False, "contiguous", torch.float16)


@pytest.mark.parametrize("op", OPS)
def test_refuses_float64_with_reason(op):
    x = torch.randn(2, 16, dtype=torch.float64)
    f1, f2 = make_factors(op, 16, 8, 4, torch.float64, "cpu")
    with pytest.raises(RuntimeError, match="float16, bfloat16 and float32"):
        call(op, x, f1, f2, None, "triton")


def test_zero_rows():
    x = torch.randn(0, 16, dtype=torch.float16)
    D, S = make_factors("dense_sparse_mm", 16, 8, 4, torch.float16, "cpu")
    assert fk.dense_sparse_mm(x, D, S, backend="triton").shape == (0, 4)


# ---------------------------------------------------------------------------------------------
# GPU: real shapes, autotuned, bf16/fp16. k = in / 2.
# ---------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 16, 2048])
@pytest.mark.parametrize("shape", [(4096, 4096), (4096, 11008)], ids=["4096x4096", "4096x11008"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("op", OPS)
def test_gpu_real_shapes(op, dtype, shape, m):
    n_in, out = shape
    torch.manual_seed(0)
    check(op, (m,), n_in, n_in // 2, out, True, "contiguous", dtype, device="cuda")
