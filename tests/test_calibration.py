"""fk.nn.convert(model, spec, calibration=batches): per-layer input statistics collected with
forward hooks in bounded memory, fed to the factorizers that weigh by activations (Wanda 2:4,
ARMOR, dense-sparse), with a progress bar over the layers."""

import copy

import pytest
import torch
from torch import nn

import factorkern as fk
from factorkern.nn.calibration import Stats

from families import rel_err


@pytest.mark.parametrize("n_rows", [7, 40, 300])
def test_stats_keep_gram_in_bounded_memory(n_rows):
    torch.manual_seed(0)
    X = torch.randn(n_rows, 24, dtype=torch.float64) * torch.linspace(0.1, 3, 24)
    st = Stats(24, "gram")
    for chunk in X.split(9):
        st.add(chunk.reshape(1, -1, 24))  # (..., in) like a layer's input
        assert st.nbytes() <= 24 * 24 * 8  # never more than in x in numbers
    Xe = st.X()
    assert rel_err(Xe.T @ Xe, X.T @ X) < 1e-12
    if n_rows <= 24:
        assert torch.equal(Xe, X)  # few rows: the rows themselves
    norms = Stats(24, "norms")
    for chunk in X.split(9):
        norms.add(chunk)
    assert norms.nbytes() == 24 * 8
    assert rel_err(norms.X()[0], X.norm(dim=0)) < 1e-12
    with pytest.raises(ValueError, match="mode must be"):
        Stats(24, "full")


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(32, 64, dtype=torch.float64)
        self.b = nn.Linear(64, 16, dtype=torch.float64)

    def forward(self, x, scale=1.0):
        return self.b(torch.relu(self.a(x * scale)))


def _inputs(net, batches):
    """The true inputs of net.a and net.b on the batches (float64)."""
    xa = torch.cat([x * s for x, s in batches]).reshape(-1, 32)
    return xa, torch.relu(net.a(xa))


def test_calibration_feeds_wanda_and_armor_like_their_true_inputs():
    torch.manual_seed(0)
    net = _Net()
    # inputs with very uneven feature scales, so Wanda's pattern differs from magnitude's
    batches = [(torch.randn(4, 5, 32, dtype=torch.float64) * torch.logspace(-2, 1, 32), 0.5)
               for _ in range(6)]
    xa, xb = _inputs(net, batches)
    with torch.no_grad():
        want_a = fk.nn.Sparse24Linear.from_linear(net.a, X=xa)
        want_b = fk.nn.ArmorLinear.from_linear(net.b, block=8, iters=2, X=xb)
        magnitude = fk.nn.Sparse24Linear.from_linear(net.a)
    model = copy.deepcopy(net)
    report = fk.nn.convert(model, {"a": "sparse24", "b": ("armor", {"block": 8, "iters": 2})},
                           calibration=({"x": x, "scale": s} for x, s in batches),
                           verbose=False)
    assert [r.name for r in report.layers] == ["a", "b"]
    assert torch.equal(model.a.s_meta, want_a.s_meta)          # Wanda's pattern
    assert not torch.equal(model.a.s_meta, magnitude.s_meta)   # not the magnitude one
    # 120 rows > in = 64: ARMOR got a square root of X.T X instead of X, the same objective
    assert rel_err(model.b.to_dense(), want_b.to_dense()) < 1e-8
    plain = fk.nn.ArmorLinear.from_linear(net.b, block=8, iters=2)
    W, xb = net.b.weight.detach(), xb.detach()

    def out_err(layer):
        return rel_err(xb @ layer.to_dense().detach().T, xb @ W.T)
    assert out_err(model.b) < 0.5 * out_err(plain)  # measured 0.074 vs 0.18: it weighed the fit
    assert model.a.conversion == {"family": "sparse24", "calibrated": True, "args": {}}
    assert not model.a._forward_pre_hooks and not model.b._forward_pre_hooks


def test_calibration_dense_sparse_output_error_and_positional_batches(capsys):
    torch.manual_seed(0)
    net = _Net()
    batches = [(torch.randn(10, 32, dtype=torch.float64), 1.0) for _ in range(2)]
    xa, _ = _inputs(net, batches)
    model = copy.deepcopy(net)
    fk.nn.convert(model, {"a": ("dense_sparse", {"k": 16, "iters": 2}), "b": "lowrank"},
                  calibration=batches, verbose=False, progress=True)
    want = fk.factorize.dense_sparse(net.a.weight.detach(), 16, iters=2, X=xa)
    assert model.a.conversion["calibrated"] and not model.b.conversion["calibrated"]
    assert rel_err(model.a.to_dense(), want.factors[0] @ want.factors[1].to_dense()) < 1e-12
    err = capsys.readouterr().err
    assert "calibration: batch 2" in err and "2/2 b (lowrank)" in err and "[" + "#" * 20 + "]" \
        in err


def test_calibration_hooks_removed_when_a_batch_fails_and_x_in_spec_wins():
    net = _Net()

    def batches():
        yield (torch.randn(3, 32, dtype=torch.float64),)
        raise RuntimeError("data loader broke")

    with pytest.raises(RuntimeError, match="data loader broke"):
        fk.nn.convert(net, {"*": "sparse24"}, calibration=batches(), verbose=False)
    assert not net.a._forward_pre_hooks and isinstance(net.a, nn.Linear)
    X = torch.randn(50, 32, dtype=torch.float64)
    model = copy.deepcopy(net)
    fk.nn.convert(model, {"a": ("sparse24", {"X": X})},
                  calibration=[torch.randn(4, 32, dtype=torch.float64)], verbose=False)
    assert torch.equal(model.a.s_meta, fk.nn.Sparse24Linear.from_linear(net.a, X=X).s_meta)
