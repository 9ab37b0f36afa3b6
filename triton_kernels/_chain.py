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
reads its P rows once) and store it to a tiny workspace (M * K2 elements, L2-resident); the other
tickets wait until phase 1 is done, then compute y[:, n tile] = t @ Q[n tile].T (+ bias), each
reading its Q rows once. Tickets are taken when a program starts, so a waiting program only waits
for programs that already run: no deadlock whatever the number of resident programs (and in the
interpreter, programs run in order, so phase 1 is done before phase 2 starts). The workspace
round trip is M * K2 elements, negligible next to the factor bytes.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import (dot_acc, launch, load_s24_tile, load_tile, m_key, new_buffer,
                      product_configs, store_output, variant_for)

# Above this, t is not kept resident (BM x T_MAX fp32 accumulator).
T_MAX = 256


@triton.jit
def _load_operand(ptr, meta_ptr, rows, cols, s_r, s_c, sm_r, sm_c, n_rows, n_cols,
                  SPARSE: tl.constexpr):
    if SPARSE:
        return load_s24_tile(ptr, meta_ptr, rows, cols, s_r, s_c, sm_r, sm_c, n_rows, n_cols)
    else:
        return load_tile(ptr, rows, cols, s_r, s_c, n_rows, n_cols)


@triton.jit
def _first_product(x_ptr, p_ptr, pm_ptr, rm, rk2, M, K1, K2, s_xm, s_xk, s_pr, s_pc, s_pmr,
                   s_pmc, P_SPARSE: tl.constexpr, IEEE: tl.constexpr, BM: tl.constexpr,
                   BK1: tl.constexpr, BK2: tl.constexpr):
    """t chunk (BM, BK2) fp32 = x[rm, :] @ P[rk2, :].T, looping over K1."""
    acc = tl.zeros((BM, BK2), dtype=tl.float32)
    for k1 in range(0, K1, BK1):
        rk1 = k1 + tl.arange(0, BK1)
        xt = load_tile(x_ptr, rm, rk1, s_xm, s_xk, M, K1)
        pt = _load_operand(p_ptr, pm_ptr, rk2, rk1, s_pr, s_pc, s_pmr, s_pmc, K2, K1, P_SPARSE)
        acc = dot_acc(xt, tl.trans(pt), acc, IEEE)
    return acc


@triton.jit
def _chain_fused_kernel(x_ptr, p_ptr, pm_ptr, q_ptr, qm_ptr, b_ptr, y_ptr,
                        M, K1, K2, N,
                        s_xm, s_xk, s_pr, s_pc, s_pmr, s_pmc, s_qr, s_qc, s_qmr, s_qmc,
                        s_b, s_ym, s_yn, M_KEY,
                        P_SPARSE: tl.constexpr, Q_SPARSE: tl.constexpr,
                        HAS_BIAS: tl.constexpr, IEEE: tl.constexpr, T_RESIDENT: tl.constexpr,
                        BM: tl.constexpr, BN: tl.constexpr, BK1: tl.constexpr,
                        BK2: tl.constexpr, N_GROUPS: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    n_groups = tl.num_programs(1)
    rm = pid_m * BM + tl.arange(0, BM)
    dt = y_ptr.dtype.element_ty
    if T_RESIDENT:
        # prologue once: the whole t row tile (K2 <= BK2) stays on chip for every output tile.
        rk2 = tl.arange(0, BK2)
        t = _first_product(x_ptr, p_ptr, pm_ptr, rm, rk2, M, K1, K2, s_xm, s_xk, s_pr, s_pc,
                           s_pmr, s_pmc, P_SPARSE, IEEE, BM, BK1, BK2).to(dt)
        for n0 in range(pid_n * BN, N, n_groups * BN):
            rn = n0 + tl.arange(0, BN)
            qt = _load_operand(q_ptr, qm_ptr, rn, rk2, s_qr, s_qc, s_qmr, s_qmc, N, K2,
                               Q_SPARSE)
            acc = dot_acc(t, tl.trans(qt), tl.zeros((BM, BN), dtype=tl.float32), IEEE)
            store_output(acc, y_ptr, b_ptr, rm, rn, M, N, s_ym, s_yn, s_b, HAS_BIAS)
    else:
        for n0 in range(pid_n * BN, N, n_groups * BN):
            rn = n0 + tl.arange(0, BN)
            acc = tl.zeros((BM, BN), dtype=tl.float32)
            for k2 in range(0, K2, BK2):
                rk2 = k2 + tl.arange(0, BK2)
                # prologue: this chunk of t, recomputed per output tile (see module docstring)
                t = _first_product(x_ptr, p_ptr, pm_ptr, rm, rk2, M, K1, K2, s_xm, s_xk, s_pr,
                                   s_pc, s_pmr, s_pmc, P_SPARSE, IEEE, BM, BK1, BK2).to(dt)
                # mainloop: consume it at once
                qt = _load_operand(q_ptr, qm_ptr, rn, rk2, s_qr, s_qc, s_qmr, s_qmc, N, K2,
                                   Q_SPARSE)
                acc = dot_acc(t, tl.trans(qt), acc, IEEE)
            store_output(acc, y_ptr, b_ptr, rm, rn, M, N, s_ym, s_yn, s_b, HAS_BIAS)


@triton.jit
def _chain_phased_kernel(x_ptr, p_ptr, pm_ptr, q_ptr, qm_ptr, b_ptr, y_ptr, t_ptr, cnt_ptr,
                         M, K1, K2, N,
                         s_xm, s_xk, s_pr, s_pc, s_pmr, s_pmc, s_qr, s_qc, s_qmr, s_qmc,
                         s_b, s_ym, s_yn, M_KEY,
                         P_SPARSE: tl.constexpr, Q_SPARSE: tl.constexpr,
                         HAS_BIAS: tl.constexpr, IEEE: tl.constexpr,
                         BM: tl.constexpr, BK1: tl.constexpr, BT: tl.constexpr,
                         BN: tl.constexpr, BK2: tl.constexpr):
    # cnt_ptr[0]: tickets handed out; cnt_ptr[1]: phase-1 programs done. Zeroed by the launcher.
    n_t = tl.cdiv(K2, BT)
    ticket = tl.atomic_add(cnt_ptr, 1)
    dt = y_ptr.dtype.element_ty
    if ticket < n_t:
        # phase 1: t[:, chunk] = x @ P[chunk].T; P rows read once.
        rk2 = ticket * BT + tl.arange(0, BT)
        for m0 in range(0, M, BM):
            rm = m0 + tl.arange(0, BM)
            t = _first_product(x_ptr, p_ptr, pm_ptr, rm, rk2, M, K1, K2, s_xm, s_xk, s_pr,
                               s_pc, s_pmr, s_pmc, P_SPARSE, IEEE, BM, BK1, BT)
            mask = (rm[:, None] < M) & (rk2[None, :] < K2)
            tl.store(t_ptr + rm[:, None] * K2 + rk2[None, :], t.to(dt), mask=mask)
        tl.atomic_add(cnt_ptr + 1, 1, sem="release")
    else:
        # phase 2: y[:, n tile] = t @ Q[n tile].T + bias; Q rows read once.
        while tl.atomic_add(cnt_ptr + 1, 0, sem="acquire") < n_t:
            pass
        rn = (ticket - n_t) * BN + tl.arange(0, BN)
        for m0 in range(0, M, BM):
            rm = m0 + tl.arange(0, BM)
            acc = tl.zeros((BM, BN), dtype=tl.float32)
            for k2 in range(0, K2, BK2):
                rk2 = k2 + tl.arange(0, BK2)
                tmask = (rm[:, None] < M) & (rk2[None, :] < K2)
                # .cg: read the workspace from L2, never from a stale L1 line.
                t = tl.load(t_ptr + rm[:, None] * K2 + rk2[None, :], mask=tmask, other=0.0,
                            cache_modifier=".cg")
                qt = _load_operand(q_ptr, qm_ptr, rn, rk2, s_qr, s_qc, s_qmr, s_qmc, N, K2,
                                   Q_SPARSE)
                acc = dot_acc(t, tl.trans(qt), acc, IEEE)
            store_output(acc, y_ptr, b_ptr, rm, rn, M, N, s_ym, s_yn, s_b, HAS_BIAS)


# ---------------------------------------------------------------------------------------------
# Autotune spaces, keyed by the M bucket (decode M <= 16 vs prefill); winners cached per key.
# ---------------------------------------------------------------------------------------------
def _fused_configs(resident: bool, bk2: int) -> list:
    if resident:
        # BK2 is fixed by K2; N_GROUPS splits the output tiles of a row tile across programs.
        return product_configs({"BM": [32, 64, 128], "BN": [64, 128], "BK1": [64],
                                "N_GROUPS": [1, 4, 16]}, warps=(4, 8), stages=(3,),
                               keep=lambda c: c["BM"] * bk2 <= 128 * 128)
    return product_configs({"BM": [64, 128], "BN": [64, 128, 256], "BK1": [64],
                            "BK2": [32, 64]}, warps=(4, 8), stages=(3,),
                           keep=lambda c: c["BM"] * c["BN"] <= 128 * 256)


# Decode: BT rows of P per phase-1 program and BN rows of Q per phase-2 program set how many
# programs share the factor bytes; BK1/BK2 are the reduction chunks.
_PHASED_CONFIGS = product_configs({"BK1": [128, 256], "BT": [16, 32, 64], "BN": [16, 32, 64],
                                   "BK2": [128]}, warps=(4,), stages=(3,))

_KEY = ["M_KEY", "K1", "K2", "N"]


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
    y = new_buffer(M, N, dtype=x.dtype, device=x.device)
    if M == 0:
        return y
    spr, spc = p_strides if p_strides is not None else p.stride()
    dummy = p  # any tensor: never read when the flag that uses it is off
    pm = p_meta if p_meta is not None else dummy
    qm = q_meta if q_meta is not None else dummy
    b = bias if bias is not None else dummy
    args = dict(x_ptr=x, p_ptr=p, pm_ptr=pm, q_ptr=q, qm_ptr=qm, b_ptr=b, y_ptr=y,
                M=M, K1=K1, K2=K2, N=N,
                s_xm=x.stride(0), s_xk=x.stride(1), s_pr=spr, s_pc=spc,
                s_pmr=pm.stride(0), s_pmc=pm.stride(1) if pm.dim() > 1 else 1,
                s_qr=q.stride(0), s_qc=q.stride(1),
                s_qmr=qm.stride(0), s_qmc=qm.stride(1) if qm.dim() > 1 else 1,
                s_b=bias.stride(0) if bias is not None else 0,
                s_ym=y.stride(0), s_yn=y.stride(1), M_KEY=m_key(M),
                P_SPARSE=p_sparse, Q_SPARSE=q_sparse, HAS_BIAS=bias is not None,
                IEEE=x.dtype == torch.float32)
    if variant_for(M) == "decode":
        t = new_buffer(M, K2, dtype=x.dtype, device=x.device)
        cnt = torch.zeros(2, dtype=torch.int32, device=x.device)
        args.update(t_ptr=t, cnt_ptr=cnt)

        def grid(meta):
            return (triton.cdiv(K2, meta["BT"]) + triton.cdiv(N, meta["BN"]),)

        launch(_chain_phased_kernel, grid, args, tag=(name, "decode"),
               configs=_PHASED_CONFIGS, key=_KEY, reset_to_zero=["cnt_ptr"],
               small=dict(BM=16, BK1=64, BT=32, BN=32, BK2=64))
        return y
    # prefill
    resident = _p2(K2) <= T_MAX
    bk2 = _p2(K2) if resident else None
    if resident:
        args.update(T_RESIDENT=True, BK2=bk2)
    else:
        args.update(T_RESIDENT=False, N_GROUPS=1 << 30)

    def grid(meta):
        n_tiles = triton.cdiv(N, meta["BN"])
        return (triton.cdiv(M, meta["BM"]), min(meta.get("N_GROUPS", n_tiles), n_tiles))

    small = dict(BM=32, BN=32, BK1=64, N_GROUPS=2) if resident else dict(BM=32, BN=32, BK1=64,
                                                                         BK2=64)
    launch(_chain_fused_kernel, grid, args, tag=(name, "prefill", resident, bk2),
           configs=_fused_configs(resident, bk2), key=_KEY, small=small)
    return y
