"""Triton kernel for ``monarch_mm``: both block-diagonal products of fly's Monarch in one launch.

Math (factorkern.formats.monarch): w1 (k, q, p), w2 (l, s, r), l * r = k * q, x (N, in <= k*p).

    t[:, c]         = x[:, i*p : (i+1)*p] @ w1[i, a, :]      c = i*q + a      (stage 1)
    u[:, j*s + m]   = sum_ri t[:, ri*l + j] * w2[j, m, ri]    ('b (r l) -> b (l r)' folded)
    y[:, m*l + j]   = u[:, j*s + m]                           ('b (l s) -> b (s l)' folded)

Dependency structure: output block j (of w2) reads the stage-1 columns c = ri*l + j, ri in [0, r),
i.e. column c belongs to output block ``c % l`` at position ``c // l``; it lives in w1 block
``i = c // q`` at row ``a = c % q``. The columns {c : c % l = j} of all j partition [0, k*q), so a
program that owns a group of output blocks and computes exactly their columns does no
recomputation, and t never leaves the chip. y columns of block j are strided by l.

Tiling: a program owns (an M tile of BM rows, a group of output blocks, an s tile of BS). Stage 1 is
computed in chunks of stage-1 columns that share one w1 block (so that it is a plain GEMM
against x's segment i), then fed straight into stage 2 as a batched (over j) GEMM. Two ways to
pick the chunk:

* MODE_R = False ("by j", when q % l == 0, e.g. fly's nblocks=4): for fixed j, ri in a run of
  q/l consecutive values share i = ri // (q/l); a chunk = RV ri's x G output blocks, one GEMM
  x_i (BM, p) @ w1_rows (p, G*BR).
* MODE_R = True ("by ri", e.g. nblocks = sqrt(n) where q = l): for fixed ri, the j in a run of
  gcd(l, q) share i; a chunk = BR ri's (each its own x segment) x GV output blocks, a batched GEMM
  over ri, permuted to (j, m, ri) on chip.

Tile sizes below 16 (the tensor-core minimum) are padded and masked, which only costs speed on
shapes too small to matter. The s axis is split across programs only when one program cannot hold
(G, BM, s) fp32 accumulators (s > S_CAP): then stage 1 is recomputed cdiv(s, BS) times (documented
trade-off; prefill configs keep BS = s up to 1024, decode configs split s in tiles of 64-128 so
that the accumulator and the w2 tile fit in registers without spills, re-reading w1 from L2).

Cost (useful work): FLOPs 2 N (k q p + l s r). Bytes (minimum) N in + N out elements of x's dtype +
(k q p + l s r) weights (+ out bias). Stage 1 is computed in fp32 and stays in fp32's range
before the stage-2 product (``_common.mid_dot``): per-row power-of-two scaling into fp16 for fp16
x, bf16 for bf16 x, fp32 for fp32 x. fly's bmm path rounds t to x's dtype, which overflows fp16
where the result is finite.

Decode launch (M <= 16), for readers of its SASS and of the performance model:
  kernel   ``_monarch_kernel`` (constexprs MODE_R, MID and the tile sizes below)
  grid     (cdiv(N, BM), cdiv(l, GV), cdiv(s, BS)); programs of num_warps warps
  tiles    BM = 16 rows of x; ``_SPACE["decode"]``: BK (x / w1 chunk), BR (ri chunk, mode R),
           G (output blocks, mode J), S_CAP (BS = min(next_pow2(s), S_CAP)), GV_MAX (mode R)
  loads    x, w1 and w2 tiles 128-bit (checked on the SASS by tests/test_triton_audit.py)
Per-config shared memory, registers and spills: docs/triton_configs.md.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from factorkern.dispatch import register_kernel

from ._common import (launch_kernel, launch_options, m_key, mid_dot, mid_mode, new_buffer,
                      row_ptrs, span_reason, tuned, variant_for)


@triton.jit
def _monarch_kernel(
    x_ptr, w1_ptr, w2_ptr, bias_ptr, y_ptr,
    N, IN_F, OUT_F, stride_xm, stride_xk, stride_ym,
    k, q, p, l, s, r, QL,
    HAS_BIAS: tl.constexpr, MODE_R: tl.constexpr, IEEE: tl.constexpr, MID: tl.constexpr,
    BM: tl.constexpr, BK: tl.constexpr, BR: tl.constexpr, RV: tl.constexpr,
    G: tl.constexpr, GV: tl.constexpr, BS: tl.constexpr,
):
    # ---- prologue: which rows, which output blocks, which s columns ----------------------
    pid_m = tl.program_id(0)
    pid_j = tl.program_id(1)
    pid_s = tl.program_id(2)
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_g = tl.arange(0, G)
    j = pid_j * GV + offs_g
    j_ok = (offs_g < GV) & (j < l)
    offs_s = pid_s * BS + tl.arange(0, BS)
    s_ok = offs_s < s
    offs_r = tl.arange(0, BR)
    offs_k = tl.arange(0, BK)
    m_ok = offs_m < N
    x_rows = row_ptrs(x_ptr, offs_m, stride_xm)   # 64-bit row offsets (N * stride can pass 2**31)
    j0 = pid_j * GV
    prec: tl.constexpr = "ieee" if IEEE else "tf32"
    dt = y_ptr.dtype.element_ty

    acc = tl.zeros((G, BM, BS), dtype=tl.float32)
    # ---- mainloop over chunks of ri (the stage-2 reduction axis) ----------------------------
    for r0 in range(0, r, RV):
        ri = r0 + offs_r
        r_ok = (offs_r < RV) & (ri < r)
        if MODE_R:
            # stage 1, by ri: t[ri, m, jj] = x[m, i(ri) p + b] . w1[i(ri), a(ri, jj), b]
            i_r = (ri * l + j0) // q                                              # (BR,)
            a = ri[:, None] * l + j[None, :] - i_r[:, None] * q                   # (BR, G)
            w_ok = r_ok[:, None] & j_ok[None, :]
            t = tl.zeros((BR, BM, G), dtype=tl.float32)
            for b0 in range(0, p, BK):
                b = b0 + offs_k
                col = i_r[:, None] * p + b[None, :]                               # (BR, BK)
                x_ok = (r_ok[:, None] & (b[None, :] < p) & (col < IN_F))[:, None, :] \
                    & m_ok[None, :, None]
                xa = tl.load(x_rows[None, :, None] + col[:, None, :] * stride_xk,  # sass: 128
                             mask=x_ok, other=0.0)                                 # (BR, BM, BK)
                wp = w1_ptr + (i_r[:, None, None] * q + a[:, None, :]) * p + b[None, :, None]
                wv = tl.load(wp, mask=w_ok[:, None, :] & (b < p)[None, :, None],  # sass: 128
                             other=0.0)                                            # (BR, BK, G)
                t = tl.dot(xa, wv, t, input_precision=prec)
            t = tl.permute(t, (2, 1, 0))                                          # (G, BM, BR)
        else:
            # stage 1, by j: every ri of this chunk lives in w1 block i = r0 // (q / l)
            i = r0 // QL
            a = ri[None, :] * l + j[:, None] - i * q                              # (G, BR)
            w_ok = j_ok[:, None] & r_ok[None, :]
            a2 = tl.reshape(a, (G * BR,))
            w_ok2 = tl.reshape(w_ok, (G * BR,))
            t2 = tl.zeros((BM, G * BR), dtype=tl.float32)
            for b0 in range(0, p, BK):
                b = b0 + offs_k
                col = i * p + b
                xa = tl.load(x_rows[:, None] + col[None, :] * stride_xk,  # sass: 128
                             mask=m_ok[:, None] & ((b < p) & (col < IN_F))[None, :],
                             other=0.0)                                            # (BM, BK)
                wv = tl.load(w1_ptr + (i * q + a2[None, :]) * p + b[:, None],  # sass: 128
                             mask=w_ok2[None, :] & (b < p)[:, None], other=0.0)   # (BK, G*BR)
                t2 = tl.dot(xa, wv, t2, input_precision=prec)
            t = tl.permute(tl.reshape(t2, (BM, G, BR)), (1, 0, 2))               # (G, BM, BR)
        # stage 2: acc[j] += t[j] (BM, BR) @ w2[j, s tile, ri chunk].T
        w2p = w2_ptr + (j[:, None, None] * s + offs_s[None, None, :]) * r + ri[None, :, None]
        w2v = tl.load(w2p,  # sass: 128
                      mask=j_ok[:, None, None] & r_ok[None, :, None] & s_ok[None, None, :],
                      other=0.0)                                                   # (G, BR, BS)
        # t stays fp32 (never rounded to fp16's range): see _common.mid_dot
        acc = mid_dot(t, w2v, acc, MID)
    # ---- epilogue: y[m, sidx*l + j] (the output permutation), bias, truncation -------------
    ycol = offs_s[None, None, :] * l + j[:, None, None]                          # (G, 1, BS)
    y_ok = j_ok[:, None, None] & s_ok[None, None, :] & (ycol < OUT_F) & m_ok[None, :, None]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + ycol, mask=y_ok, other=0.0).to(tl.float32)
    tl.store(row_ptrs(y_ptr, offs_m, stride_ym)[None, :, None] + ycol, acc.to(dt), mask=y_ok)


# ---- launch geometry --------------------------------------------------------------------------
def _pow2_divisor(n: int, cap: int = 64) -> int:
    """The largest power of two dividing n, at most cap (n > 0)."""
    return min(n & -n, cap)


def _next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def plan(w1_shape, w2_shape) -> dict:
    """Pick the chunking mode for these factor shapes (see the module docstring)."""
    k, q, p = w1_shape
    l, s, r = w2_shape
    rv_j = _pow2_divisor(q // l) if q % l == 0 else 0    # ri sharing i, for fixed j
    gv_r = _pow2_divisor(math.gcd(l, q), 32)             # j sharing i, for fixed ri
    mode_r = not (rv_j >= 16 or rv_j >= gv_r)
    return {"mode_r": mode_r, "rv": rv_j, "gv": gv_r}


# Autotune space, keyed by the M bucket (decode: M <= 16, prefill). Entries: BM, BK, BR (mode R
# ri tile), G (mode J group), S_CAP (largest s tile before s is split), num_warps, num_stages.
_SPACE = {
    # decode: s split in tiles of at most S_CAP (stage 1 recomputed per s tile, from L2) so that
    # the (G, BM, BS) accumulator and the (G, BR, BS) w2 tile fit in registers without spills;
    # GV_MAX caps the output blocks a program owns in mode R (nblocks = sqrt(n)).
    "decode": [dict(BM=16, BK=64, BR=16, G=1, S_CAP=128, GV_MAX=16, num_warps=8, num_stages=2),
               dict(BM=16, BK=32, BR=16, G=1, S_CAP=64, GV_MAX=16, num_warps=4, num_stages=2),
               dict(BM=16, BK=128, BR=16, G=1, S_CAP=128, GV_MAX=16, num_warps=8,
                    num_stages=2)],
    "prefill": [dict(BM=32, BK=64, BR=16, G=1, S_CAP=256, GV_MAX=16, num_warps=8, num_stages=2),
                dict(BM=64, BK=64, BR=16, G=1, S_CAP=256, GV_MAX=32, num_warps=8, num_stages=3),
                dict(BM=16, BK=64, BR=32, G=1, S_CAP=1024, GV_MAX=32, num_warps=8,
                     num_stages=2),
                dict(BM=64, BK=32, BR=16, G=2, S_CAP=128, GV_MAX=32, num_warps=4, num_stages=3),
                dict(BM=32, BK=32, BR=16, G=1, S_CAP=256, GV_MAX=32, num_warps=4, num_stages=2)],
}


def _launch(x, w1, w2, out_features, bias, cfg):
    """Bind one config to the kernel's arguments and launch; returns y (N, out_features)."""
    k, q, p = w1.shape
    l, s, r = w2.shape
    n = x.shape[0]
    pl = plan(w1.shape, w2.shape)
    if pl["mode_r"]:
        # a power of two dividing gcd(l, q): the group's blocks still share their w1 block
        rv, br, gv = cfg["BR"], cfg["BR"], min(pl["gv"], cfg.get("GV_MAX", 32))
        g = max(16, gv)
    else:
        rv = pl["rv"]
        br = max(16, rv)
        g = max(1, min(cfg["G"], _next_pow2(l)))
        gv = g
    bs = min(_next_pow2(s), cfg["S_CAP"])
    y = new_buffer(n, out_features, device=x.device, dtype=x.dtype)
    grid = (triton.cdiv(n, cfg["BM"]), triton.cdiv(l, gv), triton.cdiv(s, bs))
    kw = dict(x_ptr=x, w1_ptr=w1, w2_ptr=w2, bias_ptr=bias if bias is not None else y, y_ptr=y,
              N=n, IN_F=x.shape[1], OUT_F=out_features, stride_xm=x.stride(0),
              stride_xk=x.stride(1), stride_ym=y.stride(0),
              k=k, q=q, p=p, l=l, s=s, r=r, QL=max(1, q // l),
              HAS_BIAS=bias is not None, MODE_R=pl["mode_r"], IEEE=x.dtype == torch.float32,
              MID=mid_mode(x.dtype),
              BM=cfg["BM"], BK=cfg["BK"], BR=br, RV=rv, G=g, GV=gv, BS=bs,
              **launch_options(cfg))
    launch_kernel(_monarch_kernel, grid, kw, x.device)
    return y


def monarch_mm(x, w1, w2, out_features, bias=None, extra=(), *, config=None):
    """Launcher. x (N, in) any strides; w1 (k, q, p), w2 (l, s, r) contiguous; -> (N, out) in x's
    dtype. ``config`` (a dict like the entries of ``_SPACE``) forces a tile configuration."""
    w1, w2 = w1.contiguous(), w2.contiguous()
    if bias is not None:
        bias = bias.contiguous()
    n = x.shape[0]
    if n == 0:
        return new_buffer(0, out_features, device=x.device, dtype=x.dtype)

    def run(cfg):
        return _launch(x, w1, w2, out_features, bias, cfg)

    if config is not None:
        return run(config)
    bucket = variant_for(n)
    key = (bucket, m_key(n), tuple(w1.shape), tuple(w2.shape), x.dtype, str(x.device))
    return tuned("monarch_mm", key, _SPACE[bucket], run, x.device)


def supports(x, w1, w2, out_features, bias=None):
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return f"dtype {x.dtype} (the Triton kernel takes float16, bfloat16, float32)"
    if w1.dtype != x.dtype or w2.dtype != x.dtype:
        return "w1/w2 must have x's dtype"
    # the launcher makes w1 and w2 contiguous: what the kernel addresses is their numel
    for name, w in (("w1", w1), ("w2", w2)):
        if w.numel() > 2**31 - 1:
            return (f"{name} holds {w.numel()} elements, more than 2**31 - 1 (the kernel "
                    "addresses factors with 32-bit offsets; use backend='torch')")
    return span_reason(x)


register_kernel("monarch_mm", "triton", monarch_mm, proven=False, supports=supports,
                note="fused two-stage Monarch, no HBM intermediate")
