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
  The fp32 workspaces hold M*(in + out) elements (L2-resident), negligible next to S. A CTA
  barrier precedes each release of a phase counter and follows each acquire.
  Intermediates u and v stay in fp32's range (``_common.mid_dot``).

Decode launch, for readers of its SASS and of the performance model:
  kernel   ``_armor_phased_kernel`` (one variant per MID, BA, BB)
  grid     (in/bB + cdiv(out, BO) + out/bA,): phase 0, 1, 2 items by ticket; programs of
           num_warps warps (``_PHASED_CONFIGS``)
  tiles    BM = 16 rows of x (``DECODE_BM``); phase 0/2: the B / A block in chunks of BKB
           columns; phase 1: BO rows of S x BK columns per step
  loads    S values, B and A blocks, x and the workspaces 128-bit, S meta 64-bit (checked on the
           SASS by tests/test_triton_audit.py)
  counters 3 int32 per launch (zeroed by the launcher)
Per-config shared memory, registers and spills: docs/triton_configs.md.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from factorkern.dispatch import register_kernel

from ._common import (dot_acc, dtype_reason, launch_kernel, launch_options, load_rows,
                      load_s24_tile, load_tile, m_key, mid_dot, mid_mode, new_buffer,
                      product_configs, row_ptrs, span_reason, store_output, tuned, variant_for)

BLOCK_SIZES = (32, 64, 128)


@triton.jit
def _block_product(x_rows, blk_ptr, rm, i, M, n_cols, s_xk, s_b0, s_b1, s_b2,
                   IEEE: tl.constexpr, BS: tl.constexpr, BKB: tl.constexpr):
    """x[rm, block i] @ blocks[i].T (BM, BS) fp32, for square blocks of size BS (x_rows: row
    pointers of x), reducing over the block in chunks of BKB columns (BKB = BS: one step)."""
    rs = tl.arange(0, BS)
    acc = tl.zeros((rm.shape[0], BS), dtype=tl.float32)
    for c in tl.static_range(0, BS, BKB):
        rc = c + tl.arange(0, BKB)
        xt = load_rows(x_rows, rm, i * BS + rc, s_xk, M, n_cols)
        bt = load_tile(blk_ptr + i * s_b0, rs, rc, s_b1, s_b2, BS, BS)
        acc = dot_acc(xt, tl.trans(bt), acc, IEEE)
    return acc


@triton.jit
def _armor_fused_kernel(x_ptr, a_ptr, v_ptr, m_ptr, bb_ptr, bias_ptr, y_ptr,
                        M, IN, OUT, S_W,
                        s_xm, s_xk, s_a0, s_a1, s_a2, s_vr, s_vc, s_mr, s_mc,
                        s_bb0, s_bb1, s_bb2, s_bias, s_ym, s_yn,
                        HAS_BIAS: tl.constexpr, IEEE: tl.constexpr, MID: tl.constexpr,
                        BA: tl.constexpr, BB: tl.constexpr, BM: tl.constexpr):
    pid_m = tl.program_id(0)
    j = tl.program_id(1)
    rm = pid_m * BM + tl.arange(0, BM)
    x_rows = row_ptrs(x_ptr, rm, s_xm)
    ro = j * BA + tl.arange(0, BA)
    acc = tl.zeros((BM, BA), dtype=tl.float32)
    for i in range(0, IN // BB):
        # prologue: u = x[:, block i] @ B[i].T, kept in fp32 (never rounded to fp16's range)
        u = _block_product(x_rows, bb_ptr, rm, i, M, IN, s_xk, s_bb0, s_bb1, s_bb2, IEEE, BB,
                           BB)
        # mainloop: v += u @ S[rows of A block j, block i].T, S decompressed in registers
        st = load_s24_tile(v_ptr, m_ptr, ro, i * BB, s_vr, s_vc, s_mr, s_mc, OUT, IN, S_W, BB)
        acc = mid_dot(u, tl.trans(st), acc, MID)
    # epilogue: y tile = v @ A[j].T + bias (v in fp32)
    ra = tl.arange(0, BA)
    at = load_tile(a_ptr + j * s_a0, ra, ra, s_a1, s_a2, BA, BA)
    out = mid_dot(acc, tl.trans(at), tl.zeros((BM, BA), dtype=tl.float32), MID)
    store_output(out, y_ptr, bias_ptr, rm, ro, M, OUT, s_ym, s_yn, s_bias, HAS_BIAS)


@triton.jit
def _armor_phased_kernel(x_ptr, a_ptr, v_ptr, m_ptr, bb_ptr, bias_ptr, y_ptr, u_ws, v_ws,
                         cnt_ptr, M, IN, OUT, S_W,
                         s_xm, s_xk, s_a0, s_a1, s_a2, s_vr, s_vc, s_mr, s_mc,
                         s_bb0, s_bb1, s_bb2, s_bias, s_ym, s_yn,
                         HAS_BIAS: tl.constexpr, IEEE: tl.constexpr, MID: tl.constexpr,
                         BA: tl.constexpr, BB: tl.constexpr, BM: tl.constexpr,
                         BO: tl.constexpr, BK: tl.constexpr, BKB: tl.constexpr):
    # cnt_ptr: [tickets, phase-0 done, phase-1 done], zeroed by the launcher. u_ws (M, IN) and
    # v_ws (M, OUT): fp32 workspaces, row-major.
    n0 = IN // BB
    n1 = tl.cdiv(OUT, BO)
    ticket = tl.atomic_add(cnt_ptr, 1)
    if ticket < n0:
        # phase 0: u[:, block i] = x[:, block i] @ B[i].T
        rb = ticket * BB + tl.arange(0, BB)
        for m0 in range(0, M, BM):
            rm = m0 + tl.arange(0, BM)
            u0 = _block_product(row_ptrs(x_ptr, rm, s_xm), bb_ptr, rm, ticket, M, IN, s_xk,
                                s_bb0, s_bb1, s_bb2, IEEE, BB, min(BKB, BB))
            tl.store(row_ptrs(u_ws, rm, IN)[:, None] + rb[None, :], u0, mask=rm[:, None] < M)
        # every warp's stores are done (CTA barrier) before one thread releases them at GPU
        # scope (Triton < 3.9 inserts no barrier here)
        tl.debug_barrier()
        tl.atomic_add(cnt_ptr + 1, 1, sem="release")
    elif ticket < n0 + n1:
        # phase 1: v[:, rows] = u @ S[rows].T, each S row read once
        while tl.atomic_add(cnt_ptr + 1, 0, sem="acquire") < n0:
            pass
        tl.debug_barrier()
        ro = (ticket - n0) * BO + tl.arange(0, BO)
        for m0 in range(0, M, BM):
            rm = m0 + tl.arange(0, BM)
            u_rows = row_ptrs(u_ws, rm, IN)
            acc = tl.zeros((BM, BO), dtype=tl.float32)
            for k in range(0, IN, BK):
                rk = k + tl.arange(0, BK)
                umask = (rm[:, None] < M) & (rk[None, :] < IN)
                # .cg: read the workspace from L2, never from a stale L1 line
                u = tl.load(u_rows[:, None] + rk[None, :], mask=umask, other=0.0,  # sass: 128
                            cache_modifier=".cg")
                st = load_s24_tile(v_ptr, m_ptr, ro, k, s_vr, s_vc, s_mr, s_mc, OUT, IN, S_W,
                                   BK)
                acc = mid_dot(u, tl.trans(st), acc, MID)
            tl.store(row_ptrs(v_ws, rm, OUT)[:, None] + ro[None, :], acc,
                     mask=(rm[:, None] < M) & (ro[None, :] < OUT))
        tl.debug_barrier()
        tl.atomic_add(cnt_ptr + 2, 1, sem="release")
    else:
        # phase 2: y[:, block j] = v[:, block j] @ A[j].T + bias
        while tl.atomic_add(cnt_ptr + 2, 0, sem="acquire") < n1:
            pass
        tl.debug_barrier()
        j = ticket - n0 - n1
        ra = tl.arange(0, BA)
        rj = j * BA + ra
        KA: tl.constexpr = min(BKB, BA)
        for m0 in range(0, M, BM):
            rm = m0 + tl.arange(0, BM)
            v_rows = row_ptrs(v_ws, rm, OUT)
            out = tl.zeros((BM, BA), dtype=tl.float32)
            for c in tl.static_range(0, BA, KA):
                rc = c + tl.arange(0, KA)
                v2 = tl.load(v_rows[:, None] + j * BA + rc[None, :],  # sass: 128
                             mask=rm[:, None] < M, other=0.0, cache_modifier=".cg")
                at = load_tile(a_ptr + j * s_a0, ra, rc, s_a1, s_a2, BA, BA)
                out = mid_dot(v2, tl.trans(at), out, MID)
            store_output(out, y_ptr, bias_ptr, rm, rj, M, OUT, s_ym, s_yn, s_bias, HAS_BIAS)


# Autotune spaces, keyed by the M bucket (decode vs prefill); the first config is the default.
_FUSED_CONFIGS = product_configs({"BM": [32, 16, 64, 128]}, warps=(4, 8), stages=(2, 3))
# Decode: BO rows of S per phase-1 program, BK its reduction chunk (2:4 metadata loads are
# 64-bit; 128-bit would need 8 meta words per thread, BO * BK >= 4096 * warps, which with the
# fp32 intermediate tile spills); the B and A block products of phases 0 and 2 reduce over their
# block in chunks of BKB columns so that a 128 x 128 block never sits whole in registers. The
# compile audit holds these free of spills, with 128-bit loads of values, blocks, x and the
# workspaces (docs/triton_configs.md).
_PHASED_CONFIGS = [dict(BO=32, BK=128, BKB=32, num_warps=2, num_stages=3),
                   dict(BO=32, BK=128, BKB=32, num_warps=2, num_stages=2),
                   dict(BO=64, BK=128, BKB=64, num_warps=4, num_stages=3)]
DECODE_BM = 16  # rows of x per tile at decode: the tensor-core minimum, covers every M <= 16


def armor_mm(x, a_blocks, s_values, s_meta, b_blocks, bias, extra):
    """x (N, in) -> (N, out)."""
    M, IN = x.shape
    OUT = s_values.shape[0]
    bA, bB = a_blocks.shape[1], b_blocks.shape[1]
    if M == 0:
        return new_buffer(M, OUT, dtype=x.dtype, device=x.device)
    args = dict(x_ptr=x, a_ptr=a_blocks, v_ptr=s_values, m_ptr=s_meta, bb_ptr=b_blocks,
                bias_ptr=bias if bias is not None else s_values, M=M, IN=IN, OUT=OUT,
                S_W=s_meta.shape[1],
                s_xm=x.stride(0), s_xk=x.stride(1), s_a0=a_blocks.stride(0),
                s_a1=a_blocks.stride(1), s_a2=a_blocks.stride(2), s_vr=s_values.stride(0),
                s_vc=s_values.stride(1), s_mr=s_meta.stride(0), s_mc=s_meta.stride(1),
                s_bb0=b_blocks.stride(0), s_bb1=b_blocks.stride(1), s_bb2=b_blocks.stride(2),
                s_bias=bias.stride(0) if bias is not None else 0,
                HAS_BIAS=bias is not None, IEEE=x.dtype == torch.float32,
                MID=mid_mode(x.dtype), BA=bA, BB=bB)
    variant = variant_for(M)
    key = (variant, m_key(M), IN, OUT, bA, bB, x.dtype, str(x.device))
    if variant == "decode":
        def run(cfg):
            y = new_buffer(M, OUT, dtype=x.dtype, device=x.device)
            u_ws = new_buffer(M, IN, dtype=torch.float32, device=x.device)
            v_ws = new_buffer(M, OUT, dtype=torch.float32, device=x.device)
            # each launch owns its counters (zeroed here, in the stream's order): graph-safe
            cnt = torch.zeros(3, dtype=torch.int32, device=x.device)
            kw = dict(args, y_ptr=y, u_ws=u_ws, v_ws=v_ws, cnt_ptr=cnt, s_ym=y.stride(0),
                      s_yn=y.stride(1), BM=DECODE_BM, BO=cfg["BO"], BK=cfg["BK"],
                      BKB=cfg["BKB"], **launch_options(cfg))
            grid = (IN // bB + triton.cdiv(OUT, cfg["BO"]) + OUT // bA,)
            launch_kernel(_armor_phased_kernel, grid, kw, x.device)
            return y

        return tuned("armor_mm", key, _PHASED_CONFIGS, run, x.device)

    def run(cfg):
        y = new_buffer(M, OUT, dtype=x.dtype, device=x.device)
        kw = dict(args, y_ptr=y, s_ym=y.stride(0), s_yn=y.stride(1), BM=cfg["BM"],
                  **launch_options(cfg))
        launch_kernel(_armor_fused_kernel, (triton.cdiv(M, cfg["BM"]), OUT // bA), kw, x.device)
        return y

    return tuned("armor_mm", key, _FUSED_CONFIGS, run, x.device)


def _supports(x, a_blocks, s_values, s_meta, b_blocks, *_):
    for name, blocks in (("A", a_blocks), ("B", b_blocks)):
        if blocks.shape[1] not in BLOCK_SIZES:
            return (f"{name} has blocks of size {blocks.shape[1]}; the triton kernel takes "
                    f"block sizes {BLOCK_SIZES}")
    return dtype_reason(x) or span_reason(x, A=a_blocks, S_values=s_values, S_meta=s_meta,
                                          B=b_blocks)


register_kernel("armor_mm", "triton", armor_mm, proven=False, supports=_supports,
                note="B prologue, 2:4 core decompressed in registers, A epilogue; "
                     "decode: phased single launch")
