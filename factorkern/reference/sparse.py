"""Plain 2:4: W = S, a Sparse24 (out, in) with the 2:4 groups along in.

y = x @ S.T, x: (N, in) -> y: (N, out). The baseline every 2:4 user compares against.
FLOPs (useful, 2:4 counted at half): 2N * out * in / 2. Bytes (fp16 values, int16 meta):
out * in (values) + out * in / 8 (meta) + 2N (in + out).
"""

from __future__ import annotations

from ._common import bias_grad, compute_dtype, decode24, finish, gather24, wanted


def sparse_mm(x, s_values, s_meta, bias=None):
    """x (N, in), s_values (out, in/2), s_meta int16 (out, ceil(in/16)) -> (N, out)."""
    ct = compute_dtype(x.dtype)
    S = decode24(s_values, s_meta, x.shape[1], ct)
    return finish(x.to(ct) @ S.T, bias, x.dtype)


def sparse_mm_backward(gy, x, s_values, s_meta, bias, *, ct=None, S=None, needs=None):
    """Returns (dx, d_values, dbias): dx = gy @ S; the kept values' gradient is (gy.T @ x) read
    at the kept positions (the pattern stays fixed). Keyword-only options (``ct``, ``S``,
    ``needs`` = (x, values, bias)) as in ``factorkern.reference.dense_sparse``."""
    ct = ct or compute_dtype(x.dtype)
    nx, nv, nb = wanted(needs, 3)
    gy = gy.to(ct)
    dx = dvals = None
    if nx:
        S = decode24(s_values, s_meta, x.shape[1], ct) if S is None else S
        dx = (gy @ S).to(x.dtype)
    if nv:
        dvals = gather24(gy.T @ x.to(ct), s_meta).to(s_values.dtype)
    return dx, dvals, bias_grad(gy, bias) if nb else None
