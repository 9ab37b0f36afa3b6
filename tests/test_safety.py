"""No silent garbage: corrupt checkpoints, in-place corruption, bad constructor arguments, NaN and
Inf inputs and convert() mistakes each get a clear error or the right answer."""

import io
import math
import warnings

import pytest
import torch
from torch import nn

import factorkern as fk
from factorkern.formats import BlockDiag, LittleBitFactors, MonarchFactors, SignBits, Sparse24
from factorkern.formats.sparse24 import meta_is_valid, meta_nibbles
from factorkern.nn import (ArmorLinear, DenseSparseLinear, LittleBitLinear, LowRankLinear,
                           MonarchLinear, Sparse24Linear, SparseDenseLinear)
from factorkern.reference import littlebit_quant

from families import make_case, rel_err

SPARSE_LAYERS = {
    "dense_sparse": lambda: DenseSparseLinear(40, 24, k=16),
    "sparse_dense": lambda: SparseDenseLinear(40, 24, k=20),
    "armor": lambda: ArmorLinear(40, 24, block=8),
    "sparse24": lambda: Sparse24Linear(40, 24),
}


def _set_nibble(meta: torch.Tensor, row: int, group: int, nibble: int) -> None:
    """Write a 4-bit nibble in place into int16 meta (group g: word g // 4, bits 4 (g % 4)..)."""
    w, sh = divmod(group, 4)
    word = (int(meta[row, w]) & 0xFFFF) & ~(0xF << (4 * sh)) | (nibble << (4 * sh))
    meta[row, w] = word - 0x10000 if word >= 0x8000 else word


# ---- item 1: validation where data enters ------------------------------------------------------
@pytest.mark.parametrize("fam", SPARSE_LAYERS)
def test_load_state_dict_refuses_zeroed_meta_and_leaves_layer_unchanged(fam):
    torch.manual_seed(0)
    src, dst = SPARSE_LAYERS[fam](), SPARSE_LAYERS[fam]()
    sd = src.state_dict()
    sd["s_meta"] = torch.zeros_like(sd["s_meta"])
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(RuntimeError, match=r"factor S.*s_meta.*group 0 of row 0 has nibble "
                                           r"0b0000"):
        dst.load_state_dict(sd)
    for k, v in dst.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("fam", SPARSE_LAYERS)
def test_load_state_dict_refuses_float_meta_instead_of_casting(fam):
    src, dst = SPARSE_LAYERS[fam](), SPARSE_LAYERS[fam]()
    sd = src.state_dict()
    sd["s_meta"] = sd["s_meta"].float()
    with pytest.raises(RuntimeError, match=r"s_meta: expected torch.int16, got torch.float32"):
        dst.load_state_dict(sd)


def test_load_state_dict_names_the_submodule_and_accepts_valid_checkpoints():
    model = nn.Sequential(nn.Linear(8, 40), DenseSparseLinear(40, 24, k=16))
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    _set_nibble(sd["1.s_meta"], 3, 5, 0b0101)
    with pytest.raises(RuntimeError, match=r"DenseSparseLinear '1' factor S \(keys 1.s_meta\): "
                                           r"Sparse24 meta: group 5 of row 3 has nibble 0b0101"):
        nn.Sequential(nn.Linear(8, 40), DenseSparseLinear(40, 24, k=16)).load_state_dict(sd)
    other = nn.Sequential(nn.Linear(8, 40), DenseSparseLinear(40, 24, k=16))
    other.load_state_dict(model.state_dict())
    x = torch.randn(3, 8)
    assert torch.equal(other(x), model(x))


def test_load_state_dict_refuses_bad_sign_words():
    torch.manual_seed(0)
    src, dst = LittleBitLinear(40, 24, r=8), LittleBitLinear(40, 24, r=8)
    sd = src.state_dict()
    bad = dict(sd)
    bad["v_words1"] = sd["v_words1"].clone()
    bad["v_words1"][2, 1] |= 1 << 12  # column 44 of 40: a padding bit
    with pytest.raises(RuntimeError, match=r"factor F.*terms\[1\]\.V: SignBits padding bits.*row 2"):
        dst.load_state_dict(bad)
    bad = dict(sd)
    bad["u_words0"] = sd["u_words0"].to(torch.int64)
    with pytest.raises(RuntimeError, match=r"u_words0: expected torch.int32, got torch.int64"):
        dst.load_state_dict(bad)
    bad = dict(sd)
    bad["u_words0"] = sd["u_words0"][:, :0]  # wrong word count: torch's own size check
    with pytest.raises(RuntimeError, match="size mismatch for u_words0"):
        dst.load_state_dict(bad)
    dst.load_state_dict(sd)


def test_load_state_dict_of_formats_validates():
    S = fk.prune_24(torch.randn(6, 24))
    sd = S.state_dict("s.")
    sd["s.meta"] = sd["s.meta"].float()
    with pytest.raises(TypeError, match="meta must be torch.int16, got torch.float32"):
        Sparse24.from_state_dict(sd, "s.")
    F = make_case("littlebit_mm", 8, 40, torch.float32).factors[0]
    sd = F.state_dict()
    sd["0.u_words"] = sd["0.u_words"] | (1 << 30)  # r = 8: bits 8.. are padding
    with pytest.raises(ValueError, match="SignBits padding bits"):
        LittleBitFactors.from_state_dict(sd)
    sd = F.state_dict()
    sd["out_features"] = torch.tensor(9)
    with pytest.raises(ValueError, match="out_features = 9 but the U words have 8 rows"):
        LittleBitFactors.from_state_dict(sd)


def _backends():
    out = ["torch"]
    if fk.backends()["triton"]["available"]:
        out.append("triton")
    return out


_OPS = {"dense_sparse": "dense_sparse_mm", "sparse_dense": "sparse_dense_mm",
        "armor": "armor_mm", "sparse24": "sparse_mm"}
_LAYER_BACKENDS = [(fam, b) for fam in SPARSE_LAYERS for b in _backends()
                   if _OPS[fam] in fk.backends()[b]["ops"]]


@pytest.mark.parametrize("fam,backend", _LAYER_BACKENDS, ids=[f"{f}-{b}" for f, b in
                                                              _LAYER_BACKENDS])
def test_inplace_meta_corruption_is_caught_at_the_next_call(fam, backend):
    torch.manual_seed(0)
    layer = SPARSE_LAYERS[fam]()
    if fam == "armor" and backend == "triton":
        layer = ArmorLinear(64, 32, block=32)
    layer.backend = backend
    x = torch.randn(3, layer.in_features)
    layer(x)
    with torch.no_grad():
        _set_nibble(layer.s_meta, 1, 2, 0b1111)
    with pytest.raises(ValueError, match="group 2 of row 1 has nibble 0b1111"):
        layer(x)


@pytest.mark.parametrize("backend", _backends())
def test_inplace_padding_nibble_garbage_is_caught(backend):
    # cols = 40: 10 groups, meta word 2 holds groups 8, 9 and two padding nibbles.
    D, S = make_case("dense_sparse_mm", 8, 40, torch.float32).factors
    x = torch.randn(2, 40)
    y = fk.dense_sparse_mm(x, D, S, backend=backend)
    assert rel_err(y, x.double() @ (D.double() @ S.to_dense().double()).T) < 1e-5
    S.meta[1, 2] |= 0x0400 | 0x1000  # nibbles 10 and 11 of row 1 (valid-looking 0b0100, 0b0001)
    with pytest.raises(ValueError, match=r"padding nibbles past the last group must be 0 \(row 1,"
                                         r" nibble 10 of 12"):
        fk.dense_sparse_mm(x, D, S, backend=backend)
    with pytest.raises(ValueError, match="padding nibbles"):
        Sparse24(S.values, S.meta, 40)


def test_inplace_sign_word_corruption_is_caught():
    (F,) = make_case("littlebit_mm", 8, 40, torch.float32).factors
    x = torch.randn(2, 40)
    fk.littlebit_mm(x, F)
    F.terms[0][1].words[0, 1] |= 1 << 31
    with pytest.raises(ValueError, match=r"terms\[0\]\.V: SignBits padding bits"):
        fk.littlebit_mm(x, F)


def test_valid_inplace_change_gives_the_new_matrix():
    # A valid nibble written in place is a different pattern, not corruption: every call then
    # computes with the new pattern (the prepare cache is keyed on the meta's version).
    D, S = make_case("dense_sparse_mm", 8, 16, torch.float64).factors
    x = torch.randn(2, 16, dtype=torch.float64)
    fk.dense_sparse_mm(x, D, S)
    _set_nibble(S.meta, 0, 1, 0b1110)  # group 1 of row 0 keeps columns 2, 3
    assert S.indices()[0, 2:4].tolist() == [6, 7]
    y = fk.dense_sparse_mm(x, D, S)
    assert rel_err(y, x @ (D @ S.to_dense()).T) < 1e-12


def test_unchanged_formats_are_not_validated_again(monkeypatch):
    calls = []
    orig = Sparse24._validate
    monkeypatch.setattr(Sparse24, "_validate", lambda self: (calls.append(1), orig(self))[1])
    torch.manual_seed(0)
    layer = DenseSparseLinear(32, 16, k=8)
    x = torch.randn(3, 32)
    layer(x)
    n = len(calls)
    assert layer.S is layer.S  # one format object over the same parameters
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    for _ in range(3):  # optimizer steps change the values in place, never the meta
        layer(x).sum().backward()
        opt.step()
    assert len(calls) == n
    with torch.no_grad():
        layer.s_meta.copy_(layer.s_meta.clone())  # an in-place write: validated once more
    layer(x)
    layer(x)
    assert len(calls) == n + 1


def test_layer_to_moves_and_revalidates_the_format_cache():
    layer = DenseSparseLinear(32, 16, k=8)
    x = torch.randn(3, 32)
    y = layer(x)
    layer.double()
    torch.testing.assert_close(layer(x.double()), y.double(), rtol=1e-6, atol=1e-6)
    layer.float()
    with torch.no_grad():
        layer.s_meta.zero_()
    with pytest.raises(ValueError, match="not a valid"):
        layer(x)


def test_validate_is_vectorized_and_exact_for_every_word():
    # Every int16 word, as the full word of a row and as the last word with 1..3 used groups,
    # against a direct decode of the nibbles: all valid words pass, invalid ones fail.
    w = torch.arange(65536, dtype=torch.int32)
    words = torch.where(w >= 32768, w - 65536, w).to(torch.int16).view(-1, 1)
    nib = meta_nibbles(words, 4)
    ok = (nib & 3) < (nib >> 2)
    for groups in (1, 2, 3, 4):
        want = ok[:, :groups].all(1) & (nib[:, groups:] == 0).all(1)
        assert int(want.sum()) == 6 ** groups
        assert meta_is_valid(words[want], groups)  # every valid word, as rows of one meta
        bad = words[~want]
        for i in range(0, bad.shape[0], 97):  # invalid words one by one (sampled)
            assert not meta_is_valid(bad[i:i + 1], groups), (groups, int(bad[i]))
    # Whole matrices: valid ones pass, one bad nibble anywhere fails (row padding to 4 words,
    # non-contiguous and offset views included).
    S = fk.prune_24(torch.randn(5, 4 * 23))
    assert meta_is_valid(S.meta, 23)
    wide = fk.prune_24(torch.randn(5, 16 * 9)).meta
    assert meta_is_valid(wide[:, 1:8], 28) and meta_is_valid(wide[1:, 3:], 24)
    for r, g in ((0, 0), (4, 22), (2, 11)):
        m = S.meta.clone()
        _set_nibble(m, r, g, 0b1010)
        assert not meta_is_valid(m, 23)
        with pytest.raises(ValueError, match=f"group {g} of row {r} has nibble 0b1010"):
            Sparse24(S.values, m, 4 * 23)


def test_validation_skips_data_on_the_meta_device():
    S = fk.prune_24(torch.randn(4, 16))
    meta_S = Sparse24(S.values.to("meta"), S.meta.to("meta"), 16)
    assert meta_S.shape == (4, 16)
    layer = DenseSparseLinear(16, 8, k=4, device="meta")
    layer.load_state_dict(DenseSparseLinear(16, 8, k=4).state_dict(), assign=True)
    assert layer.s_meta.device.type == "cpu"


# ---- item 3: LittleBit latent state_dict in training mode -------------------------------------
def test_littlebit_latent_state_dict_holds_current_signs_in_train_mode():
    torch.manual_seed(0)
    layer = LittleBitLinear(32, 16, r=8, latent=True, dtype=torch.float64).train()
    with torch.no_grad():
        layer.U0.neg_()  # what training does to some signs, here to all of them
        layer.V1[::2].neg_()
    sd = layer.state_dict()  # taken in training mode
    fresh = LittleBitLinear(32, 16, r=8, dtype=torch.float64).eval()
    fresh.load_state_dict({k: v for k, v in sd.items() if k[0] not in "UV"})
    x = torch.randn(5, 32, dtype=torch.float64)
    with torch.no_grad():
        expect = layer(x)  # the STE forward: the latent signs
    torch.testing.assert_close(fresh(x), expect, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer.to_dense(), fresh.to_dense(), rtol=0, atol=0)
    buf = io.BytesIO()
    torch.save(layer.state_dict(), buf)
    buf.seek(0)
    again = LittleBitLinear(32, 16, r=8, latent=True, dtype=torch.float64)
    again.load_state_dict(torch.load(buf))
    torch.testing.assert_close(again.eval()(x), expect, rtol=1e-12, atol=1e-12)


# ---- item 4: NaN and Inf in x ------------------------------------------------------------------
def test_popcount_reference_nonfinite_rows_are_nan_and_other_rows_unchanged():
    (F,) = make_case("littlebit_mm", 12, 40, torch.float32, seed=3).factors
    x = torch.randn(6, 40)
    clean = littlebit_quant.littlebit_mm_popcount(x, *F.lists())
    bad = x.clone()
    bad[0, 3] = float("nan")
    bad[1, :] = float("nan")
    bad[2, 39] = float("inf")
    bad[3, 0] = -float("inf")
    bad[4, 1] = 3e38  # finite x, but x * g overflows float32 for |g| > 1.14
    g0 = F.terms[0][4]
    with torch.no_grad():
        g0[1] = 10.0
    bias = torch.randn(12)
    y = fk.littlebit_mm(bad, F, bias, backend="torch", quantize_activations=True)
    assert torch.isnan(y[:5]).all()
    ref5 = fk.littlebit_mm(x[5:], F, bias, backend="torch", quantize_activations=True)
    torch.testing.assert_close(y[5:], ref5, rtol=0, atol=0)
    assert torch.isfinite(clean).all()


def test_popcount_reference_nan_holds_per_term():
    # A row that is finite for one term's g and overflows for the other's is still all NaN: a
    # term's NaN contribution reaches the sum.
    (F,) = make_case("littlebit_mm", 6, 8, torch.float32, seed=1).factors
    with torch.no_grad():
        F.terms[0][4].fill_(1.0)
        F.terms[1][4].fill_(1e30)
    x = torch.full((2, 8), 1e10)
    x[1] = 1e-3
    y = fk.littlebit_mm(x, F, backend="torch", quantize_activations=True)
    assert torch.isnan(y[0]).all() and torch.isfinite(y[1]).all()


# ---- item 5: prune_24 and NaN -------------------------------------------------------------------
def test_prune_24_raises_on_nan_naming_the_position():
    W = torch.randn(3, 8)
    W[2, 5] = float("nan")
    with pytest.raises(ValueError, match=r"W has NaN entries \(first at row 2, column 5\)"):
        fk.prune_24(W)
    scores = torch.rand(3, 8)
    scores[1, 0] = float("nan")
    with pytest.raises(ValueError, match=r"scores has NaN entries \(first at row 1, column 0\)"):
        fk.prune_24(torch.randn(3, 8), scores)
    W = torch.tensor([[1.0, float("inf"), -float("inf"), 2.0]])
    assert fk.prune_24(W).indices().tolist() == [[1, 2]]  # infinities rank highest
    with pytest.raises(ValueError, match="NaN or Inf"):
        fk.factorize.prune_24(torch.tensor([[1.0, float("nan"), 0.0, 2.0]]))


# ---- item 6: formats' .to and constructors -----------------------------------------------------
def _formats():
    return {
        "Sparse24": fk.prune_24(torch.randn(4, 16)),
        "SignBits": SignBits.pack(torch.randn(3, 40)),
        "BlockDiag": BlockDiag(torch.randn(2, 3, 3)),
        "MonarchFactors": MonarchFactors.random(14, 10, 4),
        "LittleBitFactors": make_case("littlebit_mm", 6, 10, torch.float32).factors[0],
    }


@pytest.mark.parametrize("name", list(_formats()))
@pytest.mark.parametrize("dtype", [torch.int8, torch.int16, torch.bool, torch.complex64])
def test_format_to_a_non_float_dtype_raises(name, dtype):
    fmt = _formats()[name]
    with pytest.raises(TypeError, match=rf"{name}\.to\({dtype}\): .* take only a floating dtype"):
        fmt.to(dtype)
    with pytest.raises(TypeError, match="floating dtype"):
        fmt.to(dtype=dtype)
    with pytest.raises(TypeError, match="floating dtype"):
        fmt.to(torch.zeros(1, dtype=dtype))
    half = fmt.to(torch.float16)
    assert all(t.dtype == (torch.float16 if t.is_floating_point() else o.dtype)
               for t, o in zip(half.tensors(), fmt.tensors()))
    half.validate()


_BAD_CONSTRUCTORS = [
    # (what, call, exception, message)
    ("monarch 2-D w1", lambda: MonarchFactors(torch.randn(16, 16), torch.randn(4, 4, 4)),
     ValueError, r"w1 must be a non-empty 3-D tensor \(k, q, p\).*got shape \(16, 16\)"),
    ("monarch 2-D w2", lambda: MonarchFactors(torch.randn(4, 4, 4), torch.randn(16, 16)),
     ValueError, r"w2 must be a non-empty 3-D tensor \(l, s, r\)"),
    ("monarch list", lambda: MonarchFactors([[1.0]], torch.randn(4, 4, 4)), TypeError,
     "w1 must be a torch.Tensor"),
    ("monarch float features", lambda: MonarchFactors(torch.randn(4, 4, 4), torch.randn(4, 4, 4),
                                                      in_features=15.5), TypeError,
     "in_features must be an int"),
    ("monarch int w1", lambda: MonarchFactors(torch.ones(4, 4, 4, dtype=torch.int32),
                                              torch.randn(4, 4, 4)), TypeError,
     "w1 must be a floating tensor"),
    ("sparse24 1-D values", lambda: Sparse24(torch.randn(8), torch.zeros(1, dtype=torch.int16)),
     ValueError, "values must be 2-D"),
    ("sparse24 list values", lambda: Sparse24([[1.0, 2.0]], torch.zeros(1, 1, dtype=torch.int16)),
     TypeError, "values must be a torch.Tensor"),
    ("sparse24 float cols", lambda: Sparse24(torch.randn(2, 2), torch.full((2, 1), 4,
                                                                         dtype=torch.int16), 4.0),
     TypeError, "cols must be an int"),
    ("sparse24 3-D meta", lambda: Sparse24(torch.randn(2, 2), torch.zeros(2, 1, 1,
                                                                        dtype=torch.int16)),
     ValueError, "must be 2-D"),
    ("signbits float words", lambda: SignBits(torch.zeros(2, 1), 8), TypeError,
     "words must be torch.int32"),
    ("signbits 1-D words", lambda: SignBits(torch.zeros(2, dtype=torch.int32), 8), ValueError,
     r"words must be \(rows > 0, ceil\(cols/32\)\)"),
    ("signbits cols str", lambda: SignBits(torch.zeros(2, 1, dtype=torch.int32), "8"), TypeError,
     "cols must be an int"),
    ("blockdiag 2-D", lambda: BlockDiag(torch.randn(4, 4)), ValueError,
     r"non-empty \(nblocks, out_b, in_b\)"),
    ("blockdiag int", lambda: BlockDiag(torch.ones(2, 2, 2, dtype=torch.int64)), TypeError,
     "blocks must be a floating tensor"),
    ("littlebit tensor terms", lambda: LittleBitFactors(torch.randn(3, 3)), TypeError,
     "terms must be a list of"),
    ("littlebit short term", lambda: LittleBitFactors([(SignBits.pack(torch.randn(2, 2)),)]),
     ValueError, r"terms\[0\] must be a \(U, V, h, l, g\) tuple, got 1 items"),
    ("littlebit real U", lambda: LittleBitFactors([(torch.randn(2, 2), torch.randn(2, 2),
                                                    torch.ones(2), torch.ones(2), torch.ones(2))]),
     TypeError, r"U and V must be SignBits.*from_real"),
    ("littlebit from_real 3-tuple", lambda: LittleBitFactors.from_real([(torch.randn(2, 2),) * 3]),
     ValueError, r"terms\[0\] must be a \(U, V, h, l, g\) tuple"),
    ("littlebit h not tensor", lambda: LittleBitFactors([(SignBits.pack(torch.randn(2, 2)),
                                                          SignBits.pack(torch.randn(2, 3)),
                                                          [1.0, 1.0], torch.ones(2),
                                                          torch.ones(3))]),
     TypeError, r"terms\[0\]\.h must be a torch.Tensor"),
]


@pytest.mark.parametrize("what,call,exc,msg", _BAD_CONSTRUCTORS,
                         ids=[c[0] for c in _BAD_CONSTRUCTORS])
def test_format_constructors_give_clear_errors(what, call, exc, msg):
    with pytest.raises(exc, match=msg):
        call()


# ---- item 7: convert ---------------------------------------------------------------------------
def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 32))


def test_convert_strict_raises_on_a_pattern_matching_no_layer():
    model = _mlp()
    with pytest.raises(ValueError, match=r"apply to no layer: 'encoder\.\*' \(matches no "
                                         r"nn.Linear\).*layers of the model: '0', '2'"):
        fk.nn.convert(model, {"0": "lowrank", "encoder.*": "monarch"}, verbose=False,
                      strict=True)
    assert isinstance(model[0], nn.Linear)  # nothing converted before the error
    with pytest.raises(ValueError, match=r"'2' \(every layer it matches is taken by the "
                                         r"earlier pattern '\*'\)"):
        fk.nn.convert(model, {"*": None, "2": "lowrank"}, verbose=False, strict=True)
    with pytest.warns(UserWarning, match=r"apply to no layer: 'encoder\.\*'"):
        report = fk.nn.convert(model, {"0": "lowrank", "encoder.*": "monarch"}, verbose=False)
    assert report.unused_patterns == ["encoder.*"] and len(report.layers) == 1


def test_convert_warns_when_a_layer_gets_larger_than_dense():
    model = nn.Sequential(nn.Linear(32, 64, dtype=torch.bfloat16))
    with pytest.warns(UserWarning, match=r"layer '0' \(armor, .*larger than the dense layer: "
                                         r"21\.00 bits/weight against 16 .*bfloat16"):
        report = fk.nn.convert(model, {"*": ("armor", {"block": 16, "iters": 1})},
                               verbose=False)
    assert math.isclose(report.layers[0].bits_per_weight, 21.0)
    small = nn.Sequential(nn.Linear(256, 256))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fk.nn.convert(small, {"*": ("lowrank", {"r": 16})}, verbose=False)


def test_convert_wrong_keyword_names_layer_family_and_arguments():
    model = _mlp()
    with pytest.raises(TypeError, match=r"layer '2' \(spec pattern '2', family 'lowrank'\): "
                                        r"unknown argument 'rank'; LowRankLinear.from_linear "
                                        r"accepts r"):
        fk.nn.convert(model, {"0": ("monarch", {"nblocks": 4}), "2": ("lowrank", {"rank": 8})},
                      verbose=False)
    assert isinstance(model[0], nn.Linear)  # checked before any layer changed
    with pytest.raises(TypeError, match=r"family 'armor'\): unknown arguments 'blk', 'steps'; "
                                        r"ArmorLinear.from_linear accepts block, iters, X"):
        fk.nn.convert(model, {"*": {"family": "armor", "blk": 16, "steps": 2}}, verbose=False)


def test_every_layer_family_round_trips_through_state_dict_with_validation():
    for make in (lambda: MonarchLinear(20, 12, nblocks=4), lambda: LowRankLinear(20, 12, r=3),
                 lambda: ArmorLinear(16, 24, block=8), lambda: LittleBitLinear(20, 12, r=4)):
        torch.manual_seed(0)
        a = make()
        torch.manual_seed(1)
        b = make()
        b.load_state_dict(a.state_dict())
        x = torch.randn(2, a.in_features)
        torch.testing.assert_close(a.eval()(x), b.eval()(x), rtol=0, atol=0)
