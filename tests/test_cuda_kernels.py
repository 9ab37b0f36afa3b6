"""GPU numerics of the csrc/ kernels (backend "cuda") against the float64 reference: Llama-2-7B
shapes, M in 1, 3, 4, 7, 16 (odd M and every token bucket), fp16 and bf16, bias on/off, leading
batch dims, non-contiguous x, NaN-poisoned outputs. All ``@pytest.mark.gpu``: they skip without
CUDA; run them on the device with ``pytest -m gpu tests/test_cuda_*.py``."""

from __future__ import annotations

import math

import pytest
import torch

import factorkern as fk
from families import make_case, rel_err

pytestmark = pytest.mark.gpu

SHAPES = [(4096, 4096), (4096, 11008), (11008, 4096)]  # (out, in)
MS = [1, 3, 4, 7, 16]
DTYPES = [torch.float16, torch.bfloat16]
TOL = 1e-2
SIZE = {"dense_sparse_mm": dict(k=2048), "sparse_dense_mm": dict(k=2048),
        "armor_mm": dict(block=128), "littlebit_mm": dict(r=512, nterms=2)}

_CACHE: dict = {}


def _case(op, out_f, in_f, dtype, **size):
    key = (op, out_f, in_f, dtype, tuple(sorted(size.items())))
    if key not in _CACHE:
        _CACHE.clear()  # one big case alive at a time
        case = make_case(op, out_f, in_f, dtype=dtype, **(size or SIZE[op]))
        factors = tuple(f.cuda() if isinstance(f, torch.Tensor) else f.to("cuda")
                        for f in case.factors)
        # The oracle: the reference op in float64 on the same (rounded) factors, on the GPU
        # (a dense float64 W of ARMOR at 11008 x 11008 would be far too slow on the host).
        f64 = tuple(f.to(torch.float64) for f in factors)
        _CACHE[key] = (factors, (op, f64))
    return _CACHE[key]


def _run(op, factors, x, bias, **kw):
    return getattr(fk, op)(x, *factors, bias, backend="cuda", **kw)


def _want(ref, x, bias):
    op, f64 = ref
    return getattr(fk, op)(x.double(), *f64, None if bias is None else bias.double(),
                           backend="torch")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("m", MS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("op", list(SIZE))
def test_numerics_vs_reference(op, shape, m, dtype):
    out_f, in_f = shape
    factors, ref = _case(op, out_f, in_f, dtype)
    g = torch.Generator(device="cuda").manual_seed(m)
    x = torch.randn(m, in_f, device="cuda", generator=g).to(dtype)
    bias = torch.randn(out_f, device="cuda", generator=g).to(dtype) if m % 2 else None
    y = _run(op, factors, x, bias)
    assert y.dtype == dtype and y.shape == (m, out_f)
    assert torch.isfinite(y).all()
    assert rel_err(y, _want(ref, x, bias)) < TOL


@pytest.mark.parametrize("op", list(SIZE))
def test_batch_dims_non_contiguous_x_and_poisoned_out(op):
    from factorkern import cuda as fkc

    dtype = torch.float16
    factors, ref = _case(op, 4096, 4096, dtype)
    x = torch.randn(2, 3, 2 * 4096, device="cuda").to(dtype)[..., ::2]  # (2, 3, in), strided
    assert not x.is_contiguous()
    bias = torch.randn(4096, device="cuda").to(dtype)
    y = _run(op, factors, x, bias)
    assert y.shape == (2, 3, 4096)
    assert rel_err(y, _want(ref, x.reshape(6, -1), bias).reshape(2, 3, -1)) < TOL
    # The glue writing into a NaN-poisoned buffer: every element must be overwritten.
    x2 = x.reshape(6, -1)
    out = torch.full((6, 4096), float("nan"), device="cuda", dtype=dtype)
    if op == "littlebit_mm":
        F = factors[0]
        args = (*F.lists(), bias, list(F.prepare("cuda")))
    elif op == "armor_mm":
        A, S, B = factors
        args = (A.blocks, S.values, S.meta, B.blocks, bias, [])
    elif op == "dense_sparse_mm":
        D, S = factors
        args = (D, S.values, S.meta, bias, [])
    else:
        S, D = factors
        args = (S.values, S.meta, D, bias, [])
    getattr(fkc, op)(x2, *args, out=out)
    torch.cuda.synchronize()
    assert not out.isnan().any()
    assert rel_err(out, _want(ref, x2, bias)) < TOL


@pytest.mark.parametrize("rank", [300, 129])
def test_littlebit_odd_rank_padding(rank):
    factors, ref = _case("littlebit_mm", 1024, 2048, torch.float16, r=rank, nterms=2)
    x = torch.randn(5, 2048, device="cuda").half()
    assert rel_err(_run("littlebit_mm", factors, x, None), _want(ref, x, None)) < TOL


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("m", [1, 7, 16])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_littlebit_popcount_matches_quantized_reference(shape, m, dtype, capsys):
    from factorkern.reference import littlebit_quant as qref

    out_f, in_f = shape
    factors, ref = _case("littlebit_mm", out_f, in_f, dtype)
    F = factors[0]
    x = torch.randn(m, in_f, device="cuda").to(dtype)
    bias = torch.randn(out_f, device="cuda").to(dtype)
    y = _run("littlebit_mm", factors, x, bias, quantize_activations=True)
    want_q = qref.littlebit_mm_popcount(x, *F.lists(), bias).double()
    # Same quantized math: only fp32 rounding of the second stage and the output cast differ.
    assert rel_err(y, want_q) < (4e-3 if dtype == torch.float16 else 8e-3)
    err_exact = rel_err(y, _want(ref, x, bias))
    with capsys.disabled():
        print(f"\npopcount {shape} m={m} {dtype}: vs exact fp reference {err_exact:.2e}")
    assert err_exact < 3e-2


def test_more_than_16_tokens_is_refused_with_a_reason():
    factors, _ = _case("armor_mm", 4096, 4096, torch.float16)
    x = torch.randn(17, 4096, device="cuda").half()
    with pytest.raises(RuntimeError, match="N <= 16"):
        _run("armor_mm", factors, x, None)
    # auto never picks an unproven kernel: the reference runs.
    y = fk.armor_mm(x, *factors)
    assert y.shape == (17, 4096)


def test_cuda_graph_capture():
    factors, ref = _case("dense_sparse_mm", 4096, 4096, torch.float16)
    x = torch.randn(4, 4096, device="cuda").half()
    _run("dense_sparse_mm", factors, x, None)  # warm-up (occupancy query, allocations)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = _run("dense_sparse_mm", factors, x, None)
    x.copy_(torch.randn_like(x))
    graph.replay()
    torch.cuda.synchronize()
    assert rel_err(y, _want(ref, x, None)) < TOL


def test_popcount_nan_or_inf_in_a_token_row_gives_a_nan_output_row():
    # Agreed semantics (factorkern.reference.littlebit_quant): a term whose x * g row holds a
    # NaN or an infinity contributes NaN to that whole output row; the other rows are unchanged.
    from factorkern.reference import littlebit_quant as qref

    factors, _ = _case("littlebit_mm", 1024, 2048, torch.float16, r=300, nterms=2)
    F = factors[0]
    x = torch.randn(6, 2048, device="cuda").half()
    x[1, 7] = float("nan")
    x[3, 100] = float("inf")
    x[4, :] = float("nan")
    y = _run("littlebit_mm", factors, x, None, quantize_activations=True)
    bad = torch.tensor([1, 3, 4])
    good = torch.tensor([0, 2, 5])
    assert y[bad].isnan().all()
    assert torch.isfinite(y[good]).all()
    want = qref.littlebit_mm_popcount(x[good], *F.lists(), None).double()
    assert rel_err(y[good], want) < 4e-3


@pytest.mark.parametrize("op", ["dense_sparse_mm", "sparse_dense_mm", "armor_mm"])
def test_intermediates_beyond_the_fp16_range_stay_finite(op):
    # The decode kernels keep intermediates in fp32: the first factor scaled up by a power of two
    # that puts the first product ~10x above 65504, the last one scaled down by the same, give a
    # normal output (an fp16 intermediate would be inf).
    factors, ref = _case(op, 4096, 4096, torch.float16)
    x = torch.randn(3, 4096, device="cuda").half()
    if op == "dense_sparse_mm":
        D, S = factors
        first = fk.dense_sparse_mm(x.double(), torch.eye(S.shape[0], device="cuda").double(),
                                   S.to(torch.float64), backend="torch")
    elif op == "sparse_dense_mm":
        S, D = factors
        first = x.double() @ D.double().T
    else:
        A, S, B = factors
        u = x.double() @ B.to_dense().double().T
        first = torch.cat([u.flatten(), (u @ S.to_dense().double().T).flatten()])
    up = 2.0 ** math.ceil(math.log2(6.5e5 / float(first.abs().max())))
    down = 1.0 / up
    if op == "dense_sparse_mm":
        f = (D * down, type(S)(S.values * up, S.meta, S.cols))
        big = S.values * up
    elif op == "sparse_dense_mm":
        f = (type(S)(S.values * down, S.meta, S.cols), D * up)
        big = D * up
    else:
        f = (type(A)(A.blocks * down), S, type(B)(B.blocks * up))
        big = B.blocks * up
    if not torch.isfinite(big).all():
        pytest.skip("the scaled factor itself does not fit fp16")
    y = _run(op, f, x, None)
    f64 = tuple(t.to(torch.float64) for t in f)
    want = getattr(fk, op)(x.double(), *f64, None, backend="torch")
    assert torch.isfinite(y).all() and want.abs().max() < 6e4
    assert rel_err(y, want) < TOL


def test_every_token_bucket_after_another():
    # The co-resident grid is cached per kernel: a 16-token call after a 1-token call must not
    # reuse the 1-token kernel's grid (cudaErrorCooperativeLaunchTooLarge).
    factors, ref = _case("sparse_dense_mm", 4096, 4096, torch.bfloat16)
    for m in (1, 16, 4, 1, 16):
        x = torch.randn(m, 4096, device="cuda").bfloat16()
        assert rel_err(_run("sparse_dense_mm", factors, x, None), _want(ref, x, None)) < TOL


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_tensors_on_another_device_than_the_current_one():
    factors, ref = _case("dense_sparse_mm", 4096, 4096, torch.float16)
    f1 = tuple(t.to("cuda:1") for t in factors)
    x = torch.randn(4, 4096, device="cuda:1").half()
    with torch.cuda.device(0):
        y = _run("dense_sparse_mm", f1, x, None)
    assert y.device == x.device
    assert rel_err(y.to("cuda:0"), _want(ref, x.to("cuda:0"), None)) < TOL
