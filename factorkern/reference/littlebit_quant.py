"""LittleBit with quantized activations: the reference of the popcount kernel (opt-in path).

Per term t, with x: (N, in), SignBits V.T (r, in) and U (out, r), scales h (out,), l (r,), g (in,):

0. Non-finite input: if any element of token row n of ``xg`` (step 1) is NaN, +Inf or -Inf, the
   term's contribution to ``y[n, :]`` is NaN (the whole output row: an int8 scale of an infinite
   row would otherwise turn the row into large finite numbers). The row is quantized as zeros
   (its result is discarded) so no NaN reaches the integer steps; every other row is unaffected.
1. ``xg = x * g`` in float32 (x and g upcast first).
2. Per token (row) n: ``s[n] = max_c |xg[n, c]| / 127`` (float32; ``s = 1`` for an all-zero row),
   ``q[n, c] = clamp(round(xg[n, c] / s[n]), -127, 127)`` where the division is float32 and
   ``round`` is round-half-to-even (``torch.round``, CUDA ``__float2int_rn``). q is int8-valued;
   -128 is never produced, so the quantizer is symmetric.
3. ``z = q @ sign(V)`` exactly, in integers: the kernel splits q into the 8 bit planes P_k of its
   two's complement byte and computes
   ``z = 2 * sum_k c_k popcount(P_k & Vbits) - sum_c q``, c_k = 2^k for k < 7, c_7 = -128
   (``bitplane_dot`` below is that identity in torch; ``|z| <= 127 * in`` fits int32).
4. ``a = s[n] * (l * z)`` and ``y = sum_t h_t * (a_t @ sign(U_t).T) + bias``. Here in float64; the
   kernel does steps 4 in float32, so kernel and reference agree to fp32 rounding before the
   output cast, and bit for bit in q and z.

Only the layer input is quantized; the rank-r intermediate a stays in floating point. The error
against the exact path (``factorkern.reference.littlebit_mm``) is that of int8 per-token
activation quantization: measured 1.2e-2 to 1.4e-2 relative Frobenius with Gaussian x and g (see
tests/test_cuda_littlebit_quant.py).
"""

from __future__ import annotations

import torch

from ..formats.signbits import unpack_signs
from ._common import finish

QMAX = 127


def quantize_per_token(xg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """xg: (N, in) float32 -> (q int32 (N, in) in [-127, 127], s float32 (N,)). xg must be
    finite (step 0 of the module docstring handles rows that are not)."""
    xg = xg.to(torch.float32)
    amax = xg.abs().amax(dim=1)
    s = torch.where(amax > 0, amax / QMAX, torch.ones_like(amax))
    q = torch.round(xg / s[:, None]).clamp_(-QMAX, QMAX).to(torch.int32)
    return q, s


def bit_planes(q: torch.Tensor) -> torch.Tensor:
    """q int (N, in) in [-128, 127] -> planes bool (8, N, in): bit k of the two's complement byte."""
    byte = q.to(torch.int64) & 0xFF
    return torch.stack([((byte >> k) & 1).bool() for k in range(8)])


def bitplane_dot(q: torch.Tensor, v_words: torch.Tensor, n_in: int) -> torch.Tensor:
    """z = q @ sign(V) for SignBits words of V.T (r, ceil(in/32)), exactly as the kernel forms it:
    from bit planes and AND-popcounts (here: counts of bits set in both). int64 (N, r)."""
    vb = unpack_signs(v_words, n_in, torch.float32) > 0        # (r, in) bit = 1 iff +1
    planes = bit_planes(q)                                       # (8, N, in)
    coef = [1, 2, 4, 8, 16, 32, 64, -128]
    acc = torch.zeros(q.shape[0], vb.shape[0], dtype=torch.int64, device=q.device)
    for k in range(8):
        # popcount(P_k & V) for every (token, row): an integer matrix product of 0/1 matrices.
        both = planes[k].to(torch.float64) @ vb.to(torch.float64).T
        acc += coef[k] * both.round().to(torch.int64)
    return 2 * acc - q.to(torch.int64).sum(dim=1, keepdim=True)


def littlebit_mm_popcount(x, u_words, v_words, h, l, g, bias=None):
    """Reference of the quantized-activation LittleBit product (module docstring).
    x: (N, in); lists of per-term tensors as in ``factorkern.reference.littlebit_mm``.
    Returns (N, out) in x's dtype."""
    n_in = x.shape[1]
    y = None
    for uw, vw, ht, lt, gt in zip(u_words, v_words, h, l, g):
        xg = x.to(torch.float32) * gt.to(torch.float32)
        bad = ~torch.isfinite(xg).all(dim=1, keepdim=True)      # (N, 1): step 0
        q, s = quantize_per_token(torch.where(bad, 0.0, xg))
        sVt = unpack_signs(vw, n_in, torch.float64)             # (r, in)
        z = q.to(torch.float64) @ sVt.T                          # exact: integers < 2^53
        sU = unpack_signs(uw, lt.shape[0], torch.float64)        # (out, r)
        a = s.to(torch.float64)[:, None] * (lt.to(torch.float64) * z)
        yt = torch.where(bad, float("nan"), (a @ sU.T) * ht.to(torch.float64))
        y = yt if y is None else y + yt
    return finish(y, bias, x.dtype)
