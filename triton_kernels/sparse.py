"""Triton kernel for the plain 2:4 product: S (out, in) a Sparse24 matrix, 2:4 along in,
y = x @ S.T + bias.

One GEMM kernel, ``_sparse_kernel``: a program owns a BM-row tile of x and a BN-row tile of S
(BN outputs) and loops over in in BK chunks; each chunk of S is read in its canonical layout
(values (out, in/2) and int16 meta words, one nibble per group of 4 columns), decompressed in
registers (``_common.load_s24_tile``) and fed to ``tl.dot``. Triton has no sparse dot, so the
tensor cores run the dense-equivalent FLOPs; the kernel wins only by reading fewer bytes: at
decode (M <= 16) it reads the values and meta once, 9/16 of a dense fp16/bf16 weight's bytes.

Two autotune spaces, picked by the M bucket (``_common.variant_for``): decode (BM = 16 rows,
the tensor-core minimum, covering every decode M; small BN so that out / BN programs fill the
GPU; one warp, wide BK for 128-bit loads of values and meta) and prefill (square tiles).

Counts for x (M, in), element size e bytes: useful FLOPs 2M out in / 2 (tensor-core FLOPs
2M out in); bytes (minimum) e (M in + out in / 2 + M out) + out in / 8 (meta).
Per-config shared memory, registers and spills: docs/triton_configs.md.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from factorkern.dispatch import register_kernel

from ._common import (dot_acc, dtype_reason, launch_kernel, launch_options, load_rows,
                      load_s24_tile, m_key, new_buffer, product_configs, row_ptrs, span_reason,
                      store_output, tuned, variant_for)


@triton.jit
def _sparse_kernel(x_ptr, v_ptr, m_ptr, b_ptr, y_ptr, M, K, N, W,
                   s_xm, s_xk, s_vr, s_vc, s_mr, s_mc, s_b, s_ym, s_yn,
                   HAS_BIAS: tl.constexpr, IEEE: tl.constexpr, BM: tl.constexpr,
                   BN: tl.constexpr, BK: tl.constexpr):
    rm = tl.program_id(0) * BM + tl.arange(0, BM)
    rn = tl.program_id(1) * BN + tl.arange(0, BN)
    x_rows = row_ptrs(x_ptr, rm, s_xm)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k in range(0, K, BK):
        xt = load_rows(x_rows, rm, k + tl.arange(0, BK), s_xk, M, K)
        st = load_s24_tile(v_ptr, m_ptr, rn, k, s_vr, s_vc, s_mr, s_mc, N, K, W, BK)
        acc = dot_acc(xt, tl.trans(st), acc, IEEE)
    store_output(acc, y_ptr, b_ptr, rm, rn, M, N, s_ym, s_yn, s_b, HAS_BIAS)


# The first config of each space is its default (``_common.tuned``).
_DECODE_CONFIGS = [dict(BM=16, BN=bn, BK=bk, num_warps=w, num_stages=3)
                   for bn, bk, w in ((16, 256, 1), (32, 128, 1))]
# (BN 32 and 64 at BK 256 spilled about 620 B at 255 registers in fp16/bf16: audit table.)
_PREFILL_CONFIGS = product_configs({"BM": [64, 128], "BN": [64, 128], "BK": [64]},
                                   warps=(4, 8), stages=(3,),
                                   keep=lambda c: c["BM"] * c["BN"] <= 128 * 64)


def sparse_mm(x, s_values, s_meta, bias, extra):
    """x (N, in) -> (N, out), S = (s_values (out, in/2), s_meta int16 (out, ceil(in/16)))."""
    M, K = x.shape
    N = s_values.shape[0]
    if M == 0:
        return new_buffer(M, N, dtype=x.dtype, device=x.device)
    b = bias if bias is not None else s_values  # never read without HAS_BIAS
    args = dict(x_ptr=x, v_ptr=s_values, m_ptr=s_meta, b_ptr=b, M=M, K=K, N=N,
                W=s_meta.shape[1], s_xm=x.stride(0), s_xk=x.stride(1),
                s_vr=s_values.stride(0), s_vc=s_values.stride(1),
                s_mr=s_meta.stride(0), s_mc=s_meta.stride(1),
                s_b=bias.stride(0) if bias is not None else 0,
                HAS_BIAS=bias is not None, IEEE=x.dtype == torch.float32)
    variant = variant_for(M)

    def run(cfg):
        y = new_buffer(M, N, dtype=x.dtype, device=x.device)
        kw = dict(args, y_ptr=y, s_ym=y.stride(0), s_yn=y.stride(1), BM=cfg["BM"],
                  BN=cfg["BN"], BK=cfg["BK"], **launch_options(cfg))
        grid = (triton.cdiv(M, cfg["BM"]), triton.cdiv(N, cfg["BN"]))
        launch_kernel(_sparse_kernel, grid, kw, x.device)
        return y

    configs = _DECODE_CONFIGS if variant == "decode" else _PREFILL_CONFIGS
    key = (variant, m_key(M), K, N, x.dtype, str(x.device))
    return tuned("sparse_mm", key, configs, run, x.device)


def _supports(x, s_values, s_meta, *_):
    return dtype_reason(x) or span_reason(x, S_values=s_values, S_meta=s_meta)


register_kernel("sparse_mm", "triton", sparse_mm, supports=_supports,
                note="2:4 decompressed in registers (dense-equivalent tensor-core FLOPs)")
