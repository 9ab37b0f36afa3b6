"""Chained products y = (x @ P.T) @ Q.T + bias, the shape shared by dense_sparse_mm,
sparse_dense_mm and lowrank_mm (each family module documents its own FLOPs and bytes).

x: (M, K1); P: (K2, K1), dense (any strides) or 2:4 sparse along K1 (canonical Sparse24);
Q: (N, K2), dense or 2:4 sparse along K2; t = x @ P.T is the (M, K2) intermediate.

Two kernels, picked by the M bucket (``_common.variant_for``):

``_chain_fused_kernel`` (prefill). A program owns a BM-row tile of x and a strided set of BN-column
output tiles (``tl.num_programs(1)`` groups). Stages:
  prologue   t chunk (BM, BK2) = x tile @ P[k chunk].T, looping over K1 in BK1 chunks; a 2:4 P
             tile is decompressed in registers;
  mainloop   acc (BM, BN) += t chunk @ Q[n tile, k chunk].T (t never leaves the chip);
  epilogue   + bias, cast to x's dtype, store.
  When K2 fits one chunk (BK2 >= K2, ``T_RESIDENT``: low rank r <= 256, small k) t is computed once
  per row tile and reused for every output tile the program owns: no recompute, no HBM round trip.
  Otherwise each output tile recomputes its t chunks: the first product costs ceil(N / BN) times
  its FLOPs. That is the price of keeping t on chip with both K2 and N large (an accumulator for
  all of N does not fit on chip); it is small when N <= a few BN and large for square layers, where
  a two-launch path (t through HBM, M*K2 elements written and read once) is the better prefill
  design. The trade-off is measured by the GPU checks owed (triton_kernels/README.md).

``_chain_phased_kernel`` (decode, M <= 16). Bound by the bytes of the factors, so every byte of P
and Q must be read once, by enough programs to fill the GPU. One launch, two phases handed out by a
ticket counter: the first cdiv(K2, BT) tickets compute t[:, chunk] = x @ P[chunk].T (each program
reads its P rows once) and store it to a tiny fp32 workspace (M * K2 elements, L2-resident); the
other tickets wait until phase 1 is done, then compute y[:, n tile] = t @ Q[n tile].T (+ bias),
each reading its Q rows once. Tickets are taken when a program starts, so a waiting program only
waits for programs that already run: no deadlock whatever the number of resident programs (and in
the interpreter, programs run in order, so phase 1 is done before phase 2 starts). A CTA barrier
precedes each release of the counter and follows the acquire. The workspace round trip is
M * K2 * 4 bytes, negligible next to the factor bytes.

Decode launch, for readers of its SASS and of the performance model:
  kernel   ``_chain_phased_kernel`` (one compiled variant per op: P_SPARSE / Q_SPARSE / MID)
  grid     (cdiv(K2, BT) + cdiv(N, BN),), programs of ``num_warps`` warps (1 for 2:4, 2-4 for
           low rank)
  tiles    BM = 16 rows of x (``DECODE_BM``; masked rows beyond M), phase 1: BT rows of P x BK1
           columns per step, phase 2: BN rows of Q x BK2 columns per step (``_PHASED_CONFIGS``)
  loads    P and Q tiles, 2:4 values, x and the t workspace: 128-bit; 2:4 meta words: at least
           64-bit, 128-bit in the dense_sparse / sparse_dense spaces (checked on the SASS by
           tests/test_triton_audit.py; cp.async into shared memory when pipelined)
  counters 2 int32 per launch (zeroed by the launcher)
Per-config shared memory, registers and spills: docs/triton_configs.md.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import (dot_acc, launch_kernel, launch_options, load_rows, load_s24_tile, load_tile,
                      m_key, mid_dot, mid_mode, new_buffer, product_configs, row_ptrs, sm_count,
                      store_output, tuned, variant_for)

# Above this, t is not kept resident (BM x T_MAX fp32 accumulator).
T_MAX = 256


@triton.jit
def _load_operand(ptr, meta_ptr, rows, c0, s_r, s_c, sm_r, sm_c, n_rows, n_cols, n_words,
                  BC: tl.constexpr, SPARSE: tl.constexpr):
    """Tile [rows, c0 : c0 + BC] of a factor, dense or decompressed from Sparse24."""
    if SPARSE:
        return load_s24_tile(ptr, meta_ptr, rows, c0, s_r, s_c, sm_r, sm_c, n_rows, n_cols,
                             n_words, BC)
    else:
        return load_tile(ptr, rows, c0 + tl.arange(0, BC), s_r, s_c, n_rows, n_cols)


@triton.jit
def _first_product(x_rows, p_ptr, pm_ptr, rm, rk2, M, K1, K2, P_W, s_xk, s_pr, s_pc, s_pmr,
                   s_pmc, P_SPARSE: tl.constexpr, IEEE: tl.constexpr, BM: tl.constexpr,
                   BK1: tl.constexpr, BK2: tl.constexpr):
    """t chunk (BM, BK2) fp32 = x[rm, :] @ P[rk2, :].T, looping over K1 (x_rows: row pointers)."""
    acc = tl.zeros((BM, BK2), dtype=tl.float32)
    for k1 in range(0, K1, BK1):
        xt = load_rows(x_rows, rm, k1 + tl.arange(0, BK1), s_xk, M, K1)
        pt = _load_operand(p_ptr, pm_ptr, rk2, k1, s_pr, s_pc, s_pmr, s_pmc, K2, K1, P_W, BK1,
                           P_SPARSE)
        acc = dot_acc(xt, tl.trans(pt), acc, IEEE)
    return acc


@triton.jit
def _chain_fused_kernel(x_ptr, p_ptr, pm_ptr, q_ptr, qm_ptr, b_ptr, y_ptr,
                        M, K1, K2, N, P_W, Q_W,
                        s_xm, s_xk, s_pr, s_pc, s_pmr, s_pmc, s_qr, s_qc, s_qmr, s_qmc,
                        s_b, s_ym, s_yn,
                        P_SPARSE: tl.constexpr, Q_SPARSE: tl.constexpr,
                        HAS_BIAS: tl.constexpr, IEEE: tl.constexpr, MID: tl.constexpr,
                        T_RESIDENT: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                        BK1: tl.constexpr, BK2: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    n_groups = tl.num_programs(1)
    rm = pid_m * BM + tl.arange(0, BM)
    x_rows = row_ptrs(x_ptr, rm, s_xm)
    if T_RESIDENT:
        # prologue once: the whole t row tile (K2 <= BK2) stays on chip, in fp32. Q tiles start
        # at a runtime 0 (pid_n * 0): a literal 0 is a constexpr, which load_s24_tile rejects.
        rk2 = tl.arange(0, BK2)
        t = _first_product(x_rows, p_ptr, pm_ptr, rm, rk2, M, K1, K2, P_W, s_xk, s_pr, s_pc,
                           s_pmr, s_pmc, P_SPARSE, IEEE, BM, BK1, BK2)
        for n0 in range(pid_n * BN, N, n_groups * BN):
            rn = n0 + tl.arange(0, BN)
            qt = _load_operand(q_ptr, qm_ptr, rn, pid_n * 0, s_qr, s_qc, s_qmr, s_qmc, N, K2,
                               Q_W, BK2, Q_SPARSE)
            acc = mid_dot(t, tl.trans(qt), tl.zeros((BM, BN), dtype=tl.float32), MID)
            store_output(acc, y_ptr, b_ptr, rm, rn, M, N, s_ym, s_yn, s_b, HAS_BIAS)
    else:
        for n0 in range(pid_n * BN, N, n_groups * BN):
            rn = n0 + tl.arange(0, BN)
            acc = tl.zeros((BM, BN), dtype=tl.float32)
            for k2 in range(0, K2, BK2):
                rk2 = k2 + tl.arange(0, BK2)
                # prologue: this chunk of t, recomputed per output tile (see module docstring)
                t = _first_product(x_rows, p_ptr, pm_ptr, rm, rk2, M, K1, K2, P_W, s_xk, s_pr,
                                   s_pc, s_pmr, s_pmc, P_SPARSE, IEEE, BM, BK1, BK2)
                # mainloop: consume it at once
                qt = _load_operand(q_ptr, qm_ptr, rn, k2, s_qr, s_qc, s_qmr, s_qmc, N, K2, Q_W, BK2,
                                   Q_SPARSE)
                acc = mid_dot(t, tl.trans(qt), acc, MID)
            store_output(acc, y_ptr, b_ptr, rm, rn, M, N, s_ym, s_yn, s_b, HAS_BIAS)


@triton.jit
def _chain_phased_kernel(x_ptr, p_ptr, pm_ptr, q_ptr, qm_ptr, b_ptr, y_ptr, t_ptr, cnt_ptr,
                         M, K1, K2, N, P_W, Q_W,
                         s_xm, s_xk, s_pr, s_pc, s_pmr, s_pmc, s_qr, s_qc, s_qmr, s_qmc,
                         s_b, s_ym, s_yn,
                         P_SPARSE: tl.constexpr, Q_SPARSE: tl.constexpr,
                         HAS_BIAS: tl.constexpr, IEEE: tl.constexpr, MID: tl.constexpr,
                         BM: tl.constexpr, BK1: tl.constexpr, BT: tl.constexpr,
                         BN: tl.constexpr, BK2: tl.constexpr):
    # cnt_ptr[0]: tickets handed out; cnt_ptr[1]: phase-1 programs done. Zeroed by the launcher.
    # t_ptr: the fp32 workspace t (M, K2), row-major.
    n_t = tl.cdiv(K2, BT)
    ticket = tl.atomic_add(cnt_ptr, 1)
    if ticket < n_t:
        # phase 1: t[:, chunk] = x @ P[chunk].T; P rows read once.
        rk2 = ticket * BT + tl.arange(0, BT)
        for m0 in range(0, M, BM):
            rm = m0 + tl.arange(0, BM)
            t = _first_product(row_ptrs(x_ptr, rm, s_xm), p_ptr, pm_ptr, rm, rk2, M, K1, K2, P_W,
                               s_xk, s_pr, s_pc, s_pmr, s_pmc, P_SPARSE, IEEE, BM, BK1, BT)
            mask = (rm[:, None] < M) & (rk2[None, :] < K2)
            tl.store(row_ptrs(t_ptr, rm, K2)[:, None] + rk2[None, :], t, mask=mask)
        # Every warp's stores are done (CTA barrier) before one thread releases them at GPU
        # scope: without the barrier, the release orders only the releasing thread's own stores
        # (Triton < 3.9 inserts none; the pattern of cooperative groups' grid sync).
        tl.debug_barrier()
        tl.atomic_add(cnt_ptr + 1, 1, sem="release")
    else:
        # phase 2: y[:, n tile] = t @ Q[n tile].T + bias; Q rows read once.
        while tl.atomic_add(cnt_ptr + 1, 0, sem="acquire") < n_t:
            pass
        # the acquiring thread's view of t is every warp's before any reads it
        tl.debug_barrier()
        rn = (ticket - n_t) * BN + tl.arange(0, BN)
        for m0 in range(0, M, BM):
            rm = m0 + tl.arange(0, BM)
            t_rows = row_ptrs(t_ptr, rm, K2)
            acc = tl.zeros((BM, BN), dtype=tl.float32)
            for k2 in range(0, K2, BK2):
                rk2 = k2 + tl.arange(0, BK2)
                tmask = (rm[:, None] < M) & (rk2[None, :] < K2)
                # .cg: read the workspace from L2, never from a stale L1 line.
                t = tl.load(t_rows[:, None] + rk2[None, :], mask=tmask, other=0.0,
                            cache_modifier=".cg")
                qt = _load_operand(q_ptr, qm_ptr, rn, k2, s_qr, s_qc, s_qmr, s_qmc, N, K2, Q_W, BK2,
                                   Q_SPARSE)
                acc = mid_dot(t, tl.trans(qt), acc, MID)
            store_output(acc, y_ptr, b_ptr, rm, rn, M, N, s_ym, s_yn, s_b, HAS_BIAS)


# ---------------------------------------------------------------------------------------------
# Autotune spaces, keyed by the M bucket (decode M <= 16 vs prefill); winners cached per key.
# The first config of each space is its default (see ``_common.tuned``).
# ---------------------------------------------------------------------------------------------
def _fused_configs(resident: bool, bk2: int) -> list:
    if resident:
        # BK2 = K2 rounded up (t resident): BM x BK2 fp32 stays on chip.
        # The default (first) config must fit every dtype: at BK2 = 256 an fp32 BM = 64 tile
        # takes 233,472 B of shared memory (the H100 has 232,448), so BM = 32 leads there.
        bms = [32, 64, 128] if bk2 >= 256 else [64, 32, 128]
        return product_configs({"BM": bms, "BN": [64, 128], "BK1": [64]},
                               warps=(4, 8), stages=(3,), keep=lambda c: c["BM"] * bk2 <= 128 * 128)
    return [dict(BM=bm, BN=bn, BK1=64, BK2=bk2_, num_warps=w, num_stages=3)
            for bm, bn, w in ((64, 64, 4), (64, 128, 4), (128, 64, 8), (128, 128, 8))
            for bk2_ in (64, 32)]


# Decode: BT rows of P per phase-1 program and BN rows of Q per phase-2 program set how many
# programs share the factor bytes (at least ~2 per SM for the Llama shapes); BK1/BK2 are the
# reduction chunks. One warp per program for the 2:4 operands (two or four for low rank). The
# compile audit holds every config here free of
# register spills, with 128-bit loads of values, metadata, dense factors, x and the workspace,
# at M = 1 and M = 16 in fp16 and bf16: a 2:4 tile gives 128-bit metadata loads only with at
# least 8 meta words per row (BK >= 128) and per thread (rows * BK >= 4096 * warps), and the
# spare registers for that differ per op, hence one space per operand sparsity.
# BM (rows of x per tile) is bound by the launcher: 16, the tensor-core minimum, which covers
# every decode M.
def _phased(tiles):
    return [dict(BT=bt, BK1=bk1, BN=bn, BK2=bk2, num_warps=w, num_stages=st)
            for bt, bk1, bn, bk2, w, st in tiles]


_PHASED_CONFIGS = {
    # (P sparse, Q sparse): (BT, BK1, BN, BK2, warps, stages)
    (True, False): _phased([(16, 256, 32, 64, 1, 3), (32, 128, 32, 64, 1, 3),
                            (16, 256, 32, 64, 1, 2), (32, 128, 32, 64, 1, 2)]),
    (False, True): _phased([(16, 256, 32, 128, 1, 3)]),
    (False, False): _phased([(16, 128, 32, 128, 2, 3), (32, 128, 32, 64, 2, 3),
                             (32, 256, 64, 128, 4, 3)]),
}
DECODE_BM = 16


def _p2(n: int) -> int:
    return max(16, triton.next_power_of_2(int(n)))


def chain_mm(x, p, p_meta, q, q_meta, bias, n_out, *, p_sparse: bool, q_sparse: bool,
             p_strides=None, name: str = "chain"):
    """y (M, n_out) = (x @ P.T) @ Q.T + bias in x's dtype.

    ``p`` is P (K2, K1) dense, or its Sparse24 values (K2, K1 / 2) with ``p_meta`` when
    ``p_sparse``; ``p_strides`` overrides P's (row, col) strides (lowrank passes V (K1, K2) as P
    = V.T). ``q`` likewise for Q (N, K2). ``p_meta``/``q_meta`` may be None for dense operands.
    """
    M, K1 = x.shape
    N = n_out
    if p_sparse:
        K2 = p.shape[0]
    else:
        K2 = p.shape[0] if p_strides is None else p.shape[1]
    if M == 0:
        return new_buffer(M, N, dtype=x.dtype, device=x.device)
    spr, spc = p_strides if p_strides is not None else p.stride()
    dummy = p  # any tensor: never read when the flag that uses it is off
    pm = p_meta if p_meta is not None else dummy
    qm = q_meta if q_meta is not None else dummy
    b = bias if bias is not None else dummy
    args = dict(x_ptr=x, p_ptr=p, pm_ptr=pm, q_ptr=q, qm_ptr=qm, b_ptr=b,
                M=M, K1=K1, K2=K2, N=N, P_W=pm.shape[-1], Q_W=qm.shape[-1],
                s_xm=x.stride(0), s_xk=x.stride(1), s_pr=spr, s_pc=spc,
                s_pmr=pm.stride(0), s_pmc=pm.stride(1) if pm.dim() > 1 else 1,
                s_qr=q.stride(0), s_qc=q.stride(1),
                s_qmr=qm.stride(0), s_qmc=qm.stride(1) if qm.dim() > 1 else 1,
                s_b=bias.stride(0) if bias is not None else 0,
                P_SPARSE=p_sparse, Q_SPARSE=q_sparse, HAS_BIAS=bias is not None,
                IEEE=x.dtype == torch.float32, MID=mid_mode(x.dtype))
    variant = variant_for(M)
    key = (variant, m_key(M), K1, K2, N, x.dtype, str(x.device))
    if variant == "decode":
        def run(cfg):
            y = new_buffer(M, N, dtype=x.dtype, device=x.device)
            t = new_buffer(M, K2, dtype=torch.float32, device=x.device)
            # each launch owns its counters (zeroed here, in the stream's order): graph-safe
            cnt = torch.zeros(2, dtype=torch.int32, device=x.device)
            kw = dict(args, y_ptr=y, t_ptr=t, cnt_ptr=cnt, s_ym=y.stride(0), s_yn=y.stride(1),
                      BM=DECODE_BM, BK1=cfg["BK1"], BT=cfg["BT"], BN=cfg["BN"],
                      BK2=cfg["BK2"], **launch_options(cfg))
            grid = (triton.cdiv(K2, cfg["BT"]) + triton.cdiv(N, cfg["BN"]),)
            launch_kernel(_chain_phased_kernel, grid, kw, x.device)
            return y

        return tuned(name, key, _PHASED_CONFIGS[(p_sparse, q_sparse)], run, x.device)
    # prefill
    resident = _p2(K2) <= T_MAX
    bk2 = _p2(K2) if resident else None

    def run(cfg):
        y = new_buffer(M, N, dtype=x.dtype, device=x.device)
        n_tiles = triton.cdiv(N, cfg["BN"])
        # t resident: programs of a row tile split its output tiles, enough for ~2 waves
        groups = min(n_tiles, max(1, -(-2 * sm_count(x.device) // triton.cdiv(M, cfg["BM"]))))
        kw = dict(args, y_ptr=y, s_ym=y.stride(0), s_yn=y.stride(1), T_RESIDENT=resident,
                  BM=cfg["BM"], BN=cfg["BN"], BK1=cfg["BK1"],
                  BK2=bk2 if resident else cfg["BK2"], **launch_options(cfg))
        grid = (triton.cdiv(M, cfg["BM"]), n_tiles if not resident else groups)
        launch_kernel(_chain_fused_kernel, grid, kw, x.device)
        return y

    return tuned(name, key + (resident,), _fused_configs(resident, bk2), run, x.device)
