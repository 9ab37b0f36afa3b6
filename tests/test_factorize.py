"""factorkern.factorize: exact recovery of structured matrices, monotone errors as the budget
grows, ARMOR never worse than 2:4 pruning, dtypes/devices of the factors, clear errors, and the
factors plugged into the public ops reproduce W_hat."""

import math

import pytest
import torch

import factorkern as fk
from factorkern.factorize import (Factorization, armor, dense_sparse, littlebit, lowrank,
                                  monarch, prune_24)
from factorkern.formats import MonarchFactors


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _decaying(out_f, in_f, seed=0, dtype=torch.float64):
    """A matrix with a decaying spectrum, like trained weights (not exactly structured)."""
    g = _gen(seed)
    U = torch.linalg.qr(torch.randn(out_f, out_f, generator=g, dtype=torch.float64))[0]
    V = torch.linalg.qr(torch.randn(in_f, in_f, generator=g, dtype=torch.float64))[0]
    n = min(out_f, in_f)
    s = 1.0 / (1.0 + torch.arange(n, dtype=torch.float64)) ** 0.7
    return ((U[:, :n] * s) @ V[:, :n].T).to(dtype)


def _random(out_f, in_f, seed=0, dtype=torch.float64):
    return torch.randn(out_f, in_f, generator=_gen(seed), dtype=torch.float64).to(dtype)


def _two_four(out_f, in_f, seed=0):
    W = _random(out_f, in_f, seed)
    return fk.prune_24(W).to_dense()


def _rebuild(name, factors):
    """W_hat in float64 from the returned factors."""
    f64 = torch.float64
    if name == "prune_24":
        return factors.to_dense().to(f64)
    if name in ("monarch", "littlebit"):
        return factors.to(f64).to_dense()
    if name == "lowrank":
        U, V = factors
        return U.to(f64) @ V.to(f64).T
    if name == "ds":
        D, S = factors
        return D.to(f64) @ S.to_dense().to(f64)
    if name == "sd":
        S, D = factors
        return S.to_dense().to(f64) @ D.to(f64)
    A, S, B = factors
    return A.to_dense().to(f64) @ S.to_dense().to(f64) @ B.to_dense().to(f64)


def _float_tensors(factors):
    parts = factors if isinstance(factors, tuple) else (factors,)
    out = []
    for p in parts:
        if isinstance(p, torch.Tensor):
            out.append(p)
        elif isinstance(p, fk.LittleBitFactors):
            out += [t for term in p.terms for t in term[2:]]
        else:
            out += [t for t in p.tensors() if t.is_floating_point()]
    return out


CALLS = {
    "prune_24": lambda W, X=None: prune_24(W, X),
    "ds": lambda W, X=None: dense_sparse(W, 16, "ds", iters=2, X=X),
    "sd": lambda W, X=None: dense_sparse(W, 16, "sd", iters=2, X=X),
    "monarch": lambda W, X=None: monarch(W, 4, X=X),
    "littlebit": lambda W, X=None: littlebit(W, 8, X=X),
    "armor": lambda W, X=None: armor(W, 16, X=X, iters=2),
    "lowrank": lambda W, X=None: lowrank(W, 8, X=X),
}


# -- result type, dtypes, reported errors ---------------------------------------------------
@pytest.mark.parametrize("name", sorted(CALLS))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_result_dtype_and_errors(name, dtype):
    W = _decaying(48, 64, seed=1, dtype=dtype)
    X = _random(37, 64, seed=2, dtype=dtype)
    res = CALLS[name](W, X)
    assert isinstance(res, Factorization)
    for t in _float_tensors(res.factors):
        assert t.dtype == dtype and t.device == W.device
    W_hat = _rebuild(name, res.factors)
    assert W_hat.shape == W.shape
    W64, X64 = W.to(torch.float64), X.to(torch.float64)
    err = float(torch.linalg.matrix_norm(W64 - W_hat) / torch.linalg.matrix_norm(W64))
    out = float(torch.linalg.matrix_norm(X64 @ (W64 - W_hat).T)
                / torch.linalg.matrix_norm(X64 @ W64.T))
    assert math.isclose(res.error, err, rel_tol=1e-9, abs_tol=1e-12)
    assert math.isclose(res.output_error, out, rel_tol=1e-9, abs_tol=1e-12)
    assert 0 <= res.error < 1.0
    assert CALLS[name](W).output_error is None


def test_factors_feed_the_ops():
    """Each family's factors through its public op give x @ W_hat.T."""
    W = _decaying(32, 64, seed=3)
    x = _random(5, 64, seed=4)
    f = dense_sparse(W, 16, "ds", iters=1)
    cases = [
        (fk.dense_sparse_mm(x, *f.factors), f, "ds"),
        (fk.sparse_dense_mm(x, *dense_sparse(W, 16, "sd", iters=1).factors),
         dense_sparse(W, 16, "sd", iters=1), "sd"),
        (fk.armor_mm(x, *armor(W, 16, iters=1).factors), armor(W, 16, iters=1), "armor"),
        (fk.littlebit_mm(x, littlebit(W, 4).factors), littlebit(W, 4), "littlebit"),
        (fk.monarch_mm(x, monarch(W, 4, rank=2).factors), monarch(W, 4, rank=2), "monarch"),
        (fk.lowrank_mm(x, *lowrank(W, 4).factors), lowrank(W, 4), "lowrank"),
    ]
    for y, res, name in cases:
        ref = x @ _rebuild(name, res.factors).T
        assert torch.allclose(y, ref, rtol=1e-10, atol=1e-10), name


# -- exact recovery of structured matrices ---------------------------------------------------
@pytest.mark.parametrize("shape", [(16, 32), (40, 24), (8, 8)])
def test_prune_24_exact_on_24(shape):
    W = _two_four(*shape)
    res = prune_24(W)
    assert res.error == 0.0
    assert torch.equal(res.factors.to_dense(), W)


def test_prune_24_wanda_scores():
    """A column carrying large activations keeps its weights though they are small."""
    W = _random(8, 16, seed=5)
    W[:, 0] = 1e-3
    X = _random(64, 16, seed=6)
    X[:, 0] *= 1e5
    assert bool((prune_24(W).factors.to_dense()[:, 0] == 0).all())
    assert bool((prune_24(W, X).factors.to_dense()[:, 0] != 0).all())
    W_mag = prune_24(W).factors.to_dense()
    out_mag = float(torch.linalg.matrix_norm(X @ (W - W_mag).T) / torch.linalg.matrix_norm(X @ W.T))
    assert prune_24(W, X).output_error < out_mag
    Xb = X.reshape(4, 16, 16)  # leading dims are flattened
    assert prune_24(W, Xb).output_error == pytest.approx(prune_24(W, X).output_error)


@pytest.mark.parametrize("shape,r", [((24, 40), 3), ((40, 24), 1), ((16, 16), 16)])
def test_lowrank_exact_on_rank_r(shape, r):
    W = _random(shape[0], r, seed=7) @ _random(r, shape[1], seed=8)
    res = lowrank(W, r)
    assert res.error < 1e-13
    U, V = res.factors
    assert U.shape == (shape[0], r) and V.shape == (shape[1], r)


@pytest.mark.parametrize("in_f,out_f,nblocks", [(64, 64, 8), (48, 80, 4), (80, 48, 4),
                                                 (30, 50, 4), (96, 96, 2)])
def test_monarch_exact_on_monarch(in_f, out_f, nblocks):
    M = MonarchFactors.random(in_f, out_f, nblocks, dtype=torch.float64, generator=_gen(9))
    res = monarch(M.to_dense(), nblocks)
    assert res.error < 1e-13
    # rank 1 keeps fly's MonarchLinear shapes (checkpoints load unchanged)
    s1, s2 = MonarchFactors.fly_shapes(in_f, out_f, nblocks)
    assert tuple(res.factors.w1.shape) == s1 and tuple(res.factors.w2.shape) == s2
    assert res.factors.shape == (out_f, in_f)


def test_monarch_rank_exact_and_shapes():
    (k, q, p), (l, s, r) = MonarchFactors.fly_shapes(64, 64, 8)
    g = _gen(10)
    w1 = torch.randn(k, 2 * q, p, generator=g, dtype=torch.float64)
    w2 = torch.randn(l, s, 2 * r, generator=g, dtype=torch.float64)
    W = MonarchFactors(w1, w2).to_dense()
    assert monarch(W, 8, rank=1).error > 0.1
    res = monarch(W, 8, rank=2)
    assert res.error < 1e-13
    assert tuple(res.factors.w1.shape) == (k, 2 * q, p)
    assert tuple(res.factors.w2.shape) == (l, s, 2 * r)


def test_monarch_is_locally_optimal():
    """The projection beats every nearby Monarch matrix of the same shapes."""
    W = _random(32, 48, seed=11)
    res = monarch(W, 4)
    g = _gen(12)
    for _ in range(5):
        w1 = res.factors.w1 + 1e-3 * torch.randn(res.factors.w1.shape, generator=g,
                                                 dtype=torch.float64)
        w2 = res.factors.w2 + 1e-3 * torch.randn(res.factors.w2.shape, generator=g,
                                                 dtype=torch.float64)
        W_near = MonarchFactors(w1, w2, 48, 32).to_dense()
        near = float(torch.linalg.matrix_norm(W - W_near) / torch.linalg.matrix_norm(W))
        assert res.error <= near + 1e-12


def test_littlebit_exact_on_rank1_sign_matrix():
    g = _gen(13)
    h = torch.rand(24, generator=g, dtype=torch.float64) + 0.5
    gg = torch.rand(40, generator=g, dtype=torch.float64) + 0.5
    su = torch.randn(24, 1, generator=g, dtype=torch.float64).sign()
    sv = torch.randn(40, 1, generator=g, dtype=torch.float64).sign()
    W = 0.7 * h[:, None] * (su @ sv.T) * gg
    res = littlebit(W, 1, residual=False)
    assert res.error < 1e-13
    assert len(res.factors.terms) == 1
    assert len(littlebit(W, 1).factors.terms) == 2


def test_dense_sparse_exact_when_sparse_factor_is_square():
    """W = D S with S (in, in) 2:4 invertible ("ds", k = in) or W = S D with S (out, out)
    ("sd", k = out) is always representable: one D-step recovers it."""
    W = _random(24, 16, seed=14)
    assert dense_sparse(W, 16, "ds", iters=1).error < 1e-10
    W = _random(16, 24, seed=15)
    assert dense_sparse(W, 16, "sd", iters=1).error < 1e-10


def test_dense_sparse_wider_than_rank():
    """k > min(out, in) is allowed; "ds" with k = in (S square) is exact."""
    W = _random(16, 32, seed=21)
    wide = dense_sparse(W, 32, "ds", iters=2)
    assert wide.error < 1e-10
    assert wide.error < dense_sparse(W, 16, "ds", iters=2).error
    assert wide.factors[0].shape == (16, 32) and wide.factors[1].shape == (32, 32)
    assert dense_sparse(W, 24, "sd", iters=2).factors[0].shape == (16, 24)


@pytest.mark.parametrize("use_x", [False, True])
def test_armor_exact_on_24_and_never_worse(use_x):
    W = _two_four(32, 64, seed=16)
    assert armor(W, 16, iters=2).error == 0.0
    W = _decaying(64, 128, seed=17)
    X = _random(200, 128, seed=18) * torch.linspace(0.1, 3, 128, dtype=torch.float64) \
        if use_x else None
    base = prune_24(W, X)
    prev = None
    for iters in (0, 1, 4, 12):
        res = armor(W, 32, X=X, iters=iters)
        metric = res.output_error if use_x else res.error
        ref = base.output_error if use_x else base.error
        assert metric <= ref + 1e-12
        if iters == 0:
            assert metric == pytest.approx(ref, abs=1e-12)
        if prev is not None:
            assert metric <= prev + 1e-12
        prev = metric
    assert prev < 0.9 * ref  # it does improve on plain 2:4
    A, S, B = res.factors
    assert A.shape == (64, 64) and S.shape == (64, 128) and B.shape == (128, 128)
    assert A.blocks.shape == (2, 32, 32) and B.blocks.shape == (4, 32, 32)


# -- errors decrease as the budget grows ------------------------------------------------------
def _assert_decreasing(errs, strict=True):
    for a, b in zip(errs, errs[1:]):
        assert b < a if strict else b <= a + 1e-12, errs


@pytest.mark.parametrize("make", [_decaying, _random])
def test_budget_monotone(make):
    W = make(48, 64, seed=19)
    _assert_decreasing([lowrank(W, r).error for r in (2, 8, 24, 48)])
    assert lowrank(W, 48).error < 1e-12
    _assert_decreasing([monarch(W, n).error for n in (16, 8, 4, 2)])
    _assert_decreasing([monarch(W, 8, rank=r).error for r in (1, 2, 4)])
    _assert_decreasing([littlebit(W, r).error for r in (2, 8, 32)])
    for r in (2, 8, 32):
        assert littlebit(W, r).error < littlebit(W, r, residual=False).error
    for order in ("ds", "sd"):
        _assert_decreasing([dense_sparse(W, k, order, iters=3).error for k in (8, 24, 48)])
        _assert_decreasing([dense_sparse(W, 24, order, iters=i).error for i in (0, 1, 3, 8)],
                           strict=False)


# -- half precision on a realistic size and speed ---------------------------------------------
def test_minilm_shape_fp16_fast():
    """A 384 x 1536 fp16 layer (MiniLM's FFN) in every family at small budgets, on the CPU."""
    W = (_decaying(384, 1536, seed=20, dtype=torch.float32) * 10).to(torch.float16)
    for res in (prune_24(W), dense_sparse(W, 192, "ds", iters=2),
                dense_sparse(W, 192, "sd", iters=2), monarch(W, 4), littlebit(W, 64),
                armor(W, 128, iters=2), lowrank(W, 96)):
        assert 0 < res.error < 1.0 and math.isfinite(res.error)


# -- clear errors ------------------------------------------------------------------------------
def test_bad_arguments():
    W = _random(16, 32)
    with pytest.raises(TypeError, match="W"):
        prune_24(torch.ones(4, 8, dtype=torch.int32))
    with pytest.raises(ValueError, match="W"):
        lowrank(torch.ones(8), 1)
    with pytest.raises(ValueError, match="multiple of 4"):
        prune_24(_random(4, 6))
    with pytest.raises(ValueError, match="X"):
        prune_24(W, _random(5, 31))
    with pytest.raises(ValueError, match="r=17"):
        lowrank(W, 17)
    with pytest.raises(TypeError, match="r must be an int"):
        lowrank(W, 2.0)
    with pytest.raises(ValueError, match="r=0"):
        littlebit(W, 0)
    with pytest.raises(ValueError, match="nblocks=17"):
        monarch(W, 17)
    with pytest.raises(ValueError, match="rank=0"):
        monarch(W, 4, rank=0)
    with pytest.raises(ValueError, match="order"):
        dense_sparse(W, 8, "dd")
    with pytest.raises(ValueError, match="k=6"):
        dense_sparse(W, 6, "sd")
    with pytest.raises(ValueError, match="k=0"):
        dense_sparse(W, 0, "ds")
    with pytest.raises(ValueError, match="iters"):
        dense_sparse(W, 8, iters=-1)
    with pytest.raises(ValueError, match="block=12"):
        armor(W, 12)
    with pytest.raises(ValueError, match="NaN"):
        lowrank(torch.full((4, 4), float("nan")), 1)


# -- on the GPU: same factors, W's device kept -------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(CALLS))
def test_on_cuda_matches_cpu(name):
    W = _decaying(64, 128, seed=22, dtype=torch.float32)
    X = _random(50, 128, seed=23, dtype=torch.float32)
    cpu = CALLS[name](W, X)
    gpu = CALLS[name](W.cuda(), X.cuda())
    for t in _float_tensors(gpu.factors):
        assert t.is_cuda and t.dtype == torch.float32
    # fp32 on two devices: the fits agree to a few digits (iterative ones may differ a little)
    assert gpu.error == pytest.approx(cpu.error, rel=1e-3, abs=1e-6)
    assert gpu.output_error == pytest.approx(cpu.output_error, rel=1e-3, abs=1e-6)
