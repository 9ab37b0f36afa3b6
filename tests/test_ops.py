"""Every op vs W rebuilt densely (float64, rel. error < 1e-12), low-precision dtypes vs the
float64 result, batch dims, bias, non-contiguous x, zero-size batch; gradcheck and opcheck."""

import pytest
import torch

import factorkern as fk
from factorkern.formats import BlockDiag, LittleBitFactors, MonarchFactors

from families import OPS, SHAPES, make_case, rel_err

CASES = [(op, shape) for op in OPS for shape in SHAPES[op]]


def _x(lead, n_in, dtype, seed=1, contiguous=True):
    g = torch.Generator().manual_seed(seed)
    if contiguous:
        return torch.randn(*lead, n_in, generator=g, dtype=torch.float64).to(dtype)
    # A strided view: every other column of a wider tensor, then a transposed batch.
    big = torch.randn(*lead, 2 * n_in, generator=g, dtype=torch.float64).to(dtype)
    x = big[..., ::2]
    assert not x.is_contiguous()
    return x


@pytest.mark.parametrize("op,shape", CASES)
@pytest.mark.parametrize("lead", [(5,), (2, 3), ()])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("contiguous", [True, False])
def test_matches_dense_float64(op, shape, lead, with_bias, contiguous):
    out_f, in_f = shape
    case = make_case(op, out_f, in_f)
    x = _x(lead, in_f, torch.float64, contiguous=contiguous)
    bias = torch.randn(out_f, dtype=torch.float64) if with_bias else None
    y = case.call(x, bias)
    ref = x @ case.W.T + (bias if with_bias else 0)
    assert y.shape == (*lead, out_f) and y.dtype == torch.float64
    assert rel_err(y, ref) < 1e-12


@pytest.mark.parametrize("op,shape", CASES)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 1e-2),
                                       (torch.bfloat16, 1e-2)])
def test_low_precision_dtypes(op, shape, dtype, tol):
    out_f, in_f = shape
    case = make_case(op, out_f, in_f, dtype)
    x = _x((3, 4), in_f, dtype)
    bias = torch.randn(out_f, dtype=torch.float64).to(dtype)
    y = case.call(x, bias)
    assert y.dtype == dtype and y.shape == (3, 4, out_f)
    # Oracle: the same (rounded) factors and x in float64.
    ref = x.double() @ case.W.double().T + bias.double()
    assert rel_err(y, ref) < tol


@pytest.mark.parametrize("op", OPS)
def test_zero_batch(op):
    out_f, in_f = SHAPES[op][0]
    case = make_case(op, out_f, in_f)
    y = case.call(torch.randn(0, in_f, dtype=torch.float64))
    assert y.shape == (0, out_f)
    y = case.call(torch.randn(2, 0, in_f, dtype=torch.float64))
    assert y.shape == (2, 0, out_f)


def test_output_dtype_follows_x_and_backend_torch_explicit():
    case = make_case("lowrank_mm", 8, 12, torch.float32)
    x = torch.randn(3, 12)
    assert torch.equal(case.call(x, backend="torch"), case.call(x))


# ---- gradients ------------------------------------------------------------------------------
def _grad_setup(op, out_f, in_f):
    """(tensors needing grad, fn(x, *tensors, bias) -> y) for gradcheck in float64."""
    case = make_case(op, out_f, in_f)
    f = case.factors
    if op == "dense_sparse_mm":
        D, S = f
        return [D, S.values], lambda x, D, v, b: fk.dense_sparse_mm(x, D, S.with_values(v), b)
    if op == "sparse_dense_mm":
        S, D = f
        return [S.values, D], lambda x, v, D, b: fk.sparse_dense_mm(x, S.with_values(v), D, b)
    if op == "armor_mm":
        A, S, B = f
        return ([A.blocks, S.values, B.blocks],
                lambda x, a, v, bb, b: fk.armor_mm(x, BlockDiag(a), S.with_values(v),
                                                   BlockDiag(bb), b))
    if op == "littlebit_mm":
        (F,) = f
        flat = [t for term in F.terms for t in term[2:]]

        def fn(x, *args):
            *scales, b = args
            terms = [(U, V, *scales[3 * i:3 * i + 3]) for i, (U, V, *_) in enumerate(F.terms)]
            return fk.littlebit_mm(x, LittleBitFactors(terms, check=False), b)
        return flat, fn
    if op == "monarch_mm":
        (M,) = f
        return [M.w1, M.w2], lambda x, w1, w2, b: fk.monarch_mm(
            x, MonarchFactors(w1, w2, M.in_features, M.out_features), b)
    if op == "lowrank_mm":
        U, V = f
        return [U, V], lambda x, U, V, b: fk.lowrank_mm(x, U, V, b)
    if op == "sparse_mm":
        (S,) = f
        return [S.values], lambda x, v, b: fk.sparse_mm(x, S.with_values(v), b)
    raise ValueError(op)


@pytest.mark.parametrize("op,shape", [(op, SHAPES[op][1]) for op in OPS])
def test_gradcheck(op, shape):
    out_f, in_f = shape
    params, fn = _grad_setup(op, out_f, in_f)
    params = [p.detach().clone().requires_grad_() for p in params]
    x = torch.randn(2, 3, in_f, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(out_f, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fn, (x, *params, bias))


@pytest.mark.parametrize("op", OPS)
def test_backward_runs_through_layers_of_autograd(op):
    # A loss through the op gives the same gradients as the same loss through x @ W.T.
    out_f, in_f = SHAPES[op][0]
    params, fn = _grad_setup(op, out_f, in_f)
    x = torch.randn(4, in_f, dtype=torch.float64, requires_grad=True)
    y = fn(x, *params, None)
    (y ** 2).sum().backward()
    W = make_case(op, out_f, in_f).W
    x2 = x.detach().clone().requires_grad_()
    ((x2 @ W.T) ** 2).sum().backward()
    assert rel_err(x.grad, x2.grad) < 1e-12


# ---- opcheck: schema, fake impl, autograd registration ----------------------------------------
def _raw_args(op, out_f, in_f, dtype=torch.float64):
    case = make_case(op, out_f, in_f, dtype)
    f = case.factors
    x = torch.randn(5, in_f, dtype=dtype, requires_grad=True)
    b = torch.randn(out_f, dtype=dtype)
    if op == "dense_sparse_mm":
        D, S = f
        return (x, D.requires_grad_(), S.values.requires_grad_(), S.meta, b, "torch", [])
    if op == "sparse_dense_mm":
        S, D = f
        return (x, S.values.requires_grad_(), S.meta, D.requires_grad_(), b, "torch", [])
    if op == "armor_mm":
        A, S, B = f
        return (x, A.blocks.requires_grad_(), S.values.requires_grad_(), S.meta,
                B.blocks.requires_grad_(), b, "torch", [])
    if op == "littlebit_mm":
        uw, vw, h, l, g = f[0].lists()
        return (x, uw, vw, [t.requires_grad_() for t in h], [t.requires_grad_() for t in l],
                [t.requires_grad_() for t in g], b, "torch", [])
    if op == "monarch_mm":
        (M,) = f
        return (x, M.w1.requires_grad_(), M.w2.requires_grad_(), M.out_features, b, "torch", [])
    if op == "lowrank_mm":
        U, V = f
        return (x, U.requires_grad_(), V.requires_grad_(), b, "torch", [])
    if op == "sparse_mm":
        (S,) = f
        return (x, S.values.requires_grad_(), S.meta, b, "torch", [])


@pytest.mark.parametrize("op", OPS)
def test_opcheck(op):
    out_f, in_f = SHAPES[op][1]
    args = _raw_args(op, out_f, in_f)
    torch.library.opcheck(getattr(torch.ops.factorkern, op).default, args)


def test_backends_report():
    info = fk.backends()
    assert set(info) >= {"torch", "triton", "cuda", "cuda_sm90", "auto"}
    assert info["torch"]["available"] is True and info["auto"]["available"] is True
    for name, v in info.items():
        assert isinstance(v["reason"], str) and v["reason"]
        if name not in ("torch", "auto"):
            # Every kernel is either proven by this device's record or kept out of auto.
            assert set(v["ops"].values()) <= {"proven", "unproven"}
    if not torch.cuda.is_available():
        assert all("library path" in why for why in info["auto"]["ops"].values())


def test_auto_uses_the_library_path_on_cpu(monkeypatch):
    from factorkern import dispatch

    case = make_case("lowrank_mm", 8, 12)
    x = torch.randn(2, 12, dtype=torch.float64)
    assert dispatch.resolve("lowrank_mm", "auto", x) == "torch"
    monkeypatch.setenv("FACTORKERN_BACKEND", "torch")
    assert dispatch.resolve("lowrank_mm", "auto", x) == "torch"
    torch.testing.assert_close(case.call(x), x @ case.W.T)


def test_unavailable_backend_by_name_raises_with_reason(monkeypatch):
    case = make_case("lowrank_mm", 8, 12)
    x = torch.randn(2, 12, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="backend 'cuda'"):
        case.call(x, backend="cuda")
    monkeypatch.setenv("FACTORKERN_BACKEND", "cuda")
    with pytest.raises(RuntimeError, match="backend 'cuda'"):
        case.call(x)
    monkeypatch.setenv("FACTORKERN_BACKEND", "tpu")
    with pytest.raises(ValueError, match="FACTORKERN_BACKEND"):
        case.call(x)
    monkeypatch.delenv("FACTORKERN_BACKEND")
    with pytest.raises(ValueError, match="backend must be one of"):
        case.call(x, backend="cudnn")


def test_triton_backend_without_gpu_or_interpreter(monkeypatch):
    from factorkern import dispatch

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(dispatch, "_cuda_available", lambda: False)
    ok, why = dispatch.availability("triton")
    assert not ok and ("no CUDA GPU" in why or "not importable" in why)
    case = make_case("lowrank_mm", 8, 12)
    with pytest.raises(RuntimeError, match="triton"):
        case.call(torch.randn(2, 12, dtype=torch.float64), backend="triton")
