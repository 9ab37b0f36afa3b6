"""Plain 2:4: W = S, a Sparse24 (out, in) with the 2:4 groups along in.

y = x @ S.T, x: (N, in) -> y: (N, out). The baseline every 2:4 user compares against.
FLOPs (useful, 2:4 counted at half): 2N * out * in / 2. Bytes (fp16 values, int16 meta):
out * in (values) + out * in / 8 (meta) + 2N (in + out).
"""

from __future__ import annotations

from ._common import bias_grad, compute_dtype, decode24, finish, gather24


def sparse_mm(x, s_values, s_meta, bias=None):
    """x (N, in), s_values (out, in/2), s_meta int16 (out, ceil(in/16)) -> (N, out)."""
    ct = compute_dtype(x.dtype)
    S = decode24(s_values, s_meta, x.shape[1], ct)
    return finish(x.to(ct) @ S.T, bias, x.dtype)


def sparse_mm_backward(gy, x, s_values, s_meta, bias):
    """Returns (dx, d_values, dbias): dx = gy @ S; the kept values' gradient is (gy.T @ x) read
    at the kept positions (the pattern stays fixed)."""
    ct = compute_dtype(x.dtype)
    S = decode24(s_values, s_meta, x.shape[1], ct)
    gy, xc = gy.to(ct), x.to(ct)
    dx = gy @ S
    dvals = gather24(gy.T @ xc, s_meta)
    return dx.to(x.dtype), dvals.to(s_values.dtype), bias_grad(gy, bias)
