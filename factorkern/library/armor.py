"""Library path of ARMOR, W = A @ S @ B: y = blockdiag(F.linear(blockdiag(x, B), S), A) + bias,
the block-diagonal products as one batched GEMM each (bmm; the bias fused into the last one
with baddbmm) and the 2:4 product as in ``_sparse24``. The backward runs the oracle's formulas
(``factorkern.reference.armor``) in the compute dtype with the cached S."""

from __future__ import annotations

import torch

from .. import reference as ref
from ..formats.blockdiag import blockdiag_apply
from . import _sparse24 as s24
from ._common import cast, ct_of


def _blockdiag_bias(v, blocks, bias):
    """blockdiag_apply(v, blocks) + bias in one batched GEMM."""
    nb, ob, ib = blocks.shape
    n = v.shape[0]
    y = torch.baddbmm(bias.view(nb, 1, ob), v.reshape(n, nb, ib).transpose(0, 1),
                      blocks.transpose(1, 2))
    return y.transpose(0, 1).reshape(n, nb * ob)


def armor_mm(x, a_blocks, s_values, s_meta, b_blocks, bias, extra, *, layout=s24.DENSE):
    ct = ct_of(x)
    S = s24.operand(layout, s_values, s_meta, x.shape[1], extra, ct)
    v = s24.linear(blockdiag_apply(cast(x, ct), cast(b_blocks, ct)), S)
    A = cast(a_blocks, ct)
    y = blockdiag_apply(v, A) if bias is None else _blockdiag_bias(v, A, cast(bias, ct))
    return y.to(x.dtype)


def armor_mm_backward(gy, x, a_blocks, s_values, s_meta, b_blocks, bias, extra, needs,
                      layout=s24.DENSE):
    ct = ct_of(x)
    S = s24.dense_operand(layout, s_values, s_meta, x.shape[1], extra, ct)
    dx, dA, dv, dB, db = ref.armor_mm_backward(
        gy, x, a_blocks, s_values, s_meta, b_blocks, bias, ct=ct, S=S,
        needs=(needs[0], needs[1], needs[2], needs[4], needs[5]))
    return dx, dA, dv, None, dB, db
