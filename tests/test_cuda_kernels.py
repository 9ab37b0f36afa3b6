"""GPU numerics of the csrc/ kernels (backend "cuda") against the float64 reference: Llama-2-7B
shapes, M in 1, 3, 4, 7, 16 (odd M and every token bucket), fp16 and bf16, bias on/off, leading
batch dims, non-contiguous x, NaN-poisoned outputs. All ``@pytest.mark.gpu``: they skip without
CUDA; run them on the device with ``pytest -m gpu tests/test_cuda_*.py``."""

from __future__ import annotations

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
