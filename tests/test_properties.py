"""Property suite for the ops: every op on every backend that runs here, on drawn shapes, dtypes,
batch dims, strides, bias, M and factor sizes, against the float64 oracle (x @ W.T + bias with
W rebuilt densely from the same rounded factors); NaN and Inf in x against F.linear.

The (op, backend) pairs come from ``factorkern.backends()`` (the backends available here and the
ops each registers), so ops and backends added later are tested without editing this file; a new
op needs only its factor builder in tests/families.py ``make_case``. Profiles (CI vs local runs):
tests/hypothesis_profiles.py.
"""

import contextlib

import pytest
import torch
from hypothesis import assume, event, given, note
from hypothesis import strategies as st

import hypothesis_profiles  # noqa: F401  (loads the profile)
import factorkern as fk
from factorkern.reference import littlebit_quant

from families import make_case, make_x

CUDA = torch.cuda.is_available()
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}

# Ops that run another op's factors on a different path: (factor builder op, call keywords).
VARIANTS = {"littlebit_mm_popcount": ("littlebit_mm", {"quantize_activations": True})}


def runnable_pairs():
    """(op, backend) for every backend available here and every op it registers."""
    pairs = []
    for backend, info in fk.backends().items():
        if info.get("available"):
            pairs += [(op, backend) for op in info.get("ops", ())]
    return sorted(set(pairs))


PAIRS = runnable_pairs()
IDS = [f"{op}-{backend}" for op, backend in PAIRS]


def devices(backend):
    if backend == "torch":
        return ["cpu", "cuda"] if CUDA else ["cpu"]
    return ["cuda"] if CUDA else ["cpu"]  # no GPU: Triton's interpreter on the CPU


def dtypes(backend, device):
    if backend == "torch":
        return list(FLOAT_DTYPES)
    if device == "cpu":  # the interpreter's tl.dot on bf16 is wrong: fp16/fp32 there
        return [torch.float16, torch.float32]
    if backend == "cuda":
        return [torch.float16, torch.bfloat16]
    return [torch.float16, torch.bfloat16, torch.float32]


# ---- drawing a case ------------------------------------------------------------------------
# What the kernel backends take (they refuse other calls with a reason, which the properties
# accept as a clean refusal): the draws mostly stay inside, so most examples run a kernel.
# ARMOR's Triton kernel takes blocks of 32, 64, 128; the CUDA kernels decode only (M <= 16),
# float16/bfloat16, with the reduction dim of the 2:4 or sign factor a multiple of 128.
ARMOR_BLOCKS = {"triton": [32, 64]}
CUDA_MAX_M = 16


@st.composite
def cuda_sizes(draw, base):
    dim = st.integers(1, 40)
    wide = 128 * draw(st.integers(1, 2))
    if base == "dense_sparse_mm":
        return draw(dim), wide, {"k": 8 * draw(st.integers(1, 4))}
    if base == "sparse_dense_mm":
        return draw(dim), 8 * draw(st.integers(1, 5)), {"k": wide}
    if base == "armor_mm":
        b = draw(st.sampled_from([8, 16, 32, 64]))
        return b * draw(st.integers(1, 3)), wide, {"block": b}
    if base == "littlebit_mm":
        return draw(dim), wide, {"r": draw(st.integers(1, 40)), "nterms": draw(st.integers(1, 2))}
    if base == "sparse_mm":
        return draw(dim), wide, {}
    return None


@st.composite
def sizes(draw, op, backend, small=False):
    """(out, in, size keywords for make_case) respecting the op's structure."""
    base = VARIANTS.get(op, (op,))[0]
    if backend == "cuda":
        drawn = draw(cuda_sizes(base))
        if drawn is not None:
            return drawn
    dim = st.integers(1, 24 if small else 48)
    if base == "dense_sparse_mm":
        return draw(dim), 4 * draw(st.integers(1, 12)), {"k": draw(st.integers(1, 24))}
    if base == "sparse_dense_mm":
        return draw(dim), draw(dim), {"k": 4 * draw(st.integers(1, 8))}
    if base == "armor_mm":
        b = draw(st.sampled_from(ARMOR_BLOCKS.get(backend, [4, 8, 12, 16])))
        n_out = draw(st.integers(1, 2 if b >= 32 else 4))
        n_in = draw(st.integers(1, 2 if b >= 32 else 4))
        return n_out * b, n_in * b, {"block": b}
    if base == "littlebit_mm":
        return draw(dim), draw(st.integers(1, 70)), {"r": draw(st.integers(1, 40)),
                                                      "nterms": draw(st.integers(1, 2))}
    if base == "monarch_mm":
        return draw(dim), draw(dim), {"nblocks": draw(st.integers(1, 6))}
    if base == "lowrank_mm":
        return draw(dim), draw(dim), {"r": draw(st.integers(1, 16))}
    # An op this file does not know yet: sizes every 2:4 factor takes (in % 4 == 0), the rest
    # chosen by make_case.
    return draw(dim), 4 * draw(st.integers(1, 12)), {}


def lead_dims(draw, small=False, max_m=None):
    """Leading dims of x: (), (M,) or (B, M), M from 0 (empty) past the decode bound (16)."""
    m = draw(st.one_of(st.integers(0, 5), st.integers(6, 20 if small else 40)))
    if max_m is not None:
        return draw(st.sampled_from([(min(m, max_m),), ()]))
    return draw(st.sampled_from([(m,), (m,), (draw(st.integers(1, 3)), m), ()]))


def _column_major(t):
    """Same values, transposed strides (a non-contiguous factor)."""
    return t.T.contiguous().T if t.dim() == 2 else t


def move_factors(factors, device, strided):
    out = []
    for f in factors:
        f = f.to(device)
        if strided and isinstance(f, torch.Tensor):
            f = _column_major(f)
        elif strided and isinstance(f, fk.Sparse24):
            f = fk.Sparse24(_column_major(f.values), f.meta, f.cols)
        out.append(f)
    return out


@st.composite
def op_cases(draw, op, backend, small=False):
    device = draw(st.sampled_from(devices(backend)))
    dtype = draw(st.sampled_from(dtypes(backend, device)))
    out_f, in_f, size = draw(sizes(op, backend, small))
    base, kwargs = VARIANTS.get(op, (op, {}))
    case = make_case(base, out_f, in_f, dtype, seed=draw(st.integers(0, 2**16)), **size)
    strided = draw(st.booleans())
    factors = move_factors(case.factors, device, strided)
    lead = lead_dims(draw, small, CUDA_MAX_M if backend == "cuda" else None)
    layout = draw(st.sampled_from(["contiguous", "strided", "transposed"]))
    torch.manual_seed(draw(st.integers(0, 2**16)))
    x = make_x(lead, in_f, dtype, layout, device)
    bias = torch.randn(out_f, dtype=dtype, device=device) if draw(st.booleans()) else None
    variant = draw(st.sampled_from([None, "decode", "prefill"])) if backend == "triton" else None
    note(f"{op} {backend} {device} {dtype} W ({out_f}, {in_f}) {size} x {tuple(x.shape)} "
         f"{layout} strided factors={strided} bias={bias is not None} variant={variant}")
    return dict(case=case, factors=factors, x=x, bias=bias, kwargs=kwargs, variant=variant,
                op=op, backend=backend)


def run(c, x=None):
    """Call the public op on the drawn case (outputs poisoned with NaN where the backend can)."""
    x = c["x"] if x is None else x
    fn = getattr(fk, VARIANTS.get(c["op"], (c["op"],))[0])
    ctx = contextlib.nullcontext()
    if c["backend"] == "triton":
        from factorkern.triton_kernels._common import force

        ctx = force(c["variant"], poison=True)
    with ctx:
        try:
            return fn(x, *c["factors"], bias=c["bias"], backend=c["backend"], **c["kwargs"])
        except RuntimeError as e:
            # A kernel may refuse a call it does not support, with a reason: a clean refusal,
            # not a wrong answer. Drawn cases are chosen so this is rare.
            if "does not take this call" not in str(e):
                raise
            event(f"refused: {e}")
            assume(False)


def oracle(c, x=None):
    """(float64 reference of the drawn call, the magnitude of its summed terms), on the CPU.

    The magnitude |x| @ |W|.T + |bias| is what rounding errors scale with (a dot product's error
    is at most a few ulps of it), so errors are measured against it: an output that cancels to
    nearly zero is not held to a relative error it cannot have. A wrong answer is off by the
    size of the output itself, orders of magnitude above the tolerances.
    """
    x = (c["x"] if x is None else x).cpu()
    bias = None if c["bias"] is None else c["bias"].cpu()
    W = c["case"].W
    scale = x.double().abs() @ W.abs().T + (0 if bias is None else bias.double().abs())
    if c["op"] == "littlebit_mm_popcount":
        (F,) = c["case"].factors
        y = littlebit_quant.littlebit_mm_popcount(x.reshape(-1, x.shape[-1]), *F.lists(), bias)
        return y.double().reshape(*x.shape[:-1], -1), scale
    y = x.double() @ W.T
    return (y if bias is None else y + bias.double()), scale


def assert_close(y, ref_scale, dtype):
    ref, scale = ref_scale
    diff = (y.cpu().double() - ref).norm().item()
    if scale.norm() == 0:  # every term is exactly zero (e.g. W == 0): so must the output be
        assert diff == 0, f"output off by {diff:.3e} where every term is zero"
        return
    err = diff / scale.norm().item()
    assert err < TOL[dtype], f"error {err:.3e} >= {TOL[dtype]:.0e} (relative to |x| |W|.T + |b|)"


# ---- properties ------------------------------------------------------------------------------
@pytest.mark.parametrize("op,backend", PAIRS, ids=IDS)
@given(data=st.data())
def test_op_matches_float64_oracle(op, backend, data):
    c = data.draw(op_cases(op, backend))
    x = c["x"]
    y = run(c)
    out_f = c["case"].shape[0]
    assert y.shape == (*x.shape[:-1], out_f) and y.dtype == x.dtype and y.device == x.device
    if y.numel() == 0:
        return
    assert torch.isfinite(y).all(), "finite inputs gave non-finite outputs"
    assert_close(y, oracle(c), x.dtype)


NONFINITE = [float("nan"), float("inf"), -float("inf")]


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("op,backend", PAIRS, ids=IDS)
@given(data=st.data())
def test_nonfinite_x_propagates_like_f_linear(op, backend, data):
    """F.linear's rule through the factors: y[n, j] is NaN or Inf wherever it depends (through a
    nonzero weight W[j, c]) on a NaN or Inf x[n, c], and finite in rows of x that are finite.
    Where the only link is an exact zero weight either is allowed: F.linear gives NaN (0 * Inf),
    a kernel that skips zeros or a structural zero of the factors (Monarch) a finite number.
    The quantized LittleBit path has its own documented rule: such a row is NaN throughout."""
    c = data.draw(op_cases(op, backend, small=True))
    x = c["x"]
    assume(x.numel() > 0)
    rows = x.reshape(-1, x.shape[-1]).shape[0]
    n_bad = data.draw(st.integers(1, min(4, x.numel())))
    x = x.clone()
    flat = x.reshape(-1, x.shape[-1])
    for _ in range(n_bad):
        r = data.draw(st.integers(0, rows - 1))
        col = data.draw(st.integers(0, x.shape[-1] - 1))
        flat[r, col] = data.draw(st.sampled_from(NONFINITE))
    x = flat.reshape(x.shape)
    y = run(c, x).cpu().reshape(rows, -1)
    x64 = flat.cpu().double()
    bad_x = ~torch.isfinite(x64)
    if op == "littlebit_mm_popcount":
        (F,) = c["case"].factors
        bad_rows = torch.zeros(rows, dtype=torch.bool)
        for term in F.terms:
            xg = flat.cpu().float() * term[4].cpu().float()
            bad_rows |= ~torch.isfinite(xg).all(1)
        assert torch.isnan(y[bad_rows]).all(), "a non-finite row of x*g must give a NaN row"
        good = ~bad_rows
        assert torch.isfinite(y[good]).all()
        if good.any():
            ref, scale = (t.reshape(rows, -1)[good] for t in oracle(c, x))
            assert_close(y[good], (ref, scale), x.dtype)
        return
    W = c["case"].W
    must = (bad_x.double() @ (W != 0).double().T) > 0   # depends on a non-finite input
    finite_row = ~bad_x.any(1)
    assert (~torch.isfinite(y[must])).all(), "an output depending on NaN/Inf x is finite"
    assert torch.isfinite(y[finite_row]).all(), "a finite row of x gave non-finite outputs"
    if finite_row.any():
        ref, scale = (t.reshape(rows, -1)[finite_row] for t in oracle(c, x))
        assert_close(y[finite_row], (ref, scale), x.dtype)


def test_every_available_backend_and_registered_op_is_covered():
    # The pairs come from fk.backends(): the torch backend with every op is always there, and
    # each op of every available backend is in the list (nothing silently dropped).
    info = fk.backends()
    assert {op for op, b in PAIRS if b == "torch"} == set(info["torch"]["ops"])
    for b, d in info.items():
        if d["available"]:
            assert {op for op, bb in PAIRS if bb == b} == set(d["ops"]), b
