"""The layers: forward vs their dense W, from_linear, extra_repr, state_dict, convert, training
(gradients, LittleBit's STE) and torch.compile(fullgraph=True) on the CPU."""

import io

import pytest
import torch
from torch import nn

import factorkern as fk
from factorkern.nn import (ArmorLinear, DenseSparseLinear, LittleBitLinear, LowRankLinear,
                           MonarchLinear, Sparse24Linear, SparseDenseLinear)

from families import rel_err

LAYERS = [
    lambda i, o, **kw: DenseSparseLinear(i, o, k=16, **kw),
    lambda i, o, **kw: SparseDenseLinear(i, o, k=16, **kw),
    lambda i, o, **kw: ArmorLinear(i, o, block=8, **kw),
    lambda i, o, **kw: LittleBitLinear(i, o, r=8, **kw),
    lambda i, o, **kw: MonarchLinear(i, o, nblocks=4, **kw),
    lambda i, o, **kw: Sparse24Linear(i, o, **kw),
    lambda i, o, **kw: LowRankLinear(i, o, r=8, **kw),
]
IDS = ["dense_sparse", "sparse_dense", "armor", "littlebit", "monarch", "sparse24", "lowrank"]


@pytest.mark.parametrize("make", LAYERS, ids=IDS)
def test_layer_forward_matches_to_dense(make):
    torch.manual_seed(0)
    layer = make(32, 24, dtype=torch.float64)
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.randn(2, 5, 32, dtype=torch.float64)
    y = layer(x)
    assert y.shape == (2, 5, 24)
    assert rel_err(y, x @ layer.to_dense().T + layer.bias) < 1e-12
    r = repr(layer)
    assert "compression=" in r and "bits_per_weight=" in r
    assert layer.compression_ratio() > 0 and layer.bits_per_weight() > 0


@pytest.mark.parametrize("make", LAYERS, ids=IDS)
def test_layer_state_dict_roundtrip(make):
    torch.manual_seed(0)
    a = make(32, 24)
    torch.manual_seed(1)
    b = make(32, 24)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b.load_state_dict(torch.load(buf))
    x = torch.randn(4, 32)
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)


@pytest.mark.parametrize("make", LAYERS, ids=IDS)
def test_layer_trains(make):
    torch.manual_seed(0)
    layer = make(32, 24, dtype=torch.float64)
    x = torch.randn(6, 32, dtype=torch.float64, requires_grad=True)
    layer(x).pow(2).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    grads = [p.grad for p in layer.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_littlebit_latent_ste_trains_and_packs():
    torch.manual_seed(0)
    layer = LittleBitLinear(32, 16, r=8, latent=True, dtype=torch.float64)
    x = torch.randn(5, 32, dtype=torch.float64)
    layer.train()
    y_train = layer(x)
    y_train.pow(2).sum().backward()
    assert layer.U0.grad is not None and layer.U0.grad.abs().sum() > 0
    assert layer.V1.grad is not None and layer.V1.grad.abs().sum() > 0
    with torch.no_grad():
        layer.U0.neg_()  # flip every latent sign
    layer.eval()         # re-packs the words
    assert torch.equal(layer.F.terms[0][0].unpack(torch.float64), torch.sign(layer.U0).where(
        layer.U0 != 0, torch.ones_like(layer.U0)))
    layer.train()
    torch.testing.assert_close(layer.eval()(x), layer.train()(x))


def test_smooth_sign_gradient():
    x = torch.tensor([-0.5, 0.0, 0.003, 0.5], dtype=torch.float64, requires_grad=True)
    y = fk.nn.smooth_sign(x)
    assert y.tolist() == [-1.0, 1.0, 1.0, -1.0 * -1.0]
    y.sum().backward()
    expect = 100 * (1 - torch.tanh(100 * x.detach()) ** 2)
    torch.testing.assert_close(x.grad, expect)


class _AllFamilies(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(*[make(32, 32) for make in LAYERS[:-1]],
                                    LowRankLinear(32, 16, r=8))

    def forward(self, x):
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return x


def test_torch_compile_fullgraph_matches_eager():
    torch.manual_seed(0)
    model = _AllFamilies().eval()
    x = torch.randn(3, 7, 32)
    with torch.no_grad():
        eager = model(x)
        compiled = torch.compile(model, fullgraph=True)(x)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)


def test_convert_small_model_with_each_family():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(),
                          nn.Linear(32, 16, bias=False))
    x = torch.randn(4, 64)
    dense = model(x)
    families = {
        "dense_sparse": {"k": 32, "iters": 2}, "sparse_dense": {"k": 32, "iters": 2},
        "armor": {"block": 16, "iters": 2}, "littlebit": {"r": 8}, "monarch": {"nblocks": 4},
        "lowrank": {"r": 16}, "sparse24": {},
    }
    for fam, how in families.items():
        m = __import__("copy").deepcopy(model)
        report = fk.nn.convert(m, {"*": (fam, how)}, verbose=False)
        assert len(report.layers) == 3, (fam, report.skipped)
        assert all(isinstance(getattr(m, i), fk.nn.FAMILIES[fam]) for i in ("0", "2", "4"))
        y = m(x)
        assert y.shape == dense.shape and torch.isfinite(y).all()
        t = report.totals()
        assert t["params_before"] == 64 * 64 + 64 * 32 + 32 * 16
        assert "total (3 layers)" in str(report)
        for row in report.layers:
            assert 0 <= row.error < 1.5


def test_convert_patterns_skip_and_errors():
    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 30))
    report = fk.nn.convert(model, {"0": ("lowrank", {"r": 4}), "1": ("armor", {"block": 16})},
                           verbose=False)
    assert isinstance(model[0], LowRankLinear) and isinstance(model[1], nn.Linear)
    assert report.skipped and report.skipped[0].startswith("1 ")
    with pytest.raises(ValueError, match="block=16 must divide"):
        fk.nn.convert(nn.Sequential(nn.Linear(64, 30)), {"*": ("armor", {"block": 16})},
                      verbose=False, strict=True)
    with pytest.raises(ValueError, match="unknown family 'sparse'"):
        fk.nn.convert(model, {"*": "sparse"})


def test_from_linear_rejects_non_linear():
    with pytest.raises(TypeError, match="expects an nn.Linear"):
        LowRankLinear.from_linear(nn.Conv1d(3, 3, 1))


def test_from_linear_exact_lowrank_is_recovered():
    torch.manual_seed(0)
    lin = nn.Linear(24, 16, dtype=torch.float64)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(16, 3, dtype=torch.float64) @
                         torch.randn(3, 24, dtype=torch.float64))
    layer = LowRankLinear.from_linear(lin, r=3)
    x = torch.randn(5, 24, dtype=torch.float64)
    assert rel_err(layer(x), lin(x)) < 1e-10
