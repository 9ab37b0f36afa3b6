"""Python side of the "cuda" backend, on the CPU: registration (never proven, so never under
auto), the reasons ``supports`` gives for calls the kernels do not take, RuntimeError for CPU
tensors, and the prepared LittleBit layout. Skips when the extension was not built."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("factorkern._C", reason="CUDA extension not built (pure-Python install)")

import factorkern as fk  # noqa: E402
from factorkern import cuda as fkc  # noqa: E402
from factorkern import dispatch  # noqa: E402
from families import make_case  # noqa: E402

OPS = ("dense_sparse_mm", "sparse_dense_mm", "armor_mm", "littlebit_mm", "littlebit_mm_popcount",
       "sparse_mm")


def _x(n=4, n_in=4096, dtype=torch.float16):
    """Stand-in for a CUDA tensor: supports() reads only is_cuda, dtype and shape."""
    return SimpleNamespace(is_cuda=True, dtype=dtype, shape=(n, n_in))


def _t(*shape):
    return SimpleNamespace(shape=shape)


@pytest.mark.parametrize("op", OPS)
def test_registered_unproven(op):
    k = dispatch._KERNELS[(op, "cuda")]
    assert k.proven is False and k.supports is not None
    assert fk.backends()["cuda"]["ops"][op] == "unproven"


def test_supports_reasons():
    D = _t(4096, 2048)
    assert fkc.dense_sparse_supports(_x(), D, None, None) is None
    assert "CUDA tensors" in fkc.dense_sparse_supports(torch.zeros(2, 4096), D, None, None)
    assert "float16 and bfloat16" in fkc.dense_sparse_supports(_x(dtype=torch.float32), D, None,
                                                               None)
    assert "N <= 16" in fkc.dense_sparse_supports(_x(n=17), D, None, None)
    assert "in = 4000" in fkc.dense_sparse_supports(_x(n_in=4000), _t(64, 4000), None, None)
    assert "k = 60" in fkc.dense_sparse_supports(_x(), _t(4096, 60), None, None)
    assert fkc.sparse_dense_supports(_x(), None, None, _t(2048, 4096)) is None
    assert "k = 100" in fkc.sparse_dense_supports(_x(), None, None, _t(100, 4096))
    assert "in = 4092" in fkc.sparse_dense_supports(_x(n_in=4092), None, None, _t(128, 4092))
    V, M = _t(4096, 2048), _t(4096, 256)
    assert fkc.sparse_supports(_x(n=16), V, M) is None
    assert "CUDA tensors" in fkc.sparse_supports(torch.zeros(2, 4096), V, M)
    assert "float16 and bfloat16" in fkc.sparse_supports(_x(dtype=torch.float32), V, M)
    assert "N <= 16" in fkc.sparse_supports(_x(n=17), V, M)
    assert "in = 4000 is not a multiple of 128" in fkc.sparse_supports(_x(n_in=4000), None, None)
    A, B = _t(32, 128, 128), _t(32, 128, 128)
    assert fkc.armor_supports(_x(), A, None, None, B) is None
    assert "A block size = 12" in fkc.armor_supports(_x(), _t(4, 12, 12), None, None, B)
    assert fkc.littlebit_supports(_x(), [0, 0], None, None, None, None) is None
    assert "at most 4" in fkc.littlebit_supports(_x(), [0] * 5, None, None, None, None)
    assert "in = 4100" in fkc.littlebit_supports(_x(n_in=4100), [0], None, None, None, None)


def test_kernel_fns_raise_on_cpu_tensors():
    case = make_case("dense_sparse_mm", 16, 128, dtype=torch.float16)
    D, S = case.factors
    with pytest.raises(RuntimeError, match="CUDA tensors"):
        fkc.dense_sparse_mm(torch.randn(2, 128).half(), D, S.values, S.meta, None, [])
    S = make_case("sparse_mm", 16, 128, dtype=torch.float16).factors[0]
    with pytest.raises(RuntimeError, match="sparse_mm: .*CUDA tensors"):
        fkc.sparse_mm(torch.randn(2, 128).half(), S.values, S.meta, None, [])
    F = make_case("littlebit_mm", 16, 128, dtype=torch.float16).factors[0]
    with pytest.raises(RuntimeError, match="CUDA tensors"):
        fkc.littlebit_mm_popcount(torch.randn(2, 128).half(), *F.lists(), None, [])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
def test_public_op_with_backend_cuda_says_why():
    case = make_case("armor_mm", 16, 128, dtype=torch.float16, block=8)
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        case.call(torch.randn(2, 128).half(), backend="cuda")
    F = make_case("littlebit_mm", 16, 128, dtype=torch.float32).factors[0]
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        fk.littlebit_mm(torch.randn(2, 128), F, backend="cuda", quantize_activations=True)


@pytest.mark.parametrize("rank, ldu", [(8, 4), (128, 4), (129, 8), (300, 12)])
def test_littlebit_prepared_layout_pads_u_with_zero_words(rank, ldu):
    F = make_case("littlebit_mm", 24, 128, r=rank, nterms=2).factors[0]
    layout = F.prepare("cuda")
    assert len(layout) == 2
    for (U, *_), up in zip(F.terms, layout):
        nw = U.words.shape[1]
        assert up.shape == (24, ldu) and up.dtype == torch.int32 and up.is_contiguous()
        assert torch.equal(up[:, :nw], U.words) and not up[:, nw:].any()
    assert F.prepare("cuda") is layout  # cached
