"""Triton kernels for ARMOR: W = A @ S @ B, y = ((x @ B.T) @ S.T) @ A.T + bias.

A: BlockDiag (out, out), blocks (nA, bA, bA); S: Sparse24 (out, in), 2:4 along in; B: BlockDiag
(in, in), blocks (nB, bB, bB). Block sizes bA, bB in {32, 64, 128} (ARMOR's published setting is
128); other sizes are refused by ``supports`` with the reason.

Counts for x (M, in), element size e bytes:
  useful FLOPs 2M(in*bB + out*in/2 + out*bA); tensor-core FLOPs 2M(in*bB + out*in + out*bA),
  plus 2M*in*bB*(out/bA - 1) of B recompute in the prefill kernel.
  Bytes (minimum) e*(M*in + in*bB + out*in/2 + out*bA + M*out) + out*in/8 (meta).
  Against F.linear (e*out*in bytes) the decode bound is about 1.8x at 4096x4096, bA = bB = 128.

``_armor_fused_kernel`` (prefill). A program owns a BM-row tile and one A block (an output tile
= bA columns). Stages:
  prologue   per B block i: u = x[:, block i] @ B[i].T (BM, bB), on chip;
  mainloop   v += u @ S[A block rows, block i].T, the 2:4 tile decompressed in registers;
  epilogue   y tile = v @ A[j].T + bias (the A block needs only this tile's v), cast, store.
  The B prologue is recomputed by each of the out/bA output tiles of a row tile: with bA = bB this
  doubles the tensor-core FLOPs of the core. Keeping u through HBM instead would cost M*in
  elements written and read; the trade-off is among the GPU checks owed (README.md).

``_armor_phased_kernel`` (decode, M <= 16). Bytes bound, so each factor byte is read once by
enough programs to fill the GPU. One launch, three phases handed out by a ticket counter (a
program waits only for tickets handed out before its own, so it cannot deadlock):
  phase 0   u[:, block i] = x[:, block i] @ B[i].T, one program per B block -> workspace u;
  phase 1   v[:, rows] = u @ S[rows].T for BO rows of S per program (S read once) -> workspace v;
  phase 2   y[:, block j] = v[:, block j] @ A[j].T + bias, one program per A block.
  The workspaces hold M*(in + out) elements (L2-resident), negligible next to S.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from factorkern.dispatch import register_kernel

from ._common import (dot_acc, dtype_reason, launch, load_s24_tile, load_tile, m_key, new_buffer,
                      product_configs, size_reason, store_output, variant_for)

BLOCK_SIZES = (32, 64, 128)


@triton.jit
def _block_product(x_ptr, blk_ptr, rm, i, M, n_cols, s_xm, s_xk, s_b0, s_b1, s_b2,
                   IEEE: tl.constexpr, BM: tl.constexpr, BS: tl.constexpr):
    """x[rm, block i] @ blocks[i].T (BM, BS) fp32, for square blocks of size BS."""
    rs = tl.arange(0, BS)
    xt = load_tile(x_ptr, rm, i * BS + rs, s_xm, s_xk, M, n_cols)
    bt = load_tile(blk_ptr + i * s_b0, rs, rs, s_b1, s_b2, BS, BS)
    return dot_acc(xt, tl.trans(bt), tl.zeros((BM, BS), dtype=tl.float32), IEEE)


@triton.jit
def _armor_fused_kernel(x_ptr, a_ptr, v_ptr, m_ptr, bb_ptr, bias_ptr, y_ptr,
                        M, IN, OUT,
                        s_xm, s_xk, s_a0, s_a1, s_a2, s_vr, s_vc, s_mr, s_mc,
                        s_bb0, s_bb1, s_bb2, s_bias, s_ym, s_yn, M_KEY,
                        HAS_BIAS: tl.constexpr, IEEE: tl.constexpr,
                        BA: tl.constexpr, BB: tl.constexpr, BM: tl.constexpr):
    pid_m = tl.program_id(0)
    j = tl.program_id(1)
    dt = y_ptr.dtype.element_ty
    rm = pid_m * BM + tl.arange(0, BM)
    ro = j * BA + tl.arange(0, BA)
    acc = tl.zeros((BM, BA), dtype=tl.float32)
    for i in range(0, IN // BB):
        # prologue: u = x[:, block i] @ B[i].T
        u = _block_product(x_ptr, bb_ptr, rm, i, M, IN, s_xm, s_xk, s_bb0, s_bb1, s_bb2,
                           IEEE, BM, BB).to(dt)
        # mainloop: v += u @ S[rows of A block j, block i].T, S decompressed in registers
        st = load_s24_tile(v_ptr, m_ptr, ro, i * BB + tl.arange(0, BB), s_vr, s_vc, s_mr, s_mc,
                           OUT, IN)
        acc = dot_acc(u, tl.trans(st), acc, IEEE)
    # epilogue: y tile = v @ A[j].T + bias
    ra = tl.arange(0, BA)
    at = load_tile(a_ptr + j * s_a0, ra, ra, s_a1, s_a2, BA, BA)
    out = dot_acc(acc.to(dt), tl.trans(at), tl.zeros((BM, BA), dtype=tl.float32), IEEE)
    store_output(out, y_ptr, bias_ptr, rm, ro, M, OUT, s_ym, s_yn, s_bias, HAS_BIAS)


@triton.jit
def _armor_phased_kernel(x_ptr, a_ptr, v_ptr, m_ptr, bb_ptr, bias_ptr, y_ptr, u_ws, v_ws,
                         cnt_ptr, M, IN, OUT,
                         s_xm, s_xk, s_a0, s_a1, s_a2, s_vr, s_vc, s_mr, s_mc,
                         s_bb0, s_bb1, s_bb2, s_bias, s_ym, s_yn, M_KEY,
                         HAS_BIAS: tl.constexpr, IEEE: tl.constexpr,
                         BA: tl.constexpr, BB: tl.constexpr, BM: tl.constexpr,
                         BO: tl.constexpr, BK: tl.constexpr):
    # cnt_ptr: [tickets, phase-0 done, phase-1 done], zeroed by the launcher.
    n0 = IN // BB
    n1 = tl.cdiv(OUT, BO)
    dt = y_ptr.dtype.element_ty
    ticket = tl.atomic_add(cnt_ptr, 1)
    if ticket < n0:
        # phase 0: u[:, block i] = x[:, block i] @ B[i].T
        rb = ticket * BB + tl.arange(0, BB)
        for m0 in range(0, M, BM):
            rm = m0 + tl.arange(0, BM)
            u0 = _block_product(x_ptr, bb_ptr, rm, ticket, M, IN, s_xm, s_xk, s_bb0, s_bb1,
                                s_bb2, IEEE, BM, BB)
            tl.store(u_ws + rm[:, None] * IN + rb[None, :], u0.to(dt), mask=rm[:, None] < M)
        tl.atomic_add(cnt_ptr + 1, 1, sem="release")
    elif ticket < n0 + n1:
        # phase 1: v[:, rows] = u @ S[rows].T, each S row read once
        while tl.atomic_add(cnt_ptr + 1, 0, sem="acquire") < n0:
            pass
        ro = (ticket - n0) * BO + tl.arange(0, BO)
        for m0 in range(0, M, BM):
            rm = m0 + tl.arange(0, BM)
            acc = tl.zeros((BM, BO), dtype=tl.float32)
            for k in range(0, IN, BK):
                rk = k + tl.arange(0, BK)
                umask = (rm[:, None] < M) & (rk[None, :] < IN)
                u = tl.load(u_ws + rm[:, None] * IN + rk[None, :], mask=umask, other=0.0,
                            cache_modifier=".cg")
                st = load_s24_tile(v_ptr, m_ptr, ro, rk, s_vr, s_vc, s_mr, s_mc, OUT, IN)
                acc = dot_acc(u, tl.trans(st), acc, IEEE)
            tl.store(v_ws + rm[:, None] * OUT + ro[None, :], acc.to(dt),
                     mask=(rm[:, None] < M) & (ro[None, :] < OUT))
        tl.atomic_add(cnt_ptr + 2, 1, sem="release")
    else:
        # phase 2: y[:, block j] = v[:, block j] @ A[j].T + bias
        while tl.atomic_add(cnt_ptr + 2, 0, sem="acquire") < n1:
            pass
        j = ticket - n0 - n1
        ra = tl.arange(0, BA)
        rj = j * BA + ra
        at = load_tile(a_ptr + j * s_a0, ra, ra, s_a1, s_a2, BA, BA)
        for m0 in range(0, M, BM):
            rm = m0 + tl.arange(0, BM)
            v2 = tl.load(v_ws + rm[:, None] * OUT + rj[None, :], mask=rm[:, None] < M,
                         other=0.0, cache_modifier=".cg")
            out = dot_acc(v2, tl.trans(at), tl.zeros((BM, BA), dtype=tl.float32), IEEE)
            store_output(out, y_ptr, bias_ptr, rm, rj, M, OUT, s_ym, s_yn, s_bias, HAS_BIAS)


# Autotune spaces, keyed by the M bucket (decode vs prefill).
_FUSED_CONFIGS = product_configs({"BM": [16, 32, 64, 128]}, warps=(4, 8), stages=(2, 3))
_PHASED_CONFIGS = product_configs({"BO": [16, 32, 64], "BK": [64, 128, 256]}, warps=(4,),
                                  stages=(3,))
_KEY = ["M_KEY", "IN", "OUT", "BA", "BB"]


def armor_mm(x, a_blocks, s_values, s_meta, b_blocks, bias, extra):
    """x (N, in) -> (N, out)."""
    M, IN = x.shape
    OUT = s_values.shape[0]
    bA, bB = a_blocks.shape[1], b_blocks.shape[1]
    y = new_buffer(M, OUT, dtype=x.dtype, device=x.device)
    if M == 0:
        return y
    args = dict(x_ptr=x, a_ptr=a_blocks, v_ptr=s_values, m_ptr=s_meta, bb_ptr=b_blocks,
                bias_ptr=bias if bias is not None else s_values, y_ptr=y, M=M, IN=IN, OUT=OUT,
                s_xm=x.stride(0), s_xk=x.stride(1), s_a0=a_blocks.stride(0),
                s_a1=a_blocks.stride(1), s_a2=a_blocks.stride(2), s_vr=s_values.stride(0),
                s_vc=s_values.stride(1), s_mr=s_meta.stride(0), s_mc=s_meta.stride(1),
                s_bb0=b_blocks.stride(0), s_bb1=b_blocks.stride(1), s_bb2=b_blocks.stride(2),
                s_bias=bias.stride(0) if bias is not None else 0, s_ym=y.stride(0),
                s_yn=y.stride(1), M_KEY=m_key(M), HAS_BIAS=bias is not None,
                IEEE=x.dtype == torch.float32, BA=bA, BB=bB)
    if variant_for(M) == "decode":
        u_ws = new_buffer(M, IN, dtype=x.dtype, device=x.device)
        v_ws = new_buffer(M, OUT, dtype=x.dtype, device=x.device)
        cnt = torch.zeros(3, dtype=torch.int32, device=x.device)
        args.update(u_ws=u_ws, v_ws=v_ws, cnt_ptr=cnt, BM=16)

        def grid(meta):
            return (IN // bB + triton.cdiv(OUT, meta["BO"]) + OUT // bA,)

        launch(_armor_phased_kernel, grid, args, tag=("armor_mm", "decode"),
               configs=_PHASED_CONFIGS, key=_KEY, reset_to_zero=["cnt_ptr"],
               small=dict(BO=16, BK=32))
        return y

    def grid(meta):
        return (triton.cdiv(M, meta["BM"]), OUT // bA)

    launch(_armor_fused_kernel, grid, args, tag=("armor_mm", "prefill"),
           configs=_FUSED_CONFIGS, key=_KEY, small=dict(BM=16))
    return y


def _supports(x, a_blocks, s_values, s_meta, b_blocks, *_):
    for name, blocks in (("A", a_blocks), ("B", b_blocks)):
        if blocks.shape[1] not in BLOCK_SIZES:
            return (f"{name} has blocks of size {blocks.shape[1]}; the triton kernel takes "
                    f"block sizes {BLOCK_SIZES}")
    return dtype_reason(x) or size_reason(x, s_values)


register_kernel("armor_mm", "triton", armor_mm, proven=False, supports=_supports,
                note="B prologue, 2:4 core decompressed in registers, A epilogue; "
                     "decode: phased single launch")
