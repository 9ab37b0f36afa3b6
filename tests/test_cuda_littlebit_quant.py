"""The reference of LittleBit's opt-in popcount path (factorkern.reference.littlebit_quant):
its quantizer's rounding, the bit-plane identity the kernel uses (exact integers), agreement
with a float64 computation of the same quantized activations, the error it adds against the
exact path, and the public opt-in (``littlebit_mm(..., quantize_activations=True)``)."""

from __future__ import annotations

import pytest
import torch

import factorkern as fk
from factorkern import dispatch
from factorkern.formats.signbits import unpack_signs
from factorkern.reference import littlebit as exact_ref
from factorkern.reference import littlebit_quant as qref
from families import make_case, rel_err


def _factors(out_f, in_f, r, nterms=2, seed=0, dtype=torch.float32):
    case = make_case("littlebit_mm", out_f, in_f, dtype=dtype, seed=seed, r=r, nterms=nterms)
    return case.factors[0]


def test_quantizer_rounding_and_range():
    xg = torch.tensor([[127.0, 0.5, 1.5, 2.5, -0.5, -1.5, -127.0, 3.49],
                       [0.0] * 8])
    q, s = qref.quantize_per_token(xg)
    assert s.tolist() == [1.0, 1.0]                      # amax 127 -> s = 1; zero row -> s = 1
    assert q[0].tolist() == [127, 0, 2, 2, 0, -2, -127, 3]  # round half to even
    assert q[1].abs().sum() == 0
    x = torch.randn(5, 300, generator=torch.Generator().manual_seed(1))
    q, s = qref.quantize_per_token(x)
    assert q.abs().max() <= 127 and (q.abs().amax(1) == 127).all()
    assert ((q * s[:, None] - x).abs() <= s[:, None] / 2 * (1 + 1e-6)).all()


@pytest.mark.parametrize("n_in", [256, 45, 32])
def test_bitplane_identity_is_exact(n_in):
    g = torch.Generator().manual_seed(n_in)
    q = torch.randint(-127, 128, (6, n_in), generator=g, dtype=torch.int32)
    V = fk.SignBits.pack(torch.randn(9, n_in, generator=g))  # padding bits when n_in % 32
    z = qref.bitplane_dot(q, V.words, n_in)
    want = q.to(torch.int64) @ unpack_signs(V.words, n_in, torch.float64).to(torch.int64).T
    assert torch.equal(z, want)
    assert qref.bit_planes(torch.tensor([[-128, -1, 0, 127]])).shape == (8, 1, 4)


def test_reference_matches_float64_of_quantized_activations():
    F = _factors(40, 96, r=12, dtype=torch.float64)
    x = torch.randn(7, 96, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    uw, vw, h, l, gs = F.lists()
    y = qref.littlebit_mm_popcount(x, uw, vw, h, l, gs)
    # The same quantized activations, then the exact math in float64 on dequantized inputs.
    want = None
    for U, V, ht, lt, gt in F.terms:
        q, s = qref.quantize_per_token(x.float() * gt.float())
        xq = q.double() * s.double()[:, None]
        yt = ((xq @ V.unpack(torch.float64).T) * lt) @ U.unpack(torch.float64).T * ht
        want = yt if want is None else want + yt
    assert rel_err(y, want) < 1e-12


def test_error_against_exact_path_is_that_of_int8_activations(capsys):
    errs = []
    for seed, (out_f, in_f, r) in enumerate([(256, 512, 64), (128, 1024, 32), (300, 384, 40)]):
        F = _factors(out_f, in_f, r=r, seed=seed)
        x = torch.randn(16, in_f, generator=torch.Generator().manual_seed(seed))
        args = F.lists()
        exact = exact_ref.littlebit_mm(x.double(), *[[t.double() if t.is_floating_point() else t
                                                      for t in a] for a in args])
        quant = qref.littlebit_mm_popcount(x, *args)
        errs.append(rel_err(quant, exact))
    with capsys.disabled():
        print(f"\nlittlebit popcount reference vs exact path, rel. Frobenius error: "
              f"{', '.join(f'{e:.2e}' for e in errs)}")
    assert max(errs) < 3e-2


def test_public_opt_in_routes_to_the_quantized_op():
    F = _factors(24, 64, r=8)
    x = torch.randn(2, 3, 64)
    bias = torch.randn(24)
    y = fk.littlebit_mm(x, F, bias, quantize_activations=True)
    want = qref.littlebit_mm_popcount(x.reshape(-1, 64), *F.lists(), bias).reshape(2, 3, 24)
    assert torch.equal(y, want)
    exact = fk.littlebit_mm(x, F, bias)
    assert not torch.equal(y, exact)
    assert rel_err(y, exact) < 5e-2


def test_auto_never_picks_an_unproven_popcount_kernel():
    x = torch.randn(3, 128)
    assert dispatch.resolve("littlebit_mm_popcount", "auto", x) == "torch"
    assert "littlebit_mm_popcount" in dispatch.OPS


def test_popcount_custom_op_opcheck():
    F = _factors(16, 32, r=8, nterms=2)
    x = torch.randn(3, 32)
    uw, vw, h, l, g = F.lists()
    torch.library.opcheck(torch.ops.factorkern.littlebit_mm_popcount.default,
                          (x, uw, vw, h, l, g, None, "torch", []),
                          test_utils=("test_schema", "test_faketensor"))
