"""Bad input gets a ValueError or TypeError naming the argument and what was expected."""

import pytest
import torch

import factorkern as fk
from factorkern.formats import BlockDiag, LittleBitFactors, MonarchFactors, SignBits

from families import make_case


def _x(n_in, dtype=torch.float32):
    return torch.randn(3, n_in, dtype=dtype)


def test_dense_sparse_bad_inputs():
    D, S = make_case("dense_sparse_mm", 8, 16, torch.float32).factors
    with pytest.raises(ValueError, match=r"x has 12 features.*expects in = 16"):
        fk.dense_sparse_mm(_x(12), D, S)
    with pytest.raises(ValueError, match=r"D must be \(out, k\) with k = S.shape\[0\] = 8"):
        fk.dense_sparse_mm(_x(16), D[:, :5], S)
    with pytest.raises(TypeError, match="S must be a Sparse24, got Tensor"):
        fk.dense_sparse_mm(_x(16), D, S.to_dense())
    with pytest.raises(TypeError, match="D is torch.float64 but x is torch.float32"):
        fk.dense_sparse_mm(_x(16), D.double(), S)
    with pytest.raises(TypeError, match="S.values is torch.float64"):
        fk.dense_sparse_mm(_x(16), D, S.to(torch.float64))
    with pytest.raises(ValueError, match=r"bias must have shape \(8,\)"):
        fk.dense_sparse_mm(_x(16), D, S, bias=torch.zeros(9))
    with pytest.raises(TypeError, match="x must be float16, bfloat16, float32 or float64"):
        fk.dense_sparse_mm(torch.ones(3, 16, dtype=torch.int32), D, S)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        fk.dense_sparse_mm([[1.0] * 16], D, S)
    with pytest.raises(ValueError, match="0-d"):
        fk.dense_sparse_mm(torch.tensor(1.0), D, S)


def test_sparse_dense_bad_inputs():
    S, D = make_case("sparse_dense_mm", 8, 16, torch.float32).factors
    with pytest.raises(ValueError, match=r"D must be \(k, in\) with k = S.shape\[1\]"):
        fk.sparse_dense_mm(_x(16), S, D[:4])
    with pytest.raises(ValueError, match="expects in = 16"):
        fk.sparse_dense_mm(_x(15), S, D)


def test_sparse_mm_bad_inputs():
    (S,) = make_case("sparse_mm", 8, 16, torch.float32).factors
    with pytest.raises(ValueError, match=r"x has 12 features.*S of shape \(8, 16\).*in = 16"):
        fk.sparse_mm(_x(12), S)
    with pytest.raises(TypeError, match="S must be a Sparse24, got Tensor"):
        fk.sparse_mm(_x(16), S.to_dense())
    with pytest.raises(TypeError, match="S.values is torch.float64 but x is torch.float32"):
        fk.sparse_mm(_x(16), S.to(torch.float64))
    with pytest.raises(ValueError, match=r"bias must have shape \(8,\)"):
        fk.sparse_mm(_x(16), S, bias=torch.zeros(9))
    with pytest.raises(ValueError, match="in_features=30 must be a multiple of 4"):
        fk.nn.Sparse24Linear(30, 8)


def test_armor_bad_inputs():
    A, S, B = make_case("armor_mm", 16, 32, torch.float32, block=8).factors
    fk.armor_mm(_x(32), A, S, B)
    with pytest.raises(ValueError, match="A must be square blocks tiling 16"):
        fk.armor_mm(_x(32), BlockDiag(torch.randn(3, 4, 4)), S, B)
    with pytest.raises(ValueError, match="B must be square blocks tiling 32"):
        fk.armor_mm(_x(32), A, S, BlockDiag(torch.randn(4, 8, 4)))
    with pytest.raises(TypeError, match="B must be a BlockDiag"):
        fk.armor_mm(_x(32), A, S, B.blocks)


def test_littlebit_bad_inputs():
    (F,) = make_case("littlebit_mm", 8, 40, torch.float32).factors
    with pytest.raises(ValueError, match="expects in = 40"):
        fk.littlebit_mm(_x(32), F)
    with pytest.raises(TypeError, match=r"F.terms\[0\].h is torch.float32 but x is "
                                        r"torch.float16"):
        fk.littlebit_mm(_x(40, torch.float16), F)
    with pytest.raises(TypeError, match="F must be a LittleBitFactors"):
        fk.littlebit_mm(_x(40), F.to_dense())


def test_monarch_and_lowrank_bad_inputs():
    (M,) = make_case("monarch_mm", 10, 14, torch.float32).factors
    with pytest.raises(ValueError, match="expects in = 14"):
        fk.monarch_mm(_x(16), M)
    U, V = make_case("lowrank_mm", 8, 12, torch.float32).factors
    with pytest.raises(ValueError, match="U \\(out, r\\) and V \\(in, r\\) must share r"):
        fk.lowrank_mm(_x(12), U, V[:, :1])
    with pytest.raises(ValueError, match="V must be a 2-D tensor"):
        fk.lowrank_mm(_x(12), U, V[0])


def test_device_mismatch_is_reported():
    # The meta device is checked against x even without a GPU: use the meta device.
    D, S = make_case("dense_sparse_mm", 8, 16, torch.float32).factors
    with pytest.raises(ValueError, match="D is on meta but x is on cpu"):
        fk.dense_sparse_mm(_x(16), D.to("meta"), S)


def test_empty_factors_rejected():
    with pytest.raises(ValueError, match="non-empty"):
        BlockDiag(torch.randn(0, 4, 4))
    with pytest.raises(ValueError, match="non-empty"):
        MonarchFactors(torch.randn(0, 2, 2), torch.randn(2, 2, 0))
    with pytest.raises(ValueError, match="non-empty 2-D"):
        SignBits.pack(torch.randn(0, 5))
    with pytest.raises(ValueError, match="at least one term"):
        LittleBitFactors([])
    with pytest.raises(ValueError, match="positive multiple of 4"):
        fk.prune_24(torch.randn(0, 8))
    U = torch.randn(8, 0)
    with pytest.raises(ValueError, match="U is empty"):
        fk.lowrank_mm(_x(12), U, torch.randn(12, 0))


def test_not_24_matrix_rejected_with_group():
    S = torch.randn(4, 16)
    with pytest.raises(ValueError, match=r"S is not 2:4 sparse: row 0, columns 0\.\.3"):
        fk.Sparse24.from_dense(S)
