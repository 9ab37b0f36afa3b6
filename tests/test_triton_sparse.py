"""Triton sparse_mm (plain 2:4, W = S) against the float64 oracle, every kernel path.

Without a GPU the kernel runs in Triton's interpreter (conftest sets TRITON_INTERPRET=1): fp16
and fp32 only (the interpreter's bf16 dot is wrong), small shapes. ``force`` picks the decode or
prefill space whatever M is and poisons the output with NaN; ``force(config=EACH)`` replays every
config of a space through the real launcher. GPU tests (bf16/fp16, real shapes, autotuned) are
marked ``gpu``.
"""

import pytest
import torch

import factorkern as fk
from factorkern.triton_kernels._common import EACH, force

from families import make_x, rel_err

TOL = {torch.float16: 1e-2, torch.bfloat16: 1e-2, torch.float32: 1e-5}

# (leading dims of x, in, out, bias, x layout): in not a multiple of 16 (a padded last meta word)
# or of the tile, odd out, M = 1, batch dims, strided and transposed x.
CASES = [
    ((5,), 36, 13, True, "contiguous"),
    ((2, 3), 64, 48, False, "strided"),
    ((1,), 300, 70, True, "contiguous"),
    ((17,), 44, 24, True, "transposed"),
    ((4, 5), 20, 130, False, "contiguous"),
]


def make_s(out, n_in, dtype, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, n_in, generator=g, dtype=torch.float64) / (n_in / 2) ** 0.5
    return fk.prune_24(w.to(dtype).to(device))


def check(lead, n_in, out, has_bias, layout, dtype, device="cpu"):
    x = make_x(lead, n_in, dtype, layout, device)
    S = make_s(out, n_in, dtype, device, seed=n_in * 1000 + out)
    bias = torch.randn(out, dtype=dtype, device=device) if has_bias else None
    ref = fk.sparse_mm(x.double(), S.to(torch.float64),
                       None if bias is None else bias.double(), backend="torch")
    y = fk.sparse_mm(x, S, bias, backend="triton")
    assert y.shape == (*lead, out) and y.dtype == dtype
    assert torch.isfinite(y).all()
    err = rel_err(y, ref)
    assert err < TOL[dtype], f"sparse_mm {dtype} rel err {err:.2e}"


@pytest.mark.parametrize("variant", ["decode", "prefill"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16", "fp32"])
@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}x{c[1]}-o{c[2]}" for c in CASES])
def test_matches_reference(case, dtype, variant):
    torch.manual_seed(case[1] + case[2])
    with force(variant, poison=True):
        check(*case, dtype)


def test_auto_picks_variant_by_m():
    torch.manual_seed(1)
    with force(poison=True):
        check((3,), 40, 16, True, "contiguous", torch.float16)     # decode
        check((33,), 40, 16, False, "contiguous", torch.float16)   # prefill


@pytest.mark.parametrize("variant,m", [("decode", 3), ("prefill", 37)])
def test_every_config_replays(variant, m):
    """Every config of the space (the interpreter ignores warps and stages), bound and
    launched by the real launcher, matches the oracle; NaN-poisoned outputs."""
    from factorkern.triton_kernels import sparse

    dtype = torch.float16
    S = make_s(72, 160, dtype, seed=m)
    g = torch.Generator().manual_seed(m)
    x = torch.randn(m, 160, generator=g).to(dtype)
    bias = torch.randn(72, generator=g).to(dtype)
    with force(variant, config=EACH, poison=True) as runs:
        fk.sparse_mm(x, S, bias, backend="triton")
    space = sparse._DECODE_CONFIGS if variant == "decode" else sparse._PREFILL_CONFIGS
    metas = {tuple(sorted((k, v) for k, v in c.items() if k not in ("num_warps", "num_stages")))
             for c in space}
    assert len(runs) == len(metas)
    ref = fk.sparse_mm(x.double(), S.to(torch.float64), bias.double(), backend="torch")
    for _, cfg, y in runs:
        assert torch.isfinite(y).all(), f"{cfg}: unwritten (NaN) outputs"
        assert rel_err(y, ref) < TOL[dtype], cfg


def test_nan_and_inf_propagate_like_f_linear():
    S = make_s(24, 64, torch.float32)
    x = torch.randn(4, 64)
    x[1, 5] = float("nan")
    x[2, 7] = float("inf")
    y = fk.sparse_mm(x, S, backend="triton")
    ref = torch.nn.functional.linear(x.double(), S.to(torch.float64).to_dense())
    assert torch.equal(torch.isnan(y), torch.isnan(ref))
    fin = torch.isfinite(ref)
    assert rel_err(y[fin], ref[fin]) < 1e-5


def test_refuses_float64_with_reason():
    S = make_s(4, 16, torch.float64)
    x = torch.randn(2, 16, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="float16, bfloat16 and float32"):
        fk.sparse_mm(x, S, backend="triton")


def test_zero_rows():
    S = make_s(4, 16, torch.float16)
    assert fk.sparse_mm(torch.randn(0, 16, dtype=torch.float16), S,
                        backend="triton").shape == (0, 4)


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 16, 2048])
@pytest.mark.parametrize("shape", [(4096, 4096), (4096, 11008)], ids=["4096x4096", "4096x11008"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_gpu_real_shapes(dtype, shape, m):
    n_in, out = shape
    torch.manual_seed(0)
    check((m,), n_in, out, True, "contiguous", dtype, device="cuda")
