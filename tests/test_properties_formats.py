"""Property suite for the formats: pack/unpack, from_dense/to_dense and state_dict round trips
on drawn shapes and dtypes, and corruption: a random nibble of a Sparse24 meta or a random bit or
word of a SignBits factor, written in place after the first call (or into a checkpoint), must
raise or change the output exactly as the float64 oracle of the corrupted factors says.

Profiles (CI vs local runs): tests/hypothesis_profiles.py.
"""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hypothesis_profiles import examples
import factorkern as fk
from factorkern.formats import BlockDiag, LittleBitFactors, MonarchFactors, SignBits, Sparse24
from factorkern.nn import (ArmorLinear, DenseSparseLinear, LittleBitLinear, Sparse24Linear,
                           SparseDenseLinear)

from families import make_case, rel_err
from test_properties import PAIRS, VARIANTS, assert_close, op_cases, oracle, run

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


def _randn(shape, dtype, seed, zeros=0.0):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(*shape, generator=g, dtype=torch.float64)
    if zeros:
        t = t * (torch.rand(*shape, generator=g, dtype=torch.float64) >= zeros)
    return t.to(dtype)


def _roundtrip(fmt):
    sd = fmt.state_dict(prefix="f.")
    back = type(fmt).from_state_dict(sd, prefix="f.")
    for a, b in zip(fmt.tensors(), back.tensors()):
        assert a.dtype == b.dtype and torch.equal(a, b)
    return back


# ---- round trips ----------------------------------------------------------------------------
@settings(max_examples=examples(25))
@given(rows=st.integers(1, 6), cols=st.integers(1, 100), dtype=st.sampled_from(DTYPES),
       zeros=st.sampled_from([0.0, 0.3]), seed=st.integers(0, 2**16))
def test_signbits_pack_unpack(rows, cols, dtype, zeros, seed):
    Z = _randn((rows, cols), dtype, seed, zeros)
    sb = SignBits.pack(Z)
    assert sb.words.dtype == torch.int32 and sb.words.shape == (rows, math.ceil(cols / 32))
    expect = torch.where(Z >= 0, 1.0, -1.0)  # sign(0) = +1
    assert torch.equal(sb.unpack(), expect)
    # Bit b of word j is Z[:, 32 j + b] >= 0, padding bits 0.
    j, b = divmod(cols - 1, 32)
    assert torch.equal((sb.words[:, j] >> b) & 1, (Z[:, cols - 1] >= 0).to(torch.int32))
    pad = (-cols) % 32
    if pad:
        assert not ((sb.words[:, -1] >> (32 - pad)) != 0).any()
    assert torch.equal(SignBits.pack(sb.unpack(dtype)).words, sb.words)
    # The opposite packer (bit 1 = -1, any padding) converts back.
    assert torch.equal(SignBits.from_inverted(torch.bitwise_not(sb.words), cols).words, sb.words)
    assert torch.equal(_roundtrip(sb).unpack(), expect)


@settings(max_examples=examples(25))
@given(rows=st.integers(1, 6), groups=st.integers(1, 12), dtype=st.sampled_from(DTYPES),
       zeros=st.sampled_from([0.0, 0.5, 0.9]), seed=st.integers(0, 2**16))
def test_sparse24_prune_from_dense_to_dense(rows, groups, dtype, zeros, seed):
    cols = 4 * groups
    W = _randn((rows, cols), dtype, seed, zeros)
    S = fk.prune_24(W)
    D = S.to_dense()
    assert D.dtype == dtype and D.shape == (rows, cols)
    g = D.reshape(rows, groups, 4)
    assert ((g != 0).sum(-1) <= 2).all()
    # Kept entries are W's, and no dropped entry is larger than a kept one.
    idx = S.indices()
    assert torch.equal(S.values, W.gather(1, idx))
    kept = torch.zeros(rows, cols, dtype=torch.bool).scatter(1, idx, True)
    mag = W.abs().double().reshape(rows, groups, 4)
    kmin = mag.masked_fill(~kept.reshape(rows, groups, 4), math.inf).amin(-1)
    dmax = mag.masked_fill(kept.reshape(rows, groups, 4), -math.inf).amax(-1)
    assert (kmin >= dmax).all()
    assert (idx.reshape(rows, groups, 2).diff(dim=-1) > 0).all()  # idx0 < idx1
    back = Sparse24.from_dense(D)
    assert torch.equal(back.to_dense(), D)
    if (S.values != 0).all():
        assert torch.equal(back.meta, S.meta)
    assert torch.equal(_roundtrip(S).to_dense(), D)
    if dtype != torch.float64:
        assert torch.equal(S.to(torch.float64).to(dtype).to_dense(), D)


@settings(max_examples=examples(15))
@given(nb=st.integers(1, 4), ob=st.integers(1, 5), ib=st.integers(1, 5),
       dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**16))
def test_blockdiag_from_dense_to_dense(nb, ob, ib, dtype, seed):
    bd = BlockDiag(_randn((nb, ob, ib), dtype, seed))
    W = bd.to_dense()
    assert W.shape == (nb * ob, nb * ib)
    assert torch.equal(BlockDiag.from_dense(W, nb).blocks, bd.blocks)
    mask = torch.block_diag(*[torch.ones(ob, ib)] * nb).bool()
    assert not W[~mask].any()
    assert torch.equal(_roundtrip(bd).to_dense(), W)


def _fly(x, w1, w2, out_f):
    """fly's blockdiag_butterfly_multiply, written from its einsum form (x padded to k * p)."""
    k, q, p = w1.shape
    l, s, r = w2.shape
    x = torch.nn.functional.pad(x, (0, k * p - x.shape[1]))
    t = torch.einsum("kqp,bkp->bkq", w1, x.reshape(-1, k, p)).reshape(-1, r, l).transpose(1, 2)
    return torch.einsum("lsr,blr->bsl", w2, t).reshape(x.shape[0], s * l)[:, :out_f]


@settings(max_examples=examples(15))
@given(in_f=st.integers(1, 40), out_f=st.integers(1, 40), nblocks=st.integers(1, 6),
       seed=st.integers(0, 2**16))
def test_monarch_to_dense_is_fly_convention(in_f, out_f, nblocks, seed):
    M = MonarchFactors.random(in_f, out_f, nblocks, dtype=torch.float64,
                              generator=torch.Generator().manual_seed(seed))
    x = _randn((3, in_f), torch.float64, seed + 1)
    assert rel_err(x @ M.to_dense().T, _fly(x, M.w1, M.w2, out_f)) < 1e-12
    assert torch.equal(_roundtrip(M).to_dense(), M.to_dense())


@settings(max_examples=examples(15))
@given(out_f=st.integers(1, 20), in_f=st.integers(1, 70), r=st.integers(1, 40),
       nterms=st.integers(1, 2), seed=st.integers(0, 2**16))
def test_littlebit_to_dense_and_state_dict(out_f, in_f, r, nterms, seed):
    terms = [tuple(_randn(s, torch.float64, seed + 7 * i + j, zeros=0.1 if j < 2 else 0)
                   for j, s in enumerate([(out_f, r), (in_f, r), (out_f,), (r,), (in_f,)]))
             for i in range(nterms)]
    F = LittleBitFactors.from_real(terms)
    sign = lambda t: torch.where(t >= 0, 1.0, -1.0).double()  # noqa: E731
    W = sum(torch.diag(h) @ sign(U) @ torch.diag(l) @ sign(V).T @ torch.diag(g)
            for U, V, h, l, g in terms)
    assert rel_err(F.to_dense(), W) < 1e-12
    back = LittleBitFactors.from_state_dict(F.state_dict("lb."), "lb.")
    assert torch.equal(back.to_dense(), F.to_dense())
    a, b = in_f, out_f
    assert math.isclose(F.bits_per_weight(), nterms * (r * (a + b + 16) + 16 * (a + b)) / (a * b))


LAYERS = {
    "dense_sparse": lambda i, o, s: DenseSparseLinear(4 * i, o, k=s),
    "sparse_dense": lambda i, o, s: SparseDenseLinear(i, o, k=4 * s),
    "armor": lambda i, o, s: ArmorLinear(4 * i, 4 * o, block=4),
    "littlebit": lambda i, o, s: LittleBitLinear(i, o, r=s),
    "sparse24": lambda i, o, s: Sparse24Linear(4 * i, o),
}


@settings(max_examples=examples(12))
@given(fam=st.sampled_from(sorted(LAYERS)), i=st.integers(1, 10), o=st.integers(1, 10),
       s=st.integers(1, 10), seed=st.integers(0, 2**16))
def test_layer_state_dict_roundtrip(fam, i, o, s, seed):
    torch.manual_seed(seed)
    a = LAYERS[fam](i, o, s)
    b = LAYERS[fam](i, o, s)
    b.load_state_dict(a.state_dict())
    x = torch.randn(3, a.in_features)
    assert torch.equal(a(x), b(x))


# ---- corruption -----------------------------------------------------------------------------
def _has_bits(op):
    base = VARIANTS.get(op, (op,))[0]
    return any(isinstance(f, (Sparse24, LittleBitFactors))
               for f in make_case(base, 8, 16).factors)


CORRUPTIBLE = [(op, b) for op, b in PAIRS if _has_bits(op)]


def _targets(factors):
    """(name, tensor, kind, cols) for every index/bit tensor of the factors."""
    out = []
    for i, f in enumerate(factors):
        if isinstance(f, Sparse24):
            out.append((f"factors[{i}].meta", f.meta, "meta", f.cols))
        elif isinstance(f, LittleBitFactors):
            for t, (U, V, *_) in enumerate(f.terms):
                out.append((f"terms[{t}].U", U.words, "signs", U.cols))
                out.append((f"terms[{t}].V", V.words, "signs", V.cols))
    return out


@st.composite
def corruption(draw, kind, shape, cols):
    """(row, word, new int value of that word, whether the result is valid by the contract)."""
    row = draw(st.integers(0, shape[0] - 1))
    word = draw(st.integers(0, shape[1] - 1))
    if kind == "meta":
        pos = draw(st.integers(0, 3))
        nib = draw(st.integers(0, 15))
        group = 4 * word + pos
        valid = (nib & 3) < (nib >> 2) if group < cols // 4 else nib == 0
        return row, word, ("nibble", pos, nib), valid
    pad_from = cols - 32 * word  # bits >= this in this word are padding
    if draw(st.booleans()):
        bit = draw(st.integers(0, 31))
        return row, word, ("flip", bit), bit < pad_from
    value = draw(st.integers(-2**31, 2**31 - 1))
    pad_ok = pad_from >= 32 or (value & 0xFFFFFFFF) >> max(pad_from, 0) == 0
    return row, word, ("set", value), pad_ok


def _apply(t, row, word, how):
    old = int(t[row, word])
    if how[0] == "nibble":
        _, pos, nib = how
        w = (old & 0xFFFF) & ~(0xF << (4 * pos)) | (nib << (4 * pos))
        t[row, word] = w - 0x10000 if w >= 0x8000 else w
    elif how[0] == "flip":
        w = (old & 0xFFFFFFFF) ^ (1 << how[1])
        t[row, word] = w - (1 << 32) if w >= 1 << 31 else w
    else:
        t[row, word] = how[1]


@pytest.mark.parametrize("op,backend", CORRUPTIBLE, ids=[f"{o}-{b}" for o, b in CORRUPTIBLE])
@given(data=st.data())
def test_inplace_corruption_raises_or_follows_the_oracle(op, backend, data):
    c = data.draw(op_cases(op, backend, small=True))
    run(c)  # prime the caches (prepared layouts, validation) with the intact factors
    name, t, kind, cols = data.draw(st.sampled_from(_targets(c["factors"])))
    row, word, how, valid = data.draw(corruption(kind, tuple(t.shape), cols))
    # The oracle's copy of the factors (the CPU originals) gets the same corruption.
    originals = [u for n, u, _, _ in _targets(c["case"].factors) if n == name]
    _apply(t, row, word, how)
    for u in originals:
        if u is not t:
            _apply(u, row, word, how)
    if not valid:
        with pytest.raises(ValueError, match="meta|SignBits"):
            run(c)
        return
    y = run(c)
    if y.numel():
        assert_close(y, oracle(c), c["x"].dtype)


_LAYER_BITS = {"dense_sparse": ["s_meta"], "sparse_dense": ["s_meta"], "armor": ["s_meta"],
               "sparse24": ["s_meta"],
               "littlebit": ["u_words0", "v_words0", "u_words1", "v_words1"]}


@settings(max_examples=examples(12))
@given(data=st.data(), fam=st.sampled_from(sorted(LAYERS)), i=st.integers(1, 10),
       o=st.integers(1, 10), s=st.integers(1, 40))
def test_checkpoint_corruption_raises_or_follows_the_oracle(data, fam, i, o, s):
    torch.manual_seed(0)
    src = LAYERS[fam](i, o, min(s, 10) if fam != "littlebit" else s)
    key = data.draw(st.sampled_from(_LAYER_BITS[fam]))
    sd = {k: v.clone() for k, v in src.state_dict().items()}
    if key == "s_meta":
        kind, cols = "meta", (src.k if fam == "sparse_dense" else src.in_features)
    else:
        kind, cols = "signs", (src.r if key.startswith("u") else src.in_features)
    row, word, how, valid = data.draw(corruption(kind, tuple(sd[key].shape), cols))
    _apply(sd[key], row, word, how)
    dst = LAYERS[fam](i, o, min(s, 10) if fam != "littlebit" else s)
    if not valid:
        with pytest.raises(RuntimeError, match=key):
            dst.load_state_dict(sd)
        return
    dst.load_state_dict(sd)
    x = torch.randn(4, dst.in_features, dtype=torch.float64)
    y = dst.double()(x)
    W, b = dst.to_dense().double(), dst.bias.double()
    assert_close(y, (x @ W.T + b, x.abs() @ W.abs().T + b.abs()), torch.float64)
