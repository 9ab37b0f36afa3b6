"""The factor formats, decoded bit by bit on hand-made examples (docs/formats.md)."""

import math

import pytest
import torch

import factorkern as fk
from factorkern.formats import (BlockDiag, LittleBitFactors, MonarchFactors, SignBits, Sparse24,
                                fold_paper_scales, register_layout)


# ---- Sparse24 ---------------------------------------------------------------------------------
def test_sparse24_hand_example():
    S = torch.tensor([[0.0, 1.5, 0.0, -2.0, 3.0, 0.0, 0.0, 4.0],
                      [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 5.0, 0.0]])
    sp = Sparse24.from_dense(S)
    # Row 0: group 0 keeps columns 1, 3 -> nibble 0b1101 = 13; group 1 keeps 0, 3 -> 0b1100 = 12.
    # Row 1: group 0 is all zero -> indices 0, 1 -> 0b0100 = 4; group 1 keeps 2 and the lowest
    # unused index 0 -> (0, 2) -> 0b1000 = 8. Nibbles little endian in one int16 word.
    assert sp.meta.dtype == torch.int16 and sp.meta.shape == (2, 1)
    assert sp.meta[0, 0].item() == 13 | (12 << 4)
    assert sp.meta[1, 0].item() == 4 | (8 << 4)
    assert sp.values.tolist() == [[1.5, -2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 5.0]]
    assert torch.equal(sp.to_dense(), S)
    assert sp.indices().tolist() == [[1, 3, 4, 7], [0, 1, 4, 6]]


def test_sparse24_high_nibble_uses_the_sign_bit():
    # Four groups keeping (2, 3): nibble 0b1110 each -> word 0xEEEE, stored as int16 -4370.
    S = torch.tensor([[0.0, 0.0, 1.0, 2.0] * 4])
    sp = Sparse24.from_dense(S)
    assert sp.meta.tolist() == [[0xEEEE - 0x10000]]
    assert torch.equal(sp.to_dense(), S)


def test_sparse24_meta_padding_when_cols_not_multiple_of_16():
    S = fk.prune_24(torch.randn(3, 20)).to_dense()
    sp = Sparse24.from_dense(S)
    assert sp.meta.shape == (3, 2)
    # Group 4 sits in word 1, nibble 0; nibbles 1..3 of word 1 are padding = 0.
    assert ((sp.meta[:, 1].to(torch.int64) & 0xFFFF) >> 4 == 0).all()
    assert torch.equal(sp.to_dense(), S)


def test_sparse24_rejects_non_24_naming_first_bad_group():
    S = torch.zeros(3, 8)
    S[2, 4:7] = 1.0  # 3 nonzeros in row 2, group 1
    with pytest.raises(ValueError, match=r"row 2, columns 4\.\.7 \(group 1\) hold 3 nonzeros"):
        Sparse24.from_dense(S)


@pytest.mark.parametrize("bad_nibble", [0b0000, 0b0101, 0b1010, 0b1111, 0b0001])
def test_sparse24_validate_rejects_invalid_nibbles(bad_nibble):
    sp = fk.prune_24(torch.randn(2, 16))
    meta = sp.meta.clone()
    word = (int(meta[1, 0]) & 0xFFFF) & ~(0xF << 8) | (bad_nibble << 8)
    meta[1, 0] = word - 0x10000 if word >= 0x8000 else word
    with pytest.raises(ValueError, match="group 2 of row 1"):
        Sparse24(sp.values, meta, 16)


def test_sparse24_validate_shapes_and_dtypes():
    sp = fk.prune_24(torch.randn(4, 32))
    with pytest.raises(TypeError, match="meta must be torch.int16"):
        Sparse24(sp.values, sp.meta.to(torch.int32), 32)
    with pytest.raises(ValueError, match=r"meta must be int16 \(rows, ceil\(cols/16\)\)"):
        Sparse24(sp.values, sp.meta[:, :1], 32)
    with pytest.raises(ValueError, match="values must be"):
        Sparse24(sp.values[:, :8], sp.meta, 32)
    with pytest.raises(ValueError, match="multiple of 4"):
        Sparse24.from_dense(torch.zeros(2, 6))
    with pytest.raises(ValueError, match="padding nibbles"):
        m = fk.prune_24(torch.randn(2, 20)).meta.clone()
        m[:, 1] |= 0x40
        Sparse24(fk.prune_24(torch.randn(2, 20)).values, m, 20)


def test_prune_24_magnitude_and_scores():
    W = torch.tensor([[0.25, -3.0, 2.0, 0.5, 1.0, 1.0, 1.0, 1.0]])
    sp = fk.prune_24(W)
    assert sp.to_dense().tolist() == [[0.0, -3.0, 2.0, 0.0, 1.0, 1.0, 0.0, 0.0]]  # ties: lower
    scores = torch.tensor([[9.0, 0.0, 0.0, 8.0, 0.0, 0.0, 1.0, 2.0]])
    assert fk.prune_24(W, scores).to_dense().tolist() == [[0.25, 0.0, 0.0, 0.5, 0.0, 0.0, 1.0,
                                                           1.0]]
    with pytest.raises(ValueError, match="scores must have W's shape"):
        fk.prune_24(W, scores[:, :4])


def test_sparse24_torch_semi_structured_roundtrip_or_clear_skip():
    if not torch.cuda.is_available():
        pytest.skip("torch's SparseSemiStructuredTensor needs CUDA")
    sp = fk.prune_24(torch.randn(64, 128, dtype=torch.float16, device="cuda"))
    back = Sparse24.from_torch_semi_structured(sp.to_torch_semi_structured())
    assert torch.equal(back.to_dense(), sp.to_dense())


# ---- SignBits ---------------------------------------------------------------------------------
def test_signbits_hand_example():
    Z = -torch.ones(2, 35)
    Z[0, 0] = 1
    Z[0, 31] = 1
    Z[0, 32] = 1
    Z[0, 34] = 0.0  # sign(0) = +1
    Z[1, 5] = 2.5
    sb = SignBits.pack(Z)
    assert sb.words.dtype == torch.int32 and sb.words.shape == (2, 2)
    # Row 0: bits 0 and 31 of word 0 -> 0x80000001 as int32; word 1: bits 0 and 2 -> 5; the 29
    # padding bits are 0.
    assert sb.words[0].tolist() == [0x80000001 - (1 << 32), 0b101]
    assert sb.words[1].tolist() == [1 << 5, 0]
    expect = torch.where(Z >= 0, 1.0, -1.0)
    assert torch.equal(sb.unpack(), expect)


def test_signbits_padding_and_inverted_converter():
    sb = SignBits.pack(torch.randn(3, 40))
    bad = sb.words.clone()
    bad[0, 1] |= 1 << 20
    with pytest.raises(ValueError, match="padding bits"):
        SignBits(bad, 40)
    with pytest.raises(ValueError, match=r"ceil\(cols/32\)"):
        SignBits(sb.words, 70)
    # A packer with bit 1 = -1 and +1 padding (LittleBit's own) stores the complement of the
    # valid bits and 0 in the padding.
    theirs = torch.bitwise_not(sb.words)
    theirs[:, 1] &= (1 << 8) - 1
    assert torch.equal(SignBits.from_inverted(theirs, 40).words, sb.words)


# ---- BlockDiag --------------------------------------------------------------------------------
def test_blockdiag_to_dense_and_apply():
    blocks = torch.arange(2 * 2 * 3, dtype=torch.float64).reshape(2, 2, 3)
    bd = BlockDiag(blocks)
    W = bd.to_dense()
    assert W.shape == (4, 6)
    assert torch.equal(W[:2, :3], blocks[0]) and torch.equal(W[2:, 3:], blocks[1])
    assert W[:2, 3:].abs().sum() == 0 and W[2:, :3].abs().sum() == 0
    assert torch.equal(BlockDiag.from_dense(W, 2).blocks, blocks)
    with pytest.raises(ValueError, match="does not tile"):
        BlockDiag.from_dense(W, 4)
    with pytest.raises(ValueError, match="does not tile"):
        BlockDiag.identity(10, 4)


# ---- Monarch ----------------------------------------------------------------------------------
def _fly_einsum(x, w1, w2):
    """fly's version-2 formula, written independently of factorkern.formats.monarch."""
    b = x.shape[0]
    k, q, p = w1.shape
    l, s, r = w2.shape
    out1 = torch.einsum("kqp,bkp->bkq", w1, x.reshape(b, k, p)).reshape(b, k * q)
    out1 = out1.reshape(b, r, l).transpose(1, 2)  # 'b (r l) -> b l r'
    return torch.einsum("lsr,blr->bsl", w2, out1).reshape(b, s * l)


@pytest.mark.parametrize("in_f,out_f,nb", [(16, 16, 4), (64, 64, 8), (12, 20, 4), (20, 12, 4)])
def test_monarch_matches_fly_formula(in_f, out_f, nb):
    M = MonarchFactors.random(in_f, out_f, nb, dtype=torch.float64)
    x = torch.randn(5, in_f, dtype=torch.float64)
    y = x @ M.to_dense().T
    assert torch.allclose(y, _fly_einsum(x, M.w1, M.w2), rtol=0, atol=1e-12)


def test_monarch_padding_like_fly_structured_linear():
    M = MonarchFactors.random(14, 10, 4, dtype=torch.float64)  # w1 (4, 4, 4): k*p = 16 > 14
    x = torch.randn(3, 14, dtype=torch.float64)
    xp = torch.nn.functional.pad(x, (0, 2))
    assert torch.allclose(x @ M.to_dense().T, _fly_einsum(xp, M.w1, M.w2)[:, :10], atol=1e-12)
    with pytest.raises(ValueError, match="l \\* r = k \\* q"):
        MonarchFactors(torch.randn(4, 3, 4), torch.randn(4, 3, 4))


# ---- LittleBit --------------------------------------------------------------------------------
def test_littlebit_dense_and_bits_per_weight():
    out_f, in_f, r = 12, 40, 8
    terms = [(torch.randn(out_f, r, dtype=torch.float64), torch.randn(in_f, r, dtype=torch.float64),
              torch.rand(out_f, dtype=torch.float64), torch.rand(r, dtype=torch.float64),
              torch.rand(in_f, dtype=torch.float64)) for _ in range(2)]
    F = LittleBitFactors.from_real(terms)
    W = sum(torch.diag(h) @ torch.sign(U) @ torch.diag(l) @ torch.sign(V).T @ torch.diag(g)
            for U, V, h, l, g in terms)
    assert torch.allclose(F.to_dense(), W, atol=1e-12)
    a, b = in_f, out_f
    assert math.isclose(F.bits_per_weight(), (2 * r * (a + b + 16) + 32 * (a + b)) / (a * b))
    F1 = LittleBitFactors([F.terms[0]])
    assert math.isclose(F1.bits_per_weight(), (r * (a + b + 16) + 16 * (a + b)) / (a * b))
    assert F.terms[0][0].shape == (out_f, r) and F.terms[0][1].shape == (r, in_f)


def test_littlebit_paper_scale_folding():
    u1, u2, v1, v2 = (torch.rand(n) for n in (6, 3, 3, 5))
    h, l, g = fold_paper_scales(u1, u2, v1, v2)
    assert torch.equal(h, u1) and torch.equal(l, u2 * v1) and torch.equal(g, v2)


def test_littlebit_validation():
    U, V = SignBits.pack(torch.randn(6, 4)), SignBits.pack(torch.randn(4, 10))
    ok = (U, V, torch.ones(6), torch.ones(4), torch.ones(10))
    LittleBitFactors([ok])
    with pytest.raises(ValueError, match=r"terms\[0\]\.l must have shape \(4,\)"):
        LittleBitFactors([(U, V, torch.ones(6), torch.ones(5), torch.ones(10))])
    with pytest.raises(TypeError, match=r"terms\[0\]\.g is torch.float64"):
        LittleBitFactors([(U, V, torch.ones(6), torch.ones(4), torch.ones(10).double())])


# ---- common contract --------------------------------------------------------------------------
def _all_formats():
    sp = fk.prune_24(torch.randn(4, 32))
    return [sp, SignBits.pack(torch.randn(3, 40)), BlockDiag(torch.randn(2, 3, 3)),
            MonarchFactors.random(14, 10, 4),
            LittleBitFactors.from_real([(torch.randn(6, 4), torch.randn(10, 4), torch.rand(6),
                                         torch.rand(4), torch.rand(10))])]


@pytest.mark.parametrize("fmt", _all_formats(), ids=lambda f: type(f).__name__)
def test_state_dict_roundtrip_and_to(fmt):
    sd = fmt.state_dict(prefix="w.")
    back = type(fmt).from_state_dict(sd, prefix="w.")
    assert torch.equal(back.to_dense(), fmt.to_dense())
    torch.save(sd, buf := __import__("io").BytesIO())
    buf.seek(0)
    back2 = type(fmt).from_state_dict(torch.load(buf), prefix="w.")
    assert torch.equal(back2.to_dense(), fmt.to_dense())
    half = fmt.to(torch.float64)
    for a, b in zip(fmt.tensors(), half.tensors()):
        # dtype moves touch floating tensors only; index and bit tensors keep their dtype.
        assert b.dtype == (torch.float64 if a.is_floating_point() else a.dtype)
    assert repr(fmt).startswith(type(fmt).__name__)


def test_prepare_builds_once_and_rebuilds_after_inplace_update():
    calls = []

    def layout(sp):
        calls.append(1)
        return (sp.values.t().contiguous(),)

    register_layout("Sparse24", "unit-test", layout)
    sp = fk.prune_24(torch.randn(4, 16))
    a = sp.prepare("unit-test")
    b = sp.prepare("unit-test")
    assert a is b and len(calls) == 1
    sp.values.mul_(2)  # in-place update bumps the version: the layout is rebuilt
    c = sp.prepare("unit-test")
    assert len(calls) == 2 and torch.equal(c[0], sp.values.t())
    assert sp.prepare("no-such-backend") == ()
