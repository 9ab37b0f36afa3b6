"""The library path (backend "torch", factorkern.library) against the float64 oracle, forward and
backward, every op and dtype; the 2:4 layout decision (torch's semi-structured tensor or the
dense decode) and its plumbing on the CPU; on a GPU (-m gpu) the semi-structured path itself."""

import pytest
import torch

import factorkern as fk
from factorkern import dispatch, layouts, library
from factorkern import reference as ref
from factorkern.library import _sparse24 as s24

from families import OPS, SHAPES, make_case, rel_err
from test_ops import _grad_setup

TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}
DTYPES = list(TOL)


def _cast(params, dtype):
    return [p.detach().to(dtype).requires_grad_() for p in params]


# "cpu": the compute dtype of the CPU (half computed in fp32); "native": in the input dtype, the
# GPU's arithmetic (half GEMMs accumulating in fp32), forced on the CPU.
COMPUTE = [(d, "cpu") for d in DTYPES] + [(torch.float16, "native"), (torch.bfloat16, "native")]


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype,compute", COMPUTE)
def test_forward_and_backward_match_the_oracle(op, dtype, compute, monkeypatch):
    """Forward and every gradient of the library path in ``dtype`` against the float64 oracle
    on the same (rounded) inputs."""
    if compute == "native":
        for mod in (library._common, library.littlebit, library):
            monkeypatch.setattr(mod, "compute_dtype", lambda dtype, device: dtype)
    out_f, in_f = SHAPES[op][1]
    params64, fn = _grad_setup(op, out_f, in_f)
    g = torch.Generator().manual_seed(1)
    x64 = torch.randn(2, 3, in_f, generator=g, dtype=torch.float64).to(dtype).double()
    b64 = torch.randn(out_f, generator=g, dtype=torch.float64).to(dtype).double()
    gy = torch.randn(2, 3, out_f, generator=g, dtype=torch.float64).to(dtype).double()
    params64 = _cast(_cast(params64, dtype), torch.float64)       # the rounded values
    inputs64 = [x64.requires_grad_(), *params64, b64.requires_grad_()]
    y64 = fn(*inputs64[:-1], inputs64[-1])
    grads64 = torch.autograd.grad(y64, inputs64, gy)
    inputs = _cast(inputs64, dtype)
    y = fn(*inputs[:-1], inputs[-1])
    assert y.dtype == dtype and y.is_contiguous()
    grads = torch.autograd.grad(y, inputs, gy.to(dtype))
    assert rel_err(y, y64) < TOL[dtype]
    for i, (a, b) in enumerate(zip(grads, grads64)):
        assert a.dtype == dtype and rel_err(a, b) < TOL[dtype], (i, rel_err(a, b))


@pytest.mark.parametrize("op", OPS)
def test_backward_computes_only_what_is_needed(op):
    """Frozen factors (only x needs a gradient): the same dx, and no factor gradient."""
    out_f, in_f = SHAPES[op][0]
    params, fn = _grad_setup(op, out_f, in_f)
    x = torch.randn(4, in_f, dtype=torch.float64, requires_grad=True)
    dx_all = torch.autograd.grad(fn(x, *[p.requires_grad_() for p in params], None).sum(), x)[0]
    frozen = [p.detach() for p in params]
    y = fn(x, *frozen, None)
    dx = torch.autograd.grad(y.sum(), x)[0]
    torch.testing.assert_close(dx, dx_all, rtol=1e-12, atol=1e-12)


def test_littlebit_folded_layout_is_exact_for_g_and_rounds_h_times_l_once():
    F = make_case("littlebit_mm", 16, 40, torch.float16).factors[0]
    Vf, Uf = library.littlebit.layout(F)
    # On the CPU half is computed in fp32: the fold is exact there.
    assert Vf.dtype == Uf.dtype == torch.float32
    assert Vf.shape == (sum(F.ranks), 40) and Uf.shape == (16, sum(F.ranks))
    want = sum(h.float()[:, None] * (U.unpack() * l.float()) @ (V.unpack() * g.float())
               for U, V, h, l, g in F.terms)
    torch.testing.assert_close(Uf @ Vf, want, rtol=1e-6, atol=1e-6)
    Vh, Uh = library.littlebit.fold(*F.lists(), 40, torch.float16)
    U0, V0, h0, l0, g0 = F.terms[0]
    assert torch.equal(Vh[:F.ranks[0]], V0.unpack(torch.float16) * g0)        # exact
    assert torch.equal(Uh[:, :F.ranks[0]], (h0.float()[:, None] * U0.unpack() * l0.float()
                                            ).half())                           # one rounding


def test_popcount_library_path_is_the_quantized_reference_on_the_cpu():
    F = make_case("littlebit_mm", 16, 64, torch.float32).factors[0]
    x = torch.randn(3, 64)
    y = fk.littlebit_mm(x, F, quantize_activations=True)
    want = fk.reference.littlebit_quant.littlebit_mm_popcount(x, *F.lists())
    assert torch.equal(y, want)


# ---- the 2:4 layout -----------------------------------------------------------------------------
H100, A100, T4 = (9, 0), (8, 0), (7, 5)


@pytest.mark.parametrize("args,key", [
    (("cpu", torch.float16, 64, 64, None, False), s24.DENSE),
    (("cuda", torch.float32, 64, 64, H100, True), s24.DENSE),        # half dtypes only
    (("cuda", torch.float16, 64, 64, T4, True), s24.DENSE),          # no sparse tensor cores
    (("cuda", torch.float16, 64, 64, H100, True), s24.CUSPARSELT),
    (("cuda", torch.bfloat16, 48, 80, A100, True), s24.CUSPARSELT),  # multiples of 16
    (("cuda", torch.bfloat16, 40, 80, A100, True), s24.DENSE),
    (("cuda", torch.float16, 64, 128, A100, False), s24.CUTLASS),    # Ampere, no cuSPARSELt
    (("cuda", torch.float16, 64, 96, A100, False), s24.DENSE),       # CUTLASS: cols % 64
    (("cuda", torch.float16, 64, 128, H100, False), s24.DENSE),      # mma.sp is slow on sm_90
    (("cuda", torch.float16, 64, 64, H100, True, False), s24.DENSE),  # turned off
])
def test_semi_structured_decision(args, key):
    got, why = s24.semi_structured_mode(*args)
    assert got == key and why


@pytest.fixture
def fake_semi(monkeypatch):
    """The semi-structured plumbing on the CPU: the decision says cuSPARSELt, and a stand-in for
    torch's class (a dense tensor in disguise) records what crossed the op boundary."""
    seen = {"compress": 0, "rebuilt": []}

    class FakeSemi:
        def __init__(self, shape, packed, meta, packed_t, meta_t, compressed_swizzled_bitmask):
            seen["rebuilt"].append((tuple(shape), type(packed)))
            self.dense = packed

    def compress(values, meta, cols, key):
        seen["compress"] += 1
        assert key == s24.CUSPARSELT
        return (s24.decoded(values, meta, cols, values.dtype),)     # plain tensors only

    monkeypatch.setattr(s24, "mode_for", lambda values, cols: (s24.CUSPARSELT, "test"))
    monkeypatch.setattr(s24, "compress", compress)
    monkeypatch.setattr(s24, "_classes", lambda: {s24.CUSPARSELT: FakeSemi})
    real_linear = s24.linear
    monkeypatch.setattr(s24, "linear", lambda x, S, bias=None: real_linear(
        x, S.dense if isinstance(S, FakeSemi) else S, bias))
    return seen


@pytest.mark.parametrize("op", ["dense_sparse_mm", "sparse_dense_mm", "armor_mm"])
def test_semi_structured_plumbing_on_the_cpu(op, fake_semi, monkeypatch):
    case = make_case(op, 16, 32, torch.float32)
    x = torch.randn(5, 32, requires_grad=True)
    calls = []
    monkeypatch.setattr(dispatch, "kernel", lambda o, b: calls.append(b) or
                        library.kernel(o, b))
    with torch.no_grad():
        y1 = case.call(x)
        y2 = case.call(x)
    assert calls == [s24.CUSPARSELT] * 2                 # the key is the op's backend string
    assert fake_semi["compress"] == 1                    # prepared once per factor
    assert all(t is torch.Tensor for _, t in fake_semi["rebuilt"])   # rebuilt inside the op
    ref64 = x.detach().double() @ case.W.T
    assert rel_err(y1, ref64) < 1e-5 and torch.equal(y1, y2)
    y = case.call(x)                                      # backward: S decoded densely
    g, = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(g.double(), case.W.sum(0).expand(5, -1), rtol=1e-5, atol=1e-5)


def test_layout_key_under_compile_is_the_dense_decode(monkeypatch):
    monkeypatch.setattr(s24, "mode_for", lambda values, cols: (s24.CUSPARSELT, "test"))
    S = fk.prune_24(torch.randn(16, 32))
    assert library.layout_key("dense_sparse_mm", S) == s24.CUSPARSELT
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert library.layout_key("dense_sparse_mm", S) == s24.DENSE
    assert library.layout_key("lowrank_mm", None) == "torch"


def test_cpu_half_is_computed_in_fp32():
    assert library.compute_dtype(torch.float16, torch.device("cpu")) == torch.float32
    assert library.compute_dtype(torch.bfloat16, torch.device("cpu")) == torch.float32
    assert library.compute_dtype(torch.float16, torch.device("cuda")) == torch.float16
    S = fk.prune_24(torch.randn(16, 32).half())
    (dense,) = layouts.prepared(S, "torch")
    assert dense.dtype == torch.float32 and torch.equal(dense, S.to_dense().float())


# ---- GPU -------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("op", ["dense_sparse_mm", "sparse_dense_mm", "armor_mm"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_semi_structured_forward_backward(op, dtype):
    case = make_case(op, 256, 512, dtype, k=256, block=128)
    factors = tuple(f.to("cuda") for f in case.factors)
    fmt = next(f for f in factors if isinstance(f, fk.Sparse24))
    key, why = s24.mode_for(fmt.values, fmt.cols)
    assert key in (s24.CUSPARSELT, s24.CUTLASS), why
    x = torch.randn(33, 512, dtype=dtype, device="cuda", requires_grad=True)
    y = getattr(fk, op)(x, *factors)
    ref64 = x.detach().double() @ case.W.cuda().T
    assert rel_err(y, ref64) < 1e-2
    g, = torch.autograd.grad(y.float().sum(), x)
    assert rel_err(g, case.W.cuda().sum(0).expand(33, -1)) < 1e-2
    graph = torch.cuda.CUDAGraph()                        # capture after the warm-up above
    with torch.no_grad():
        getattr(fk, op)(x, *factors)
        torch.cuda.synchronize()
        with torch.cuda.graph(graph):
            out = getattr(fk, op)(x, *factors)
    graph.replay()
    torch.cuda.synchronize()
    assert rel_err(out, ref64) < 1e-2


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
def test_sparse_mm_library_path(dtype):
    """The plain 2:4 op's library functions (its custom op comes with the importers)."""
    g = torch.Generator().manual_seed(0)
    S = fk.prune_24(torch.randn(24, 32, generator=g, dtype=torch.float64).to(dtype))
    x = torch.randn(5, 32, generator=g, dtype=torch.float64).to(dtype)
    b = torch.randn(24, generator=g, dtype=torch.float64).to(dtype)
    gy = torch.randn(5, 24, generator=g, dtype=torch.float64).to(dtype)
    W = S.to_dense().double()
    y = library.kernel("sparse_mm")(x, S.values, S.meta, b, [])
    assert y.dtype == dtype and rel_err(y, x.double() @ W.T + b.double()) < TOL[dtype]
    dx, dv, dm, db = library.backward("sparse_mm")(gy, x, S.values, S.meta, b, [],
                                                   (True, True, False, True))
    assert dm is None and rel_err(dx, gy.double() @ W) < TOL[dtype]
    want_dv = ref._common.gather24(gy.double().T @ x.double(), S.meta)
    assert rel_err(dv, want_dv) < TOL[dtype] and rel_err(db, gy.double().sum(0)) < TOL[dtype]
    only_x = library.backward("sparse_mm")(gy, x, S.values, S.meta, b, [],
                                           (True, False, False, False))
    assert only_x[1] is None and only_x[3] is None and torch.equal(only_x[0], dx)
