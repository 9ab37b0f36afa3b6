"""Triton kernel for ``littlebit_mm``: all terms, both sign products, the three scale vectors and
the bias in one launch.

Math (factorkern.formats.littlebit), per term t, x (N, in):

    a_t = ((x * g_t) @ sign(V_t)) * l_t          (N, r)     stage 1, reduces over in
    y   = sum_t h_t * (a_t @ sign(U_t).T) + bias  (N, out)   stage 2, reduces over r

Signs come from SignBits int32 words (bit b of word w is column 32 w + b, 1 = +1) and are unpacked
in registers; padding bits are masked. Signs are applied exactly (a select between v and -v, or
+-1 operands of a tensor-core product); accumulation is fp32.

Why one launch needs a grid barrier: every output tile needs the whole of a_t (all r, reduced over
all of in), so a program that owned an output tile would recompute stage 1 (out / BN) times; at
decode that is ~r * in MACs per program, far above the ~1 us the bytes take. Instead the launch
holds two kinds of programs, taken in ticket order (an atomic counter gives each program its role,
so every stage-1 program has started before any stage-2 program waits: no deadlock whatever the
scheduling): stage-1 programs write a_t * l_t (fp32, N * T * r * 4 bytes, tiny) to a scratch
buffer and signal a counter; stage-2 programs wait for the counter, then read it (L2-resident).
Each launch owns its two counters (tickets, stage-1 items done), zeroed by the launcher in the
stream's order: a CUDA graph replayed on another stream, or two graphs replayed at once, never
share counter state.

Both variants run the same code, tensor cores on unpacked +-1 operands (exact in every dtype),
with their own tiles (forceable through ``config``): decode (M <= 16) BM = 16 and many small
programs (one or two warps: the sign bytes are few, the launch is latency-bound); prefill wide
tiles. x * g and a * l stay in fp32's range (``_common.mid_dot``): tf32 products for fp16 x (a
relative 2^-11 rounding per element, fp16's precision, without its 65504 overflow), bf16 for
bf16 x, fp32 (FMA, exact signs) for fp32 x. An earlier decode variant applied signs with CUDA-core
selects over a (BM, BR1, BK) register tile; at M = 16 it spilled kilobytes of registers on
sm_90a, and at M <= 16 the tensor cores do the same work with none.

Cost per term (useful): FLOPs 2 N r (in + out) (plus 3 scale multiplies). Bytes (minimum):
N (in + out) elements of x's dtype + r (in + out) / 8 sign bytes + (in + out + r) scales
(+ out bias); the a scratch adds 2 N T r * 4 bytes, which stay in L2.

Decode launch (M <= 16), for readers of its SASS and of the performance model:
  kernel   ``_littlebit_kernel`` (one variant per MID; the same code as prefill)
  grid     (T * cdiv(N, 16) * cdiv(RP, BR1) + cdiv(N, 16) * cdiv(out, BN),): stage-1 items, then
           stage-2 items, by ticket; programs of num_warps warps (``_SPACE["decode"]``)
  tiles    BM = 16 rows of x; stage 1: BR1 ranks x BK inputs per step; stage 2: BN outputs x
           BR2 ranks per step
  loads    sign words (rows padded to 16 bytes by the stacked layout), x and the scratch:
           128-bit; g: 64-bit (checked on the SASS by tests/test_triton_audit.py)
  counters 2 int32 per launch (zeroed by the launcher)
Per-config shared memory, registers and spills: docs/triton_configs.md.
"""

from __future__ import annotations


import torch
import triton
import triton.language as tl

from factorkern.dispatch import register_kernel
from factorkern.formats._common import register_layout

from ._common import (launch_kernel, launch_options, m_key, mid_dot, mid_mode, new_buffer,
                      row_ptrs, span_reason, tuned, variant_for)


@triton.jit
def _sign_tile(w_ptr, rows, row_ok, c0, n_words, BC: tl.constexpr):
    """Signs of columns c0 .. c0 + BC (c0 a multiple of BC, BC of 32) of the rows ``rows`` of a
    SignBits matrix (int32 words, ``n_words`` per row, row-major from ``w_ptr``) as a bool tile
    (R, BC), True = +1. The words are read as a contiguous (R, BC / 32) tile (128-bit loads) and
    expanded in registers; words past the row's last are not read (False)."""
    R: tl.constexpr = rows.shape[0]
    wc = tl.multiple_of(c0 // 32, BC // 32) + tl.arange(0, BC // 32)
    words = tl.load(w_ptr + rows[:, None] * n_words + wc[None, :],  # sass: 128
                    mask=row_ok[:, None] & (wc < n_words)[None, :], other=0)
    bits = (words[:, :, None] >> tl.arange(0, 32)[None, None, :]) & 1
    return tl.reshape(bits, (R, BC)) != 0


@triton.jit
def _stage1(x_ptr, v_ptr, g_ptr, l_ptr, a_ptr, item, N, IN, RP, VW, stride_xm, stride_xk,
            n_mt, n_rt, BM: tl.constexpr, BR1: tl.constexpr, BK: tl.constexpr,
            MID: tl.constexpr):
    # item -> (term, m tile, r tile);
    # a[t, m, ri] = l[t, ri] * sum_k x[m, k] g[t, k] sign(V[t, ri, k])
    t = item // (n_mt * n_rt)
    rem = item % (n_mt * n_rt)
    offs_m = (rem // n_rt) * BM + tl.arange(0, BM)
    offs_r = (rem % n_rt) * BR1 + tl.arange(0, BR1)
    m_ok = offs_m < N
    r_ok = offs_r < RP
    x_rows = row_ptrs(x_ptr, offs_m, stride_xm)
    offs_k = tl.arange(0, BK)
    dt = x_ptr.dtype.element_ty
    acc = tl.zeros((BM, BR1), dtype=tl.float32)
    for k0 in range(0, IN, BK):
        k = k0 + offs_k
        k_ok = k < IN
        xv = tl.load(x_rows[:, None] + k[None, :] * stride_xk,  # sass: 128
                     mask=m_ok[:, None] & k_ok[None, :], other=0.0).to(tl.float32)
        gv = tl.load(g_ptr + t * IN + k, mask=k_ok, other=0.0).to(tl.float32)  # sass: 64
        xg = xv * gv[None, :]                                                     # (BM, BK)
        bit = _sign_tile(v_ptr + t * RP * VW, offs_r, r_ok, k0, VW, BK)          # (BR1, BK)
        one = tl.full((BR1, BK), 1.0, dt)
        sgn = tl.where(bit, one, -one)
        sgn = tl.where(r_ok[:, None] & k_ok[None, :], sgn, tl.zeros_like(sgn))
        # x * g stays fp32 (never rounded to fp16's range): see _common.mid_dot
        acc = mid_dot(xg, tl.trans(sgn), acc, MID)
    lv = tl.load(l_ptr + t * RP + offs_r, mask=r_ok, other=0.0).to(tl.float32)
    acc = acc * lv[None, :]
    # the fp32 scratch a (T, N, RP): 64-bit row offsets (T N RP can pass 2**31)
    a_rows = row_ptrs(a_ptr, t * N + offs_m, RP)
    tl.store(a_rows[:, None] + offs_r[None, :], acc, mask=m_ok[:, None] & r_ok[None, :])


@triton.jit
def _stage2(a_ptr, u_ptr, h_ptr, bias_ptr, y_ptr, item, N, OUT, RP, UW, T, stride_ym, n_nt,
            HAS_BIAS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BR2: tl.constexpr,
            MID: tl.constexpr):
    # item -> (m tile, n tile); y[m, o] = sum_t h[t, o] sum_ri a[t, m, ri] sign(U[t, o, ri])
    offs_m = (item // n_nt) * BM + tl.arange(0, BM)
    offs_n = (item % n_nt) * BN + tl.arange(0, BN)
    m_ok = offs_m < N
    n_ok = offs_n < OUT
    offs_r = tl.arange(0, BR2)
    dt = y_ptr.dtype.element_ty
    y = tl.zeros((BM, BN), dtype=tl.float32)
    for t in range(0, T):
        a_rows = row_ptrs(a_ptr, t * N + offs_m, RP)
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for r0 in range(0, RP, BR2):
            ri = r0 + offs_r
            r_ok = ri < RP
            # .cg: read the scratch from L2, never from a possibly stale L1 line
            av = tl.load(a_rows[:, None] + ri[None, :],  # sass: 128
                         mask=m_ok[:, None] & r_ok[None, :], other=0.0,
                         cache_modifier=".cg")                                      # (BM, BR2)
            bit = _sign_tile(u_ptr + t * OUT * UW, offs_n, n_ok, r0, UW, BR2)     # (BN, BR2)
            one = tl.full((BN, BR2), 1.0, dt)
            sgn = tl.where(bit, one, -one)
            sgn = tl.where(n_ok[:, None] & r_ok[None, :], sgn, tl.zeros_like(sgn))
            acc = mid_dot(av, tl.trans(sgn), acc, MID)
        hv = tl.load(h_ptr + t * OUT + offs_n, mask=n_ok, other=0.0).to(tl.float32)
        y += acc * hv[None, :]
    if HAS_BIAS:
        y += tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(row_ptrs(y_ptr, offs_m, stride_ym)[:, None] + offs_n[None, :], y.to(dt),
             mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def _littlebit_kernel(
    x_ptr, u_ptr, v_ptr, h_ptr, l_ptr, g_ptr, bias_ptr, y_ptr, a_ptr, cnt_ptr,
    N, IN, OUT, RP, T, UW4, VW4, stride_xm, stride_xk, stride_ym,
    n_mt1, n_rt, n_nt, n1, n2,
    HAS_BIAS: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr,
    BR1: tl.constexpr, BN: tl.constexpr, BR2: tl.constexpr, MID: tl.constexpr,
):
    # ---- prologue: the role of this program comes from a ticket, not from program_id ---------
    # sign words per row, passed divided by 4 so that the compiler knows rows are 16-byte
    # aligned (the stacked layout pads them): the sign loads are then 128-bit
    UW = UW4 * 4
    VW = VW4 * 4
    ticket = tl.atomic_add(cnt_ptr, 1)
    if ticket < n1:
        # ---- stage 1 mainloop: a * l for (term, m tile, r tile) -------------------------------
        _stage1(x_ptr, v_ptr, g_ptr, l_ptr, a_ptr, ticket, N, IN, RP, VW, stride_xm, stride_xk,
                n_mt1, n_rt, BM, BR1, BK, MID)
        # every warp's stores are done (CTA barrier) before one thread's gpu-scope release
        # (the pattern of cooperative groups' grid sync)
        tl.debug_barrier()
        tl.atomic_add(cnt_ptr + 1, 1, sem="release")
    else:
        # ---- barrier: every stage-1 item is held by a running program -------------------------
        done = tl.atomic_add(cnt_ptr + 1, 0, sem="acquire")
        while done < n1:
            done = tl.atomic_add(cnt_ptr + 1, 0, sem="acquire")
        tl.debug_barrier()
        # ---- stage 2 mainloop + epilogue (h, term sum, bias) ----------------------------------
        _stage2(a_ptr, u_ptr, h_ptr, bias_ptr, y_ptr, ticket - n1, N, OUT, RP, UW, T, stride_ym,
                n_nt, HAS_BIAS, BM, BN, BR2, MID)


# ---- kernel layout (prepare("triton")): terms stacked, ranks padded --------------------------
def stack_terms(u_words, v_words, h, l, g):
    """Lists of per-term tensors -> (u (T, out, UW), v (T, RP, VW), h (T, out), l (T, RP),
    g (T, in)) with RP = max rank and UW, VW the word counts rounded up to multiples of 4 (rows
    16-byte aligned, so the kernel's sign loads are 128-bit). Padded ranks have l = 0 and zero
    words, padded words are zero: they add exactly 0 (the kernel masks columns past in and r)."""
    rp = max(int(t.shape[0]) for t in l)
    uw = -(-(-(-rp // 32)) // 4) * 4
    vw = -(-int(v_words[0].shape[1]) // 4) * 4
    T = len(l)
    u = u_words[0].new_zeros(T, u_words[0].shape[0], uw)
    v = v_words[0].new_zeros(T, rp, vw)
    ls = l[0].new_zeros(T, rp)
    for t in range(T):
        u[t, :, :u_words[t].shape[1]] = u_words[t]
        v[t, :v_words[t].shape[0], :v_words[t].shape[1]] = v_words[t]
        ls[t, :l[t].shape[0]] = l[t]
    return u, v, torch.stack(list(h)), ls, torch.stack(list(g))


register_layout("LittleBitFactors", "triton", lambda F: stack_terms(*F.lists()))

# ---- autotune space, keyed by the M bucket ---------------------------------------------------
_SPACE = {
    # decode: BM = 16 (the tensor-core minimum covers every M <= 16); BR1 ranks per stage-1
    # program, BN outputs per stage-2 program (many small programs: the sign bytes are few).
    # 128-bit sign-word loads need 4 words per row and per thread: BK, BR2 >= 128 and
    # rows * columns >= 4096 * warps for both sign tiles.
    "decode": [dict(BM=16, BK=256, BR1=32, BN=64, BR2=128, num_warps=2, num_stages=2),
               dict(BM=16, BK=128, BR1=32, BN=32, BR2=128, num_warps=1, num_stages=2),
               dict(BM=16, BK=256, BR1=32, BN=64, BR2=128, num_warps=2, num_stages=3)],
    "prefill": [dict(BM=64, BK=64, BR1=64, BN=128, BR2=64, num_warps=8, num_stages=3),
                dict(BM=128, BK=64, BR1=64, BN=128, BR2=64, num_warps=8, num_stages=3),
                dict(BM=128, BK=32, BR1=128, BN=256, BR2=32, num_warps=8, num_stages=3),
                dict(BM=64, BK=64, BR1=32, BN=64, BR2=64, num_warps=4, num_stages=3)],
}


def _launch(x, stacked, bias, cfg, variant):
    """Bind one config to the kernel's arguments and launch; returns y (N, out)."""
    u, v, h, l, g = stacked
    n, n_in = x.shape
    T, out_f, uw = u.shape
    rp, vw = v.shape[1], v.shape[2]
    y = new_buffer(n, out_f, device=x.device, dtype=x.dtype)
    bm = cfg["BM"]
    a = new_buffer(T, n, rp, device=x.device, dtype=torch.float32)
    n_mt = triton.cdiv(n, bm)
    n_rt = triton.cdiv(rp, cfg["BR1"])
    n_nt = triton.cdiv(out_f, cfg["BN"])
    n1, n2 = T * n_mt * n_rt, n_mt * n_nt
    kw = dict(x_ptr=x, u_ptr=u, v_ptr=v, h_ptr=h, l_ptr=l, g_ptr=g,
              bias_ptr=bias if bias is not None else y, y_ptr=y, a_ptr=a,
              # each launch owns its counters, zeroed here in the stream's order: a CUDA graph
              # replayed on any stream, or two replayed at once, never share them
              cnt_ptr=torch.zeros(2, dtype=torch.int32, device=x.device),
              N=n, IN=n_in, OUT=out_f, RP=rp, T=T, UW4=uw // 4, VW4=vw // 4,
              stride_xm=x.stride(0),
              stride_xk=x.stride(1), stride_ym=y.stride(0),
              n_mt1=n_mt, n_rt=n_rt, n_nt=n_nt, n1=n1, n2=n2,
              HAS_BIAS=bias is not None, BM=bm, BK=cfg["BK"], BR1=cfg["BR1"],
              BN=cfg["BN"], BR2=cfg["BR2"],
              MID=mid_mode(x.dtype), **launch_options(cfg))
    launch_kernel(_littlebit_kernel, (n1 + n2,), kw, x.device)
    return y


def littlebit_mm(x, u_words, v_words, h, l, g, bias=None, extra=(), *, variant=None,
                 config=None):
    """Launcher. x (N, in) any strides; per-term lists as in the op; ``extra`` = the stacked layout
    of ``prepare("triton")`` (built here when empty). ``variant`` ("decode" | "prefill") and
    ``config`` force a path and a tile configuration. Returns (N, out) in x's dtype."""
    stacked = tuple(extra) if len(extra) == 5 else stack_terms(u_words, v_words, h, l, g)
    u, v = stacked[0], stacked[1]
    if u.shape[2] % 4 or v.shape[2] % 4:  # a layout not from stack_terms: pad the words
        u = torch.nn.functional.pad(u, (0, -u.shape[2] % 4))
        v = torch.nn.functional.pad(v, (0, -v.shape[2] % 4))
        stacked = (u, v) + tuple(stacked[2:])
    stacked = tuple(t.contiguous() for t in stacked)
    if bias is not None:
        bias = bias.contiguous()
    n = x.shape[0]
    if n == 0:
        return new_buffer(0, stacked[0].shape[1], device=x.device, dtype=x.dtype)
    if variant is None:
        variant = variant_for(n)

    def run(cfg):
        return _launch(x, stacked, bias, cfg, variant)

    if config is not None:
        return run(config)
    u, v = stacked[0], stacked[1]
    key = (variant, n if variant == "decode" else m_key(n), tuple(u.shape), tuple(v.shape),
           x.dtype, str(x.device))
    return tuned("littlebit_mm", key, _SPACE[variant], run, x.device)


def supports(x, u_words, v_words, h, l, g, bias=None):
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return f"dtype {x.dtype} (the Triton kernel takes float16, bfloat16, float32)"
    if len({int(t.shape[0]) for t in h}) != 1:
        return "terms of different out sizes"
    # the stacked layout (prepare("triton")): signs (T, out, ceil(r/32)) and (T, r, ceil(in/32))
    # int32 words, scales (T, out) / (T, r) / (T, in), the fp32 scratch (T, N, r)
    T, n_out, n_in = len(h), int(h[0].shape[0]), x.shape[1]
    rp = max(int(t.shape[0]) for t in l)
    sizes = dict(U_words=T * n_out * (-(-rp // 128) * 4), V_words=T * rp * (-(-n_in // 128) * 4),
                 scales=T * max(n_out, rp, n_in), scratch_rows=T * x.shape[0])
    for name, n in sizes.items():
        if n > 2**31 - 1:
            return (f"the stacked {name} hold {n} elements, more than 2**31 - 1 (the kernel "
                    "addresses them with 32-bit offsets; use backend='torch')")
    return span_reason(x)


register_kernel("littlebit_mm", "triton", littlebit_mm, proven=False, supports=supports,
                note="one launch (ticketed grid barrier); decode GEMV and prefill dot variants")
