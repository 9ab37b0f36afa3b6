"""Helpers shared by the Triton kernel families: the M bucket (decode vs prefill), autotune-config
builders, the test override that forces a variant or a config, the autotuned launcher, dtype
checks, and the small ``@triton.jit`` tile loaders (dense tiles with any strides, 2:4 tiles
decompressed in registers from the canonical Sparse24 layout).

Kept small and stable: other family modules import from here.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from typing import Callable, Iterable, Optional

import torch
import triton
import triton.language as tl

# Decode = at most this many rows of x: the kernels are bound by the bytes of the factors.
DECODE_MAX_M = 16

KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

# Offsets into factors (and along a row of x) are 32-bit in the kernels: every factor must span
# at most this many elements. Row offsets of x, y and the workspaces are 64-bit (``row_ptrs``).
_MAX_SPAN = 2**31 - 1


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def m_bucket(m: int) -> str:
    """"decode" for M <= DECODE_MAX_M rows, else "prefill"."""
    return "decode" if m <= DECODE_MAX_M else "prefill"


def m_key(m: int) -> int:
    """Autotune key for M: the next power of two (capped), so each M does not retune."""
    return min(triton.next_power_of_2(max(int(m), 1)), 8192)


# ---------------------------------------------------------------------------------------------
# Test override: force a variant (decode/prefill) and/or a config for every launch in a block.
# ---------------------------------------------------------------------------------------------
EACH = "each"


class EachRun(list):
    """What ``force(config=EACH)`` collects: one (name, config, output) per config run."""


_FORCE: dict = {"variant": None, "config": None, "poison": False, "each": None}


@contextlib.contextmanager
def force(variant: Optional[str] = None, config=None, poison: bool = False):
    """``with force("decode"):`` runs every kernel of this package in its decode variant (or
    "prefill"), whatever M is; ``config={...}`` runs that config (a dict like the entries of the
    kernel's autotune space) instead of the tuned one; ``config=EACH`` runs every config of the
    space, through the same binding and launch code a GPU uses, and the block's value collects
    (kernel name, config, output) per run; ``poison=True`` fills outputs and workspaces with NaN
    before each launch, so an element a kernel forgets to write shows. Meant for tests that must
    cover every path."""
    if variant not in (None, "decode", "prefill"):
        raise ValueError(f"variant must be None, 'decode' or 'prefill', got {variant!r}")
    if not (config is None or config == EACH or isinstance(config, dict)):
        raise ValueError(f"config must be None, a dict or EACH, got {config!r}")
    old = dict(_FORCE)
    runs = EachRun()
    _FORCE.update(variant=variant, config=config, poison=poison,
                  each=runs if config == EACH else None)
    try:
        yield runs
    finally:
        _FORCE.update(old)


def variant_for(m: int) -> str:
    return _FORCE["variant"] or m_bucket(m)


def new_buffer(*shape, dtype, device) -> torch.Tensor:
    """torch.empty, NaN-filled under ``force(poison=True)``."""
    out = torch.empty(*shape, dtype=dtype, device=device)
    if _FORCE["poison"]:
        out.fill_(float("nan"))
    return out


# ---------------------------------------------------------------------------------------------
# Autotune spaces, the tuner and the one launch path
# ---------------------------------------------------------------------------------------------
def product_configs(axes: dict, warps: Iterable[int] = (4,), stages: Iterable[int] = (3,),
                    keep: Optional[Callable[[dict], bool]] = None) -> list:
    """Every combination of the meta-parameter ``axes`` ({name: [values]}) x warps x stages, as
    config dicts (meta-parameters plus ``num_warps`` and ``num_stages``), filtered by
    ``keep(meta)``. The first entry of a space is its default (see ``tuned``)."""
    names = list(axes)
    out = []
    for vals in itertools.product(*(axes[n] for n in names)):
        meta = dict(zip(names, vals))
        if keep is not None and not keep(meta):
            continue
        for w, s in itertools.product(warps, stages):
            out.append(dict(meta, num_warps=w, num_stages=s))
    return out


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of ``device`` (132 on an H100 SXM; used elsewhere)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 132


def launch_options(cfg: dict) -> dict:
    """The launch options (num_warps, num_stages) of a config dict."""
    return {k: cfg[k] for k in ("num_warps", "num_stages") if k in cfg}


def device_guard(device: torch.device):
    """Make ``device`` (x's GPU) the current device for a launch: Triton launches on the current
    device and its current stream, so without it x on cuda:1 while cuda:0 is current would run
    on the wrong GPU."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


# Compile-only mode (the compile audit): ``launch_kernel`` records the launch instead of running
# it. Set by ``_compile.recording()``; None otherwise.
_RECORDER: Optional[Callable] = None


def launch_kernel(kernel, grid: tuple, kwargs: dict, device: torch.device) -> None:
    """The one place every kernel of this package is launched: on the GPU (as the current device
    ``device``), in Triton's interpreter, or, inside ``_compile.recording()``, compiled for sm_90a
    with the same arguments and recorded instead of run."""
    if _RECORDER is not None:
        _RECORDER(kernel, grid, kwargs)
        return
    with device_guard(device):
        kernel[grid](**kwargs)


_PICKED: dict = {}


def _in_capture_or_compile() -> bool:
    """True while a CUDA graph is being captured on the current stream or torch.compile traces:
    no benchmarking then (do_bench synchronizes and allocates, which capture forbids)."""
    try:
        if torch.compiler.is_compiling():
            return True
    except AttributeError:  # older torch
        pass
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def _is_resource_error(e: BaseException) -> bool:
    from triton.runtime.errors import OutOfResources

    return isinstance(e, OutOfResources)


def tuned(name: str, key: tuple, configs: list, run: Callable[[dict], torch.Tensor],
          device: torch.device) -> torch.Tensor:
    """Pick a config of ``configs`` for ``key`` and return ``run(config)``, the launcher's output.

    ``run(cfg)`` binds one config to the kernel's arguments (grid, derived meta-parameters,
    fresh output, workspaces and counters) and launches through ``launch_kernel``: the same code
    on a GPU, in the interpreter and in the compile audit. Selection:

    * a config forced by a test (``force(config=...)``) is used as given; ``force(config=EACH)``
      runs every config of the space (the launch replay and the compile audit);
    * a winner cached for ``key`` is reused;
    * in the interpreter, and while a CUDA graph is captured or torch.compile traces, nothing
      is timed: the first config of the space (its default, which the compile audit proves fits
      every shape class the kernel's ``supports`` accepts) runs, falling back to the next one
      only when Triton reports that a config exceeds the device's resources; nothing is cached,
      so a later eager call still tunes;
    * otherwise every config is timed with ``triton.testing.do_bench``; a config that exceeds
      the device's resources (Triton's OutOfResources) is skipped, and every other error (a
      CUDA error, a compile bug) propagates. The winner is cached per ``key``.
    """
    with device_guard(device):
        return _tuned(name, key, configs, run, device)


def _tuned(name, key, configs, run, device):
    forced = _FORCE["config"]
    if forced == EACH:
        seen = []
        for cfg in configs:
            meta = cfg if not interpreting() else {k: v for k, v in cfg.items()
                                                   if k not in ("num_warps", "num_stages")}
            if meta in seen:  # the interpreter ignores warps and stages
                continue
            seen.append(meta)
            y = run(cfg)
            if _FORCE["each"] is not None:
                _FORCE["each"].append((name, cfg, y))
        return y
    if forced is not None:
        return run(forced)
    full = (name,) + tuple(key)
    if full in _PICKED:
        return run(_PICKED[full])
    if interpreting() or device.type != "cuda" or _in_capture_or_compile():
        return _first_that_fits(name, configs, run)
    import triton.testing

    best = None
    for cfg in configs:
        try:
            ms = triton.testing.do_bench(lambda: run(cfg))
        except Exception as e:
            if _is_resource_error(e):  # this config does not fit this GPU: skip it
                continue
            raise
        if best is None or ms < best[0]:
            best = (ms, cfg)
    if best is None:
        raise RuntimeError(f"{name} (triton): no config of the autotune space fits this GPU's "
                           f"resources for key {key}")
    _PICKED[full] = best[1]
    return run(best[1])


def _first_that_fits(name, configs, run):
    for cfg in configs:
        try:
            return run(cfg)
        except Exception as e:
            if not _is_resource_error(e):
                raise
    raise RuntimeError(f"{name} (triton): no config of the autotune space fits this GPU's "
                       "resources")


# ---------------------------------------------------------------------------------------------
# Argument checks shared by the ``supports`` functions
# ---------------------------------------------------------------------------------------------
def dtype_reason(x: torch.Tensor) -> Optional[str]:
    if x.dtype not in KERNEL_DTYPES:
        return (f"the triton kernels take float16, bfloat16 and float32, not {x.dtype} "
                "(use backend='torch')")
    return None


def span(t: torch.Tensor) -> int:
    """Elements between a tensor's first and last addressed element, plus one: what 32-bit
    offsets into it must reach (a strided view can span far more than its numel)."""
    if t.numel() == 0:
        return 0
    return 1 + sum((n - 1) * abs(st) for n, st in zip(t.shape, t.stride()))


def span_reason(x: torch.Tensor, **factors) -> Optional[str]:
    """Why 32-bit offsets cannot address this call, or None. Factors (the keyword tensors, by
    name) must span fewer than 2**31 elements, and so must one row of x (its columns); rows of
    x, y and the workspaces use 64-bit offsets, so M is not limited."""
    for name, t in factors.items():
        if t is not None and span(t) > _MAX_SPAN:
            return (f"{name} of shape {tuple(t.shape)} and strides {tuple(t.stride())} spans "
                    f"{span(t)} elements, more than 2**31 - 1 (the kernels address factors "
                    "with 32-bit offsets; use backend='torch')")
    if x.dim() == 2 and x.shape[1] > 0 and (x.shape[1] - 1) * abs(x.stride(1)) >= _MAX_SPAN:
        return (f"a row of x spans {(x.shape[1] - 1) * abs(x.stride(1)) + 1} elements (stride "
                f"{x.stride(1)} between features), more than 2**31 - 1; make x contiguous")
    return None


# ---------------------------------------------------------------------------------------------
# Tile loaders (device functions)
# ---------------------------------------------------------------------------------------------
@triton.jit
def row_ptrs(ptr, rows, stride):
    """Pointers to the rows ``rows`` of a matrix: ptr + rows * stride with 64-bit offsets. Used for
    x, y and the workspaces, whose row offsets (M * stride) pass 2**31 for long prefills (e.g.
    M >= 74,899 rows of a 28672-wide output); factor offsets stay 32-bit (``span_reason``)."""
    return ptr + rows.to(tl.int64) * stride


@triton.jit
def load_rows(rptr, rows, cols, stride_c, n_rows, n_cols):
    """Tile [rows, cols] from row pointers ``rptr`` (R,) (see ``row_ptrs``); zero outside."""
    mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    return tl.load(rptr[:, None] + cols[None, :] * stride_c, mask=mask, other=0.0)  # sass: 128


@triton.jit
def load_tile(ptr, rows, cols, stride_r, stride_c, n_rows, n_cols):
    """Dense factor tile ptr[rows, cols] (rows: (R,), cols: (C,) indices); zero outside."""
    mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    return tl.load(ptr + rows[:, None] * stride_r + cols[None, :] * stride_c,  # sass: 128
                   mask=mask, other=0.0)


@triton.jit
def load_s24_tile(v_ptr, m_ptr, rows, c0, stride_vr, stride_vc, stride_mr, stride_mc,
                  n_rows, n_cols, n_words, BC: tl.constexpr):
    """Dense tile S[rows, c0 : c0 + BC] of a Sparse24 matrix (rows: (R,) indices; BC a multiple
    of 16, c0 a multiple of BC), decompressed in registers from the canonical layout: values
    (rows, cols/2) and int16 meta (n_words = ceil(cols / 16) words per row, passed rather than
    computed so that the JIT's divisibility of it lets the meta loads vectorize), one nibble per
    group of 4 columns, 4 nibbles per word, low 2 bits = index of the first kept element, high
    2 bits = the second.

    The values (R, BC/2) and meta words (R, BC/16) are read as contiguous tiles (vector loads
    when their column stride is 1: 128-bit for the values; 64-bit for the meta words, 128-bit
    when a thread's share of the tile holds 8 words, i.e. BC >= 128 and R * BC >= 4096 * warps),
    then expanded: each group's two values go to the positions its nibble names. Zero outside
    the matrix and at pruned positions. Nibbles of groups past the last column (the padding of
    the last meta word when cols is not a multiple of 16) are masked by group index, so whatever
    they hold changes nothing and addresses nothing.
    """
    R: tl.constexpr = rows.shape[0]
    W: tl.constexpr = BC // 16  # meta words per row of the tile; each covers 16 columns
    r_ok = rows < n_rows
    # values as (R, W, 8): the 8 kept values of the 4 groups of word w (contiguous)
    # c0 is a multiple of BC (callers step by BC): say so, or the loads are not vectorized
    vc = tl.multiple_of(c0 // 2, BC // 2) + tl.arange(0, BC // 2)
    vals = tl.load(v_ptr + rows[:, None] * stride_vr + vc[None, :] * stride_vc,  # sass: 128
                   mask=r_ok[:, None] & (vc < n_cols // 2)[None, :], other=0.0)
    wc = tl.multiple_of(c0 // 16, W) + tl.arange(0, W)
    words = tl.load(m_ptr + rows[:, None] * stride_mr + wc[None, :] * stride_mc,  # sass: 64
                    mask=r_ok[:, None] & (wc < n_words)[None, :], other=0)
    # nibble of group (w, gg), gg = 0..3: bits 4 gg .. 4 gg + 3 of word w (int16 -> int32
    # sign-extends; the fields we read lie in bits 0..15). Groups past the last column (the
    # padding nibbles of the last word) are masked by group index.
    gg = tl.arange(0, 4)
    nib = (words.to(tl.int32)[:, :, None] >> (4 * gg)[None, None, :]) & 0xF      # (R, W, 4)
    grp = (c0 // 4 + tl.arange(0, W)[:, None] * 4 + gg[None, :])                 # (W, 4)
    nib = tl.where((grp < n_cols // 4)[None, :, :], nib, 0)
    v0, v1 = tl.split(tl.reshape(vals, (R, W, 4, 2)))                           # (R, W, 4)
    pos = tl.arange(0, 4)[None, None, None, :]
    zero = tl.zeros((R, W, 4, 4), dtype=vals.dtype)
    dense = tl.where(pos == (nib & 3)[:, :, :, None], v0[:, :, :, None],
                     tl.where(pos == (nib >> 2)[:, :, :, None], v1[:, :, :, None], zero))
    return tl.reshape(dense, (R, BC))


@triton.jit
def dot_acc(a, b, acc, IEEE: tl.constexpr):
    """acc + a @ b with fp32 accumulation; IEEE (fp32 inputs) avoids tf32 rounding."""
    if IEEE:
        return tl.dot(a, b, acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc)


@triton.jit
def mid_dot(t, b, acc, MID: tl.constexpr):
    """acc + t @ b, t an fp32 intermediate (the product of x with a first factor; 2-D, or 3-D
    batched), b a factor tile in x's dtype. t is never rounded into fp16's range (65504), which
    unbalanced factor scales or outlier activations exceed where the result itself is finite:

    * MID = "ieee" (fp32 x): fp32 product.
    * MID = "f16s" (fp16 x): each row of t is scaled by a power of two 2^-e that brings its
      largest entry under 2^14, rounded to fp16 (its precision, now without overflow), multiplied
      by b on the fp16 tensor cores, and the row of the product scaled back by 2^e. Scaling by
      a power of two is exact; e = 0 for rows already in range, so t keeps fp16's rounding.
    * MID = "bf16" (bf16 x): t rounded to bf16, whose range is fp32's.
    """
    if MID == "ieee":
        return tl.dot(t, b.to(tl.float32), acc, input_precision="ieee")
    elif MID == "f16s":
        amax = tl.max(tl.abs(t), axis=len(t.shape) - 1, keep_dims=True)
        # rows under 2^14 (amax < 1 included) keep e = 0; inf/NaN rows stay inf/NaN
        e = tl.maximum(tl.ceil(tl.log2(tl.maximum(amax, 1.0))) - 14.0, 0.0)
        p = tl.dot((t * tl.exp2(-e)).to(tl.float16), b)
        return acc + p * tl.exp2(e)
    else:
        return tl.dot(t.to(b.dtype), b, acc)


def mid_mode(dtype: torch.dtype) -> str:
    """The MID constexpr of ``mid_dot`` for x's dtype."""
    return {torch.float32: "ieee", torch.float16: "f16s", torch.bfloat16: "bf16"}[dtype]


@triton.jit
def store_output(acc, y_ptr, b_ptr, rm, rn, M, N, s_ym, s_yn, s_b, HAS_BIAS: tl.constexpr):
    """Epilogue: y[rm, rn] = acc (+ bias[rn]) cast to y's dtype, masked to the matrix."""
    if HAS_BIAS:
        acc += tl.load(b_ptr + rn * s_b, mask=rn < N, other=0.0).to(tl.float32)[None, :]
    mask = (rm[:, None] < M) & (rn[None, :] < N)
    tl.store(row_ptrs(y_ptr, rm, s_ym)[:, None] + rn[None, :] * s_yn,
             acc.to(y_ptr.dtype.element_ty), mask=mask)
