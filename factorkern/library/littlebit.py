"""Library path of LittleBit, W = sum_t diag(h_t) sign(U_t) diag(l_t) sign(V_t).T diag(g_t).

prepare("torch") unpacks every term's signs once into the compute dtype with the scales folded
in, and stacks the terms along the rank:

    Vf = [sign(V_t).T * g_t  for every t]   (R, in),  R = sum of the ranks: sign * g is exact
    Uf = [h_t * sign(U_t) * l_t for every t] (out, R): h * l rounded once to the compute dtype

so the forward is two GEMMs for all terms together, ``y = F.linear(F.linear(x, Vf), Uf, bias)``.
Cached memory: R * (in + out) elements (2 bytes each in fp16/bf16: 16 times the packed signs,
e.g. 8 MiB for two rank-256 terms of a 4096 x 4096 layer, against 32 MiB for its dense weight).

The backward needs the unscaled signs per term (the gradients of h, l and g): it unpacks them
from the words in the compute dtype at each call and runs the oracle's formulas
(``factorkern.reference.littlebit``); when no scale needs a gradient, dx is two GEMMs with the
folded factors. The quantized-activation op (``littlebit_mm_popcount``) is inference-only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import reference as ref
from ..formats.signbits import unpack_signs
from ..reference._common import bias_grad
from ..reference import littlebit_quant as quant
from ._common import cast, compute_dtype, ct_of


def fold(u_words, v_words, h, l, g, n_in: int, ct) -> tuple[torch.Tensor, torch.Tensor]:
    """(Vf (R, in), Uf (out, R)) in ``ct`` from the per-term lists (module docstring)."""
    acc = torch.float64 if ct == torch.float64 else torch.float32
    with torch.no_grad():
        Vf = torch.cat([unpack_signs(vw, n_in, ct) * gt.to(ct)[None, :]
                        for vw, gt in zip(v_words, g)])
        Uf = torch.cat([(ht.to(acc)[:, None] * unpack_signs(uw, lt.shape[0], acc)
                         * lt.to(acc)[None, :]).to(ct)
                        for uw, ht, lt in zip(u_words, h, l)], dim=1)
    return Vf, Uf


def layout(Fac) -> tuple:
    """prepare("torch") of LittleBitFactors: (Vf, Uf)."""
    return fold(*Fac.lists(), Fac.in_features, compute_dtype(Fac.dtype, Fac.device))


def _folded(x, u_words, v_words, h, l, g, extra, ct):
    if len(extra) == 2:
        return extra
    return fold(u_words, v_words, h, l, g, x.shape[1], ct)


def littlebit_mm(x, u_words, v_words, h, l, g, bias, extra):
    ct = ct_of(x)
    Vf, Uf = _folded(x, u_words, v_words, h, l, g, extra, ct)
    return F.linear(F.linear(cast(x, ct), Vf), Uf, cast(bias, ct)).to(x.dtype)


def littlebit_mm_backward(gy, x, u_words, v_words, h, l, g, bias, extra, needs):
    ct = ct_of(x)
    n = len(u_words)
    nx, nh, nl, ng, nb = (any(f) if isinstance(f, (list, tuple)) else f
                          for f in (needs[0], needs[3], needs[4], needs[5], needs[6]))
    none = [None] * n
    if not (nh or nl or ng):
        dx = db = None
        if nx:
            Vf, Uf = _folded(x, u_words, v_words, h, l, g, extra, ct)
            dx = ((cast(gy, ct) @ Uf) @ Vf).to(x.dtype)
        if nb:
            db = bias_grad(cast(gy, ct), bias)
        return dx, none, none, none, none, none, db
    dx, dh, dl, dg, db = ref.littlebit_mm_backward(gy, x, u_words, v_words, h, l, g, bias, ct=ct,
                                                   needs=(nx, nh, nl, ng, nb))
    return dx, none, none, dh, dl, dg, db


def littlebit_mm_popcount(x, u_words, v_words, h, l, g, bias, extra):
    """The quantized-activation product (``factorkern.reference.littlebit_quant``). On a GPU in
    fp32: q @ sign(V) is exact there (integers below 2^24 for in < 132 000) and the rest is
    rounded in fp32 where the reference uses float64. On the CPU it is the reference itself
    (same numbers, bit for bit, as the CUDA popcount kernel's tests expect)."""
    if x.device.type == "cpu" or x.dtype == torch.float64:
        return quant.littlebit_mm_popcount(x, u_words, v_words, h, l, g, bias)
    n_in = x.shape[1]
    y = None
    for uw, vw, ht, lt, gt in zip(u_words, v_words, h, l, g):
        q, s = quant.quantize_per_token(x.to(torch.float32) * gt.to(torch.float32))
        z = F.linear(q.to(torch.float32), unpack_signs(vw, n_in, torch.float32))     # (N, r)
        a = s[:, None] * (lt.to(torch.float32) * z)
        yt = F.linear(a, unpack_signs(uw, lt.shape[0], torch.float32)) * ht.to(torch.float32)
        y = yt if y is None else y + yt
    if bias is not None:
        y = y + bias.to(torch.float32)
    return y.to(x.dtype)


def littlebit_mm_popcount_backward(*args):
    raise RuntimeError(
        "littlebit_mm(..., quantize_activations=True) is inference-only: it rounds the "
        "activations to int8, which has no gradient. Train with quantize_activations=False "
        "(the exact path) and quantize for inference, or run the forward under torch.no_grad().")
