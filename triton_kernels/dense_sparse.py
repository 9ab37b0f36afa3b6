"""Triton kernels for DSFormer's dense x 2:4-sparse products.

dense_sparse_mm: D (out, k) dense, S (k, in) 2:4 along in:  y = (x @ S.T) @ D.T + bias
sparse_dense_mm: S (out, k) 2:4 along k, D (k, in) dense:  y = (x @ D.T) @ S.T + bias

Both are the chained product of ``_chain`` (P = S, Q = D, or P = D, Q = S): the 2:4 factor is read
in its canonical Sparse24 layout (values + int16 meta; no derived layout: the meta nibbles are the
fewest bytes and decode with two shifts and a mask) and decompressed in registers into a dense tile
for ``tl.dot``. Upstream Triton has no sparse dot, so the tensor cores run the dense-equivalent
FLOPs: the kernels win only by reading fewer bytes, i.e. at decode.

Counts for x (M, in), element size e bytes (2 for fp16/bf16):
  dense_sparse_mm  useful FLOPs 2M(k*in/2 + out*k); tensor-core FLOPs 2M(k*in + out*k), plus
                   2M*k*in*(ceil(out/BN) - 1) of recompute in the prefill kernel when k > 256.
                   Bytes (minimum): e*(M*in + k*in/2 + out*k + M*out) + k*in/8 (meta).
  sparse_dense_mm  useful FLOPs 2M(k*in + out*k/2); tensor-core FLOPs 2M(k*in + out*k), plus
                   2M*k*in*(ceil(out/BN) - 1) of recompute in the prefill kernel when k > 256.
                   Bytes (minimum): e*(M*in + k*in + out*k/2 + M*out) + out*k/8 (meta).
The decode kernel (M <= 16) reads every factor byte once plus a workspace of M*k elements written
and read once (L2-resident); the bytes-ratio bound against F.linear is
e*out*in / (factor bytes above).
"""

from __future__ import annotations

from factorkern.dispatch import register_kernel

from ._chain import chain_mm
from ._common import dtype_reason, span_reason


def dense_sparse_mm(x, D, s_values, s_meta, bias, extra):
    """x (N, in) -> (N, out); P = S (k, in) sparse, Q = D (out, k) dense."""
    return chain_mm(x, s_values, s_meta, D, None, bias, D.shape[0], p_sparse=True,
                    q_sparse=False, name="dense_sparse_mm")


def sparse_dense_mm(x, s_values, s_meta, D, bias, extra):
    """x (N, in) -> (N, out); P = D (k, in) dense, Q = S (out, k) sparse."""
    return chain_mm(x, D, None, s_values, s_meta, bias, s_values.shape[0], p_sparse=False,
                    q_sparse=True, name="sparse_dense_mm")


def _supports_ds(x, D, s_values, s_meta, *_):
    return dtype_reason(x) or span_reason(x, D=D, S_values=s_values, S_meta=s_meta)


def _supports_sd(x, s_values, s_meta, D, *_):
    return dtype_reason(x) or span_reason(x, D=D, S_values=s_values, S_meta=s_meta)


register_kernel("dense_sparse_mm", "triton", dense_sparse_mm, proven=False,
                supports=_supports_ds,
                note="2:4 decompressed in registers; decode: phased single launch")
register_kernel("sparse_dense_mm", "triton", sparse_dense_mm, proven=False,
                supports=_supports_sd,
                note="2:4 decompressed in registers; decode: phased single launch")
