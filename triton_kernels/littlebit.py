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
The last program to finish resets the counters, so the launch is graph-capturable. The counters
are per (device, stream): concurrent launches on one stream are serialized, as on any stream.

Two variants, chosen by M bucket (forceable through ``config``):
* decode (M <= 16, USE_DOT=False): GEMV-like, CUDA cores. Stage 1: a program owns (term, BR1 ranks)
  and streams x * g over in; stage 2: a program owns BN outputs and keeps the whole r-vector of
  every term on chip (BR2 = r for r <= 256). All products in fp32.
* prefill (USE_DOT=True): tensor cores on unpacked +-1 operands. x * g and a * l are rounded to x's
  dtype as the A operand (a relative 2^-11 (fp16) / 2^-8 (bf16) rounding per element, the same as a
  dense layer's input; the signs stay exact).

Cost per term (useful): FLOPs 2 N r (in + out) (plus 3 scale multiplies). Bytes (minimum):
N (in + out) elements of x's dtype + r (in + out) / 8 sign bytes + (in + out + r) scales
(+ out bias); the a scratch adds 2 N T r * 4 bytes, which stay in L2.
"""

from __future__ import annotations


import torch
import triton
import triton.language as tl

from factorkern.dispatch import register_kernel
from factorkern.formats._common import register_layout

from ._common import interpreting, pick_config


@triton.jit
def _stage1(x_ptr, v_ptr, g_ptr, l_ptr, a_ptr, item, N, IN, RP, VW, stride_xm, stride_xk,
            n_mt, n_rt, BM: tl.constexpr, BR1: tl.constexpr, BK: tl.constexpr,
            USE_DOT: tl.constexpr, PREC: tl.constexpr):
    # item -> (term, m tile, r tile);
    # a[t, m, ri] = l[t, ri] * sum_k x[m, k] g[t, k] sign(V[t, ri, k])
    t = item // (n_mt * n_rt)
    rem = item % (n_mt * n_rt)
    offs_m = (rem // n_rt) * BM + tl.arange(0, BM)
    offs_r = (rem % n_rt) * BR1 + tl.arange(0, BR1)
    m_ok = offs_m < N
    r_ok = offs_r < RP
    offs_k = tl.arange(0, BK)
    dt = x_ptr.dtype.element_ty
    acc = tl.zeros((BM, BR1), dtype=tl.float32)
    for k0 in range(0, IN, BK):
        k = k0 + offs_k
        k_ok = k < IN
        xv = tl.load(x_ptr + offs_m[:, None] * stride_xm + k[None, :] * stride_xk,
                     mask=m_ok[:, None] & k_ok[None, :], other=0.0).to(tl.float32)
        gv = tl.load(g_ptr + t * IN + k, mask=k_ok, other=0.0).to(tl.float32)
        xg = xv * gv[None, :]                                                     # (BM, BK)
        word = tl.load(v_ptr + (t * RP + offs_r[:, None]) * VW + (k[None, :] >> 5),
                       mask=r_ok[:, None] & k_ok[None, :], other=0)               # (BR1, BK)
        bit = ((word >> (k[None, :] & 31)) & 1) != 0
        if USE_DOT:
            one = tl.full((BR1, BK), 1.0, dt)
            sgn = tl.where(bit, one, -one)
            sgn = tl.where(r_ok[:, None] & k_ok[None, :], sgn, tl.zeros_like(sgn))
            acc = tl.dot(xg.to(dt), tl.trans(sgn), acc, input_precision=PREC)
        else:
            # exact sign application in fp32; masked k contribute xg = 0
            xb = tl.broadcast_to(xg[:, None, :], (BM, BR1, BK))
            acc += tl.sum(tl.where(bit[None, :, :], xb, -xb), axis=2)
    lv = tl.load(l_ptr + t * RP + offs_r, mask=r_ok, other=0.0).to(tl.float32)
    acc = acc * lv[None, :]
    tl.store(a_ptr + (t * N + offs_m[:, None]) * RP + offs_r[None, :], acc,
             mask=m_ok[:, None] & r_ok[None, :])


@triton.jit
def _stage2(a_ptr, u_ptr, h_ptr, bias_ptr, y_ptr, item, N, OUT, RP, UW, T, stride_ym, n_nt,
            HAS_BIAS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BR2: tl.constexpr,
            USE_DOT: tl.constexpr, PREC: tl.constexpr):
    # item -> (m tile, n tile); y[m, o] = sum_t h[t, o] sum_ri a[t, m, ri] sign(U[t, o, ri])
    offs_m = (item // n_nt) * BM + tl.arange(0, BM)
    offs_n = (item % n_nt) * BN + tl.arange(0, BN)
    m_ok = offs_m < N
    n_ok = offs_n < OUT
    offs_r = tl.arange(0, BR2)
    dt = y_ptr.dtype.element_ty
    y = tl.zeros((BM, BN), dtype=tl.float32)
    for t in range(0, T):
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for r0 in range(0, RP, BR2):
            ri = r0 + offs_r
            r_ok = ri < RP
            # .cg: read the scratch from L2, never from a possibly stale L1 line
            av = tl.load(a_ptr + (t * N + offs_m[:, None]) * RP + ri[None, :],
                         mask=m_ok[:, None] & r_ok[None, :], other=0.0,
                         cache_modifier=".cg")                                      # (BM, BR2)
            word = tl.load(u_ptr + (t * OUT + offs_n[:, None]) * UW + (ri[None, :] >> 5),
                           mask=n_ok[:, None] & r_ok[None, :], other=0)           # (BN, BR2)
            bit = ((word >> (ri[None, :] & 31)) & 1) != 0
            if USE_DOT:
                one = tl.full((BN, BR2), 1.0, dt)
                sgn = tl.where(bit, one, -one)
                sgn = tl.where(n_ok[:, None] & r_ok[None, :], sgn, tl.zeros_like(sgn))
                acc = tl.dot(av.to(dt), tl.trans(sgn), acc, input_precision=PREC)
            else:
                ab = tl.broadcast_to(av[:, None, :], (BM, BN, BR2))
                acc += tl.sum(tl.where(bit[None, :, :], ab, -ab), axis=2)
        hv = tl.load(h_ptr + t * OUT + offs_n, mask=n_ok, other=0.0).to(tl.float32)
        y += acc * hv[None, :]
    if HAS_BIAS:
        y += tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :], y.to(dt),
             mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def _littlebit_kernel(
    x_ptr, u_ptr, v_ptr, h_ptr, l_ptr, g_ptr, bias_ptr, y_ptr, a_ptr, cnt_ptr,
    N, IN, OUT, RP, T, UW, VW, stride_xm, stride_xk, stride_ym,
    n_mt1, n_rt, n_nt, n1, n2,
    HAS_BIAS: tl.constexpr, USE_DOT: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr,
    BR1: tl.constexpr, BN: tl.constexpr, BR2: tl.constexpr, PREC: tl.constexpr,
):
    # ---- prologue: the role of this program comes from a ticket, not from program_id ---------
    ticket = tl.atomic_add(cnt_ptr, 1)
    if ticket < n1:
        # ---- stage 1 mainloop: a * l for (term, m tile, r tile) -------------------------------
        _stage1(x_ptr, v_ptr, g_ptr, l_ptr, a_ptr, ticket, N, IN, RP, VW, stride_xm, stride_xk,
                n_mt1, n_rt, BM, BR1, BK, USE_DOT, PREC)
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
                n_nt, HAS_BIAS, BM, BN, BR2, USE_DOT, PREC)
    # ---- the last program resets the counters for the next launch ---------------------------
    fin = tl.atomic_add(cnt_ptr + 2, 1)
    if fin == n1 + n2 - 1:
        tl.atomic_xchg(cnt_ptr, 0)
        tl.atomic_xchg(cnt_ptr + 1, 0)
        tl.atomic_xchg(cnt_ptr + 2, 0)


# ---- kernel layout (prepare("triton")): terms stacked, ranks padded --------------------------
def stack_terms(u_words, v_words, h, l, g):
    """Lists of per-term tensors -> (u (T, out, UW), v (T, RP, VW), h (T, out), l (T, RP),
    g (T, in)) with RP = max rank. Padded ranks have l = 0 and zero words, so they add exactly 0."""
    rp = max(int(t.shape[0]) for t in l)
    uw = -(-rp // 32)
    T = len(l)
    u = u_words[0].new_zeros(T, u_words[0].shape[0], uw)
    v = v_words[0].new_zeros(T, rp, v_words[0].shape[1])
    ls = l[0].new_zeros(T, rp)
    for t in range(T):
        u[t, :, :u_words[t].shape[1]] = u_words[t]
        v[t, :v_words[t].shape[0]] = v_words[t]
        ls[t, :l[t].shape[0]] = l[t]
    return u, v, torch.stack(list(h)), ls, torch.stack(list(g))


register_layout("LittleBitFactors", "triton", lambda F: stack_terms(*F.lists()))

# ---- autotune space, keyed by the M bucket ---------------------------------------------------
_SPACE = {
    "decode": [dict(BK=256, BR1=4, BN=32, BR2=256, num_warps=4, num_stages=2),
               dict(BK=512, BR1=8, BN=16, BR2=256, num_warps=4, num_stages=2),
               dict(BK=128, BR1=2, BN=64, BR2=128, num_warps=8, num_stages=2)],
    "prefill": [dict(BM=64, BK=64, BR1=64, BN=128, BR2=64, num_warps=8, num_stages=3),
                dict(BM=128, BK=64, BR1=64, BN=128, BR2=64, num_warps=8, num_stages=3),
                dict(BM=128, BK=32, BR1=128, BN=256, BR2=32, num_warps=8, num_stages=3),
                dict(BM=64, BK=64, BR1=32, BN=64, BR2=64, num_warps=4, num_stages=3)],
}
_INTERPRET_CONFIG = {"decode": dict(BK=32, BR1=8, BN=16, BR2=32, num_warps=4, num_stages=1),
                     "prefill": dict(BM=16, BK=32, BR1=16, BN=16, BR2=32, num_warps=4,
                                     num_stages=1)}
_COUNTERS: dict = {}


def _counters(device):
    key = (str(device), torch.cuda.current_stream(device).cuda_stream if device.type == "cuda"
           else 0)
    c = _COUNTERS.get(key)
    if c is None:
        c = _COUNTERS[key] = torch.zeros(3, dtype=torch.int32, device=device)
    return c


def _launch(x, stacked, bias, cfg, variant):
    u, v, h, l, g = stacked
    n, n_in = x.shape
    T, out_f, uw = u.shape
    rp, vw = v.shape[1], v.shape[2]
    y = torch.empty(n, out_f, device=x.device, dtype=x.dtype)
    if n == 0:
        return y
    use_dot = variant == "prefill"
    bm = cfg["BM"] if use_dot else max(1, triton.next_power_of_2(n))
    a = torch.empty(T, n, rp, device=x.device, dtype=torch.float32)
    n_mt = triton.cdiv(n, bm)
    n_rt = triton.cdiv(rp, cfg["BR1"])
    n_nt = triton.cdiv(out_f, cfg["BN"])
    n1, n2 = T * n_mt * n_rt, n_mt * n_nt
    _littlebit_kernel[(n1 + n2,)](
        x, u, v, h, l, g, bias if bias is not None else y, y, a, _counters(x.device),
        n, n_in, out_f, rp, T, uw, vw, x.stride(0), x.stride(1), y.stride(0),
        n_mt, n_rt, n_nt, n1, n2,
        HAS_BIAS=bias is not None, USE_DOT=use_dot, BM=bm, BK=cfg["BK"], BR1=cfg["BR1"],
        BN=cfg["BN"], BR2=cfg["BR2"],
        PREC="ieee" if x.dtype == torch.float32 else "tf32", num_warps=cfg["num_warps"],
        num_stages=cfg["num_stages"])
    return y


def _tuned_config(x, stacked, bias, variant):
    u, v = stacked[0], stacked[1]
    key = (variant, x.shape[0] if variant == "decode" else 0, tuple(u.shape), tuple(v.shape),
           x.dtype, torch.cuda.get_device_name(x.device))
    return pick_config("littlebit_mm", key, _SPACE[variant],
                       lambda cfg: _launch(x, stacked, bias, cfg, variant))


def littlebit_mm(x, u_words, v_words, h, l, g, bias=None, extra=(), *, variant=None,
                 config=None):
    """Launcher. x (N, in) any strides; per-term lists as in the op; ``extra`` = the stacked layout
    of ``prepare("triton")`` (built here when empty). ``variant`` ("decode" | "prefill") and
    ``config`` force a path and a tile configuration. Returns (N, out) in x's dtype."""
    stacked = tuple(extra) if len(extra) == 5 else stack_terms(u_words, v_words, h, l, g)
    stacked = tuple(t.contiguous() for t in stacked)
    if bias is not None:
        bias = bias.contiguous()
    if variant is None:
        variant = "decode" if x.shape[0] <= 16 else "prefill"
    if config is None:
        config = _INTERPRET_CONFIG[variant] if interpreting() or not x.is_cuda else \
            _tuned_config(x, stacked, bias, variant)
    return _launch(x, stacked, bias, config, variant)


def supports(x, u_words, v_words, h, l, g, bias=None):
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return f"dtype {x.dtype} (the Triton kernel takes float16, bfloat16, float32)"
    if len({int(t.shape[0]) for t in h}) != 1:
        return "terms of different out sizes"
    return None


register_kernel("littlebit_mm", "triton", littlebit_mm, proven=False, supports=supports,
                note="one launch (ticketed grid barrier); decode GEMV and prefill dot variants")
