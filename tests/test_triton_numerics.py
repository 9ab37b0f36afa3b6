"""Triton kernels at the edges of their number formats and address ranges (interpreter).

* fp16 intermediates: unbalanced factor scales and outlier activations push the intermediate
  product (x @ first factor) past fp16's 65504 while the result stays in range; the kernels keep
  it in fp32's range and must match the oracle, finite, in every op and variant.
* 64-bit row offsets: a strided x whose rows lie more than 2**31 elements apart (virtual memory:
  only the addressed rows are touched) gives the oracle's result; calls that 32-bit factor
  offsets cannot address are refused by ``supports`` with the reason.
* Sparse24 padding: garbage in the unused nibbles of the last meta word (cols not a multiple of
  16) changes nothing.
"""

from __future__ import annotations

import pytest
import torch

import factorkern as fk
from factorkern.formats import LittleBitFactors, MonarchFactors, Sparse24
from factorkern.triton_kernels._common import force

from families import rel_err

OPS = ("dense_sparse_mm", "sparse_dense_mm", "armor_mm", "littlebit_mm", "monarch_mm",
       "lowrank_mm")


def _g(seed):
    return torch.Generator().manual_seed(seed)


def _outlier_x(m, n_in, g, big=2.0e4):
    """x ~ N(0, 1) with a few outlier features of magnitude ``big`` (fp16-representable)."""
    x = torch.randn(m, n_in, generator=g, dtype=torch.float64)
    cols = torch.randperm(n_in, generator=g)[:4]
    x[:, cols] = big * torch.sign(x[:, cols])
    return x


def _probe(op, kind, g):
    """(x, factors, call) in float64 for a probe whose intermediate exceeds fp16's range.

    kind "scales": first factor scaled up by 2**10, second down by 2**-10 (W unchanged);
    kind "outliers": outlier features in x, a small second factor."""
    up, down = (2.0 ** 10, 2.0 ** -10) if kind == "scales" else (1.0, 2.0 ** -6)
    n_in, n_out, m = 64, 48, 5
    x = _outlier_x(m, n_in, g) if kind == "outliers" else \
        torch.randn(m, n_in, generator=g, dtype=torch.float64) * 32
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    if op == "dense_sparse_mm":
        S = fk.prune_24(r(32, n_in) * up)
        D = r(n_out, 32) * down / 4
        return x, (D, S)
    if op == "sparse_dense_mm":
        D = r(32, n_in) * up
        S = fk.prune_24(r(n_out, 32) * down / 4)
        return x, (S, D)
    if op == "lowrank_mm":
        return x, (r(n_out, 16) * down / 4, r(n_in, 16) * up)
    if op == "armor_mm":
        A = fk.BlockDiag(r(2, 32, 32) * down / 4)
        B = fk.BlockDiag(r(n_in // 32, 32, 32) * up)
        return x, (A, fk.prune_24(r(64, n_in) / 4), B)
    if op == "littlebit_mm":
        terms = [(r(n_out, 32), r(n_in, 32), r(n_out).abs() * down / 64, r(32).abs() + 0.5,
                  r(n_in).abs() * up + 4) for _ in range(2)]
        return x, (LittleBitFactors.from_real(terms),)
    if op == "monarch_mm":
        M = MonarchFactors.random(n_in, n_out, 4, dtype=torch.float64, generator=g)
        return x, (MonarchFactors(M.w1 * up * 8, M.w2 * down, n_in, n_out),)
    raise ValueError(op)


def _cast(f, dtype):
    return f.to(dtype) if isinstance(f, torch.Tensor) else f.to(dtype)


def _f64(f):
    return f.double() if isinstance(f, torch.Tensor) else f.to(torch.float64)


@pytest.mark.parametrize("variant", ["decode", "prefill"])
@pytest.mark.parametrize("kind", ["scales", "outliers"])
@pytest.mark.parametrize("op", OPS)
def test_fp16_intermediate_never_overflows(op, kind, variant):
    x64, factors64 = _probe(op, kind, _g(OPS.index(op) * 10 + len(kind)))
    x = x64.half()
    factors = tuple(_cast(f, torch.float16) for f in factors64)
    fn = getattr(fk, op)
    ref = fn(x.double(), *(_f64(f) for f in factors), backend="torch")
    assert torch.isfinite(ref).all() and ref.abs().max() < 6e4, "probe must fit fp16's range"
    # and the probe must be one that needs it: the intermediate leaves fp16's range
    assert _intermediate_max(op, x.double(), [_f64(f) for f in factors]) > 65504
    with force(variant, poison=True):
        y = fn(x, *factors, backend="triton")
    assert torch.isfinite(y).all(), f"{op} {kind} {variant}: inf/NaN where the oracle is finite"
    err = rel_err(y, ref)
    assert err < 1e-2, f"{op} {kind} {variant}: rel err {err:.2e}"


def _intermediate_max(op, x, f):
    """Largest |entry| of the first intermediate product, in float64."""
    if op == "dense_sparse_mm":
        return (x @ f[1].to_dense().T).abs().max().item()
    if op == "sparse_dense_mm":
        return (x @ f[1].T).abs().max().item()
    if op == "lowrank_mm":
        return (x @ f[1]).abs().max().item()
    if op == "armor_mm":
        return (x @ f[2].to_dense().T).abs().max().item()
    if op == "littlebit_mm":
        _, _, _, _, g = f[0].lists()
        return (x * g[0]).abs().max().item()
    if op == "monarch_mm":
        from factorkern.reference.monarch import monarch_apply

        M = f[0]
        # stage 1 alone: w2 = identity blocks would change shapes; use |x| @ |w1| bound instead
        k, q, p = M.w1.shape
        xs = torch.nn.functional.pad(x, (0, k * p - x.shape[1])).view(x.shape[0], k, p)
        return torch.einsum("bkp,kqp->bkq", xs, M.w1).abs().max().item()
    raise ValueError(op)


# ---------------------------------------------------------------------------------------------
# 64-bit row offsets
# ---------------------------------------------------------------------------------------------
def _far_rows_x(n_in, dtype, g):
    """x (3, n_in) whose rows are 2**30 + 8 elements apart: the last row starts past 2**31.
    Backed by a 4 GiB virtual allocation of which only the three rows are touched."""
    step = 2 ** 30 + 8
    try:
        base = torch.empty(2 * step + n_in, dtype=dtype)
    except RuntimeError as e:  # pragma: no cover - depends on the machine's overcommit
        pytest.skip(f"cannot reserve 4 GiB of virtual memory here: {e}")
    x = base.as_strided((3, n_in), (step, 1))
    x.copy_(torch.randn(3, n_in, generator=g).to(dtype))
    return x


@pytest.mark.parametrize("variant", ["decode", "prefill"])
@pytest.mark.parametrize("op", OPS)
def test_rows_past_2_to_31_elements(op, variant):
    g = _g(7)
    from test_triton_launch import _make

    size = dict(dense_sparse_mm=dict(k=32), sparse_dense_mm=dict(k=32), lowrank_mm=dict(k=16),
                armor_mm=dict(block=32), littlebit_mm=dict(k=32),
                monarch_mm=dict(nblocks=4))[op]
    call, factors = _make(op, torch.float32, 64, 32, **size)
    x = _far_rows_x(64, torch.float32, g)
    ref = getattr(fk, op)(x.contiguous().double(), *(_f64(f) for f in factors), backend="torch")
    with force(variant, poison=True):
        y = call(x, None, "triton")
    assert rel_err(y, ref) < 1e-5


@pytest.mark.parametrize("op", OPS)
def test_supports_refuses_what_32_bit_offsets_cannot_address(op):
    """Factors (or one row of x) spanning 2**31 elements or more: refused with the reason, on
    shapes and strides alone (meta tensors, no memory)."""
    from factorkern import dispatch

    dispatch._load("triton")
    supports = dispatch._KERNELS[(op, "triton")].supports
    meta = dict(device="meta", dtype=torch.float16)
    big = 2 ** 16 + 8  # big * big > 2**31
    x = torch.empty(4, big, **meta)
    if op == "dense_sparse_mm":
        args = (torch.empty(16, big, **meta), torch.empty(big, big // 2, **meta),
                torch.empty(big, big // 16, device="meta", dtype=torch.int16))
    elif op == "sparse_dense_mm":
        args = (torch.empty(16, big // 2, **meta),
                torch.empty(16, big // 16, device="meta", dtype=torch.int16),
                torch.empty(big, big, **meta))
    elif op == "lowrank_mm":
        args = (torch.empty(big, big, **meta), torch.empty(big, 16, **meta))
    elif op == "armor_mm":
        args = (torch.empty(big // 32, 32, 32, **meta), torch.empty(big, big // 2, **meta),
                torch.empty(big, big // 16, device="meta", dtype=torch.int16),
                torch.empty(big // 32, 32, 32, **meta))
    elif op == "littlebit_mm":
        n_out, r = 2 ** 20, 2 ** 16 + 32  # U words: n_out * r / 32 > 2**31
        args = ([torch.empty(n_out, r // 32, device="meta", dtype=torch.int32)],
                [torch.empty(r, big // 32, device="meta", dtype=torch.int32)],
                [torch.empty(n_out, **meta)], [torch.empty(r, **meta)],
                [torch.empty(big, **meta)])
    else:
        args = (torch.empty(4, big, big // 4, **meta), torch.empty(4, big // 4, big, **meta),
                big)
    why = supports(x, *args)
    assert why is not None and "2**31" in why, why
    # a strided x whose row spans 2**31 elements: refused, naming x
    xt = torch.empty(2 ** 16, 2 ** 16, **meta).T[:4]
    small = _small_args(op)
    why = supports(xt, *small)
    assert why is not None and "x" in why and "2**31" in why, why


def _small_args(op):
    from test_triton_launch import _make

    size = dict(dense_sparse_mm=dict(k=16), sparse_dense_mm=dict(k=16), lowrank_mm=dict(k=16),
                armor_mm=dict(block=32), littlebit_mm=dict(k=32),
                monarch_mm=dict(nblocks=4))[op]
    _, factors = _make(op, torch.float16, 2 ** 16, 64, **size)
    out = []
    for f in factors:
        if isinstance(f, Sparse24):
            out += [f.values.to("meta"), f.meta.to("meta")]
        elif isinstance(f, fk.BlockDiag):
            out.append(f.blocks.to("meta"))
        elif isinstance(f, LittleBitFactors):
            out += [[t.to("meta") for t in lst] for lst in f.lists()]
        elif isinstance(f, MonarchFactors):
            out += [f.w1.to("meta"), f.w2.to("meta"), f.out_features]
        else:
            out.append(f.to("meta"))
    return out


# ---------------------------------------------------------------------------------------------
# Sparse24 padding nibbles
# ---------------------------------------------------------------------------------------------
def _garbage_padding(S: Sparse24, nibble: int) -> Sparse24:
    """The same matrix with ``nibble`` written into every unused nibble of the last meta word."""
    groups = S.cols // 4
    used = groups % 4
    assert used, "cols must not be a multiple of 16"
    w = S.meta[:, -1].to(torch.int32) & 0xFFFF
    for slot in range(used, 4):
        w = (w & ~(0xF << (4 * slot))) | (nibble << (4 * slot))
    meta = S.meta.clone()
    meta[:, -1] = torch.where(w >= 1 << 15, w - (1 << 16), w).to(torch.int16)
    return Sparse24(S.values, meta, S.cols, check=False)


@pytest.mark.parametrize("nibble", [0b1110, 0b0100, 0b1111])
@pytest.mark.parametrize("variant", ["decode", "prefill"])
@pytest.mark.parametrize("op", ["dense_sparse_mm", "sparse_dense_mm"])
def test_sparse24_padding_nibbles_are_ignored(op, variant, nibble):
    """S with 36 and 20 columns (9 and 5 groups): the last meta word has unused nibbles;
    whatever they hold, the Triton result is bit-identical to the clean one and matches the
    oracle. (ARMOR's S has cols = in, a multiple of its block size >= 32: no padding.) The public
    op refuses such a meta word before any kernel runs, so the kernel is called directly, with
    the arguments the custom op passes it."""
    from factorkern import dispatch

    g = _g(nibble)
    r = lambda *s: (torch.randn(*s, generator=g) / 4).half()  # noqa: E731
    x = r(3, 36)
    if op == "dense_sparse_mm":
        S, D = fk.prune_24(r(20, 36)), r(12, 20)
        args = lambda S_: (D, S_)  # noqa: E731
        raw = lambda S_: (D, S_.values, S_.meta)  # noqa: E731
    else:
        S, D = fk.prune_24(r(12, 20)), r(20, 36)
        args = lambda S_: (S_, D)  # noqa: E731
        raw = lambda S_: (S_.values, S_.meta, D)  # noqa: E731
    bad = _garbage_padding(S, nibble)
    assert not torch.equal(bad.meta, S.meta)
    kern = dispatch.kernel(op, "triton")
    with force(variant, poison=True):
        clean = kern(x, *raw(S), None, [])
        dirty = kern(x, *raw(bad), None, [])
    assert torch.equal(clean, dirty)
    fn = getattr(fk, op)
    ref = fn(x.double(), *(_f64(a) for a in args(S)), backend="torch")
    assert rel_err(clean, ref) < 1e-2
