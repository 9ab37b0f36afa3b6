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

# Pointer arithmetic in the kernels is int32: every tensor must have fewer elements than this.
_MAX_NUMEL = 2**31 - 1


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
_FORCE: dict = {"variant": None, "config": None, "poison": False}


@contextlib.contextmanager
def force(variant: Optional[str] = None, config: Optional[dict] = None, poison: bool = False):
    """``with force("decode"):`` runs every kernel of this package in its decode variant (or
    "prefill"), whatever M is; ``config={...}`` replaces the autotuned meta-parameters (keys the
    kernel does not take are ignored); ``poison=True`` fills outputs and workspaces with NaN
    before each launch, so an element a kernel forgets to write shows. Meant for tests that must
    cover every path."""
    if variant not in (None, "decode", "prefill"):
        raise ValueError(f"variant must be None, 'decode' or 'prefill', got {variant!r}")
    old = dict(_FORCE)
    _FORCE.update(variant=variant, config=config, poison=poison)
    try:
        yield
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
# Autotune spaces and the launcher
# ---------------------------------------------------------------------------------------------
def product_configs(axes: dict, warps: Iterable[int] = (4,), stages: Iterable[int] = (3,),
                    keep: Optional[Callable[[dict], bool]] = None) -> list:
    """Every combination of the meta-parameter ``axes`` ({name: [values]}) x warps x stages, as
    triton.Config, filtered by ``keep(meta)``."""
    names = list(axes)
    out = []
    for vals in itertools.product(*(axes[n] for n in names)):
        meta = dict(zip(names, vals))
        if keep is not None and not keep(meta):
            continue
        for w, s in itertools.product(warps, stages):
            out.append(triton.Config(dict(meta), num_warps=w, num_stages=s))
    return out


_AUTOTUNED: dict = {}


def launch(kernel, grid: Callable[[dict], tuple], args: dict, *, tag: tuple, configs: list,
           small: dict, key: list, reset_to_zero: Optional[list] = None) -> None:
    """Launch ``kernel`` with keyword ``args``.

    On a GPU the launch is autotuned over ``configs`` (the autotuner is built once per ``tag``
    and caches winners per ``key``). In the interpreter, or when a test forces a config, it runs
    the single config ``small`` (updated with the forced one) so tests stay fast.
    ``reset_to_zero`` names buffers (e.g. phase counters) that must be zero before every
    benchmarking run of the autotuner.
    """
    forced = _FORCE["config"]
    if interpreting() or forced is not None:
        meta = dict(small)
        if forced:
            meta.update({k: v for k, v in forced.items() if k in small or k in
                         ("num_warps", "num_stages")})
        run = {k: v for k, v in meta.items() if k not in ("num_warps", "num_stages")}
        opts = {} if interpreting() else {k: meta[k] for k in ("num_warps", "num_stages")
                                          if k in meta}
        kernel[grid(run)](**args, **run, **opts)
        return
    fn = _AUTOTUNED.get(tag)
    if fn is None:
        fn = triton.autotune(configs=configs, key=key, reset_to_zero=reset_to_zero)(kernel)
        _AUTOTUNED[tag] = fn
    fn[grid](**args)


_PICKED: dict = {}


def pick_config(name: str, key: tuple, configs: list, run: Callable[[dict], object]) -> dict:
    """Hand-rolled autotuning for launchers whose configs change the grid and the derived
    arguments (so ``triton.autotune`` does not fit): time ``run(cfg)`` for every config with
    ``triton.testing.do_bench``, skip configs that fail to compile for this shape (resources),
    cache the winner per ``key`` (which should hold the M bucket, shapes, dtype, GPU name)."""
    full = (name,) + tuple(key)
    if full not in _PICKED:
        best = None
        for cfg in configs:
            try:
                ms = triton.testing.do_bench(lambda: run(cfg))
            except Exception:  # a config that does not compile for this shape (resources)
                continue
            if best is None or ms < best[0]:
                best = (ms, cfg)
        if best is None:
            raise RuntimeError(f"{name} (triton): no config of the autotune space compiles")
        _PICKED[full] = best[1]
    return _PICKED[full]


def compile_only(kernel, constexprs: dict, pointer_types: dict, arch: int = 90,
                 num_warps: int = 4, num_stages: int = 3):
    """Compile ``kernel`` for an NVIDIA target (sm_<arch>) without a GPU and without launching
    it: CI's check that the GPU lowering works (e.g. the bf16 paths the interpreter cannot run).
    ``pointer_types`` maps pointer arguments to Triton types ("fp16", "i16", ...); the other
    non-constexpr arguments are taken as i32. Needs TRITON_INTERPRET unset when the kernel's
    module was imported (under the interpreter, ``triton.jit`` makes interpreted functions);
    see ``compile_only_subprocess``."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sig = {}
    for name in kernel.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in pointer_types:
            sig[name] = "*" + pointer_types[name]
        else:
            sig[name] = "i32"
    return triton.compile(ASTSource(kernel, sig, constexprs), target=GPUTarget("cuda", arch, 32),
                          options=dict(num_warps=num_warps, num_stages=num_stages))


def compile_only_subprocess(module: str, variants: list, timeout: float = 600):
    """Run ``compile_only`` in one fresh Python without TRITON_INTERPRET for every
    (kernel name, constexprs, pointer_types) in ``variants``, kernels of ``module``; raises
    RuntimeError with the compiler's message on failure."""
    import json
    import subprocess
    import sys

    code = ("import json, sys, importlib\n"
            "from factorkern.triton_kernels._common import compile_only\n"
            f"mod = importlib.import_module({module!r})\n"
            "for name, consts, ptrs in json.loads(sys.stdin.read()):\n"
            "    compile_only(getattr(mod, name), consts, ptrs)\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-c", code], input=json.dumps(variants), env=env,
                       capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"compiling kernels of {module} for sm_90 failed:\n"
                           f"{r.stderr[-4000:]}")


# ---------------------------------------------------------------------------------------------
# Argument checks shared by the ``supports`` functions
# ---------------------------------------------------------------------------------------------
def dtype_reason(x: torch.Tensor) -> Optional[str]:
    if x.dtype not in KERNEL_DTYPES:
        return (f"the triton kernels take float16, bfloat16 and float32, not {x.dtype} "
                "(use backend='torch')")
    return None


def size_reason(*tensors) -> Optional[str]:
    for t in tensors:
        if t is not None and t.numel() > _MAX_NUMEL:
            return (f"a tensor of shape {tuple(t.shape)} has more than 2**31 - 1 elements "
                    "(the kernels index with int32)")
    return None


# ---------------------------------------------------------------------------------------------
# Tile loaders (device functions)
# ---------------------------------------------------------------------------------------------
@triton.jit
def load_tile(ptr, rows, cols, stride_r, stride_c, n_rows, n_cols):
    """Dense tile ptr[rows, cols] (rows: (R,), cols: (C,) indices); zero outside the matrix."""
    mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    return tl.load(ptr + rows[:, None] * stride_r + cols[None, :] * stride_c, mask=mask,
                   other=0.0)


@triton.jit
def load_s24_tile(v_ptr, m_ptr, rows, cols, stride_vr, stride_vc, stride_mr, stride_mc,
                  n_rows, n_cols):
    """Dense tile S[rows, cols] of a Sparse24 matrix, decompressed in registers from the
    canonical layout (values (rows, cols/2); int16 meta, one nibble per group of 4 columns, 4
    nibbles per word, low 2 bits = first kept index, high 2 bits = second).

    Each dense position loads the kept value it holds, masked to the positions that hold one, so
    every value and meta word is read from memory once per tile (duplicate addresses of a word
    are served by the same cache line); zero outside the matrix and at pruned positions.
    """
    g = cols // 4
    pos = cols % 4
    mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    word = tl.load(m_ptr + rows[:, None] * stride_mr + (cols // 16)[None, :] * stride_mc,
                   mask=mask, other=0).to(tl.int32)
    # int16 -> int32 sign-extends; bits 0..15 keep the word, and we only read those.
    nib = (word >> (4 * (g % 4))[None, :]) & 0xF
    vptr = v_ptr + rows[:, None] * stride_vr + (2 * g)[None, :] * stride_vc
    first = tl.load(vptr, mask=mask & (pos[None, :] == (nib & 3)), other=0.0)
    second = tl.load(vptr + stride_vc, mask=mask & (pos[None, :] == (nib >> 2)), other=0.0)
    # idx0 < idx1, so at most one of the two is nonzero at any position: the sum is exact.
    return first + second


@triton.jit
def dot_acc(a, b, acc, IEEE: tl.constexpr):
    """acc + a @ b with fp32 accumulation; IEEE (fp32 inputs) avoids tf32 rounding."""
    if IEEE:
        return tl.dot(a, b, acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc)


@triton.jit
def store_output(acc, y_ptr, b_ptr, rm, rn, M, N, s_ym, s_yn, s_b, HAS_BIAS: tl.constexpr):
    """Epilogue: y[rm, rn] = acc (+ bias[rn]) cast to y's dtype, masked to the matrix."""
    if HAS_BIAS:
        acc += tl.load(b_ptr + rn * s_b, mask=rn < N, other=0.0).to(tl.float32)[None, :]
    mask = (rm[:, None] < M) & (rn[None, :] < N)
    tl.store(y_ptr + rm[:, None] * s_ym + rn[None, :] * s_yn,
             acc.to(y_ptr.dtype.element_ty), mask=mask)
