"""Python glue of the sm_90a 2:4 kernel: availability, argument checks, the call.

The kernel is reached through ``factorkern._C.sm90_sparse_gemm`` when the extension binds it
(same arguments as the C function ``fk_sm90_sparse_gemm``, pointers and the stream as ints, returns
the status; ``_C.sm90_last_error()`` the message), else through a shared library loaded with
``load_library(path)`` (what the GPU tests do after compiling csrc/sm90_sparse with nvcc), else
it reports "not built". Nothing here touches the GPU at import time.

Op-shaped functions (each takes the custom op's arguments, like a dispatch kernel fn, but they
are NOT registered with dispatch: unproven until the GPU checks of README.md pass):
- ``sparse_mm(x, values, meta, cols, bias)``: y = x @ S.T (+ bias), the plain 2:4 core.
- ``armor_mm(x, a_blocks, values, meta, b_blocks, bias)``: B product as one batched cuBLAS pass
  (memory-bound, output in the K-major layout the sparse GEMM reads), then the sparse GEMM with
  the A block product fused in its epilogue.
- ``sparse_dense_mm(x, values, meta, D, bias)``: h = x @ D.T (cuBLAS, (N, k) row-major = the
  K-major operand the sparse GEMM reads, no transpose), then y = h @ S.T + bias.
- ``dense_sparse_mm(x, D, values, meta, bias)``: h = x @ S.T (sparse GEMM), then y = h @ D.T + bias
  (cuBLAS), h in (N, k) row-major, no transpose.
"""

from __future__ import annotations

import ctypes
from typing import Optional

import torch

from ..formats.blockdiag import blockdiag_apply
from .layout import ARMOR_BLOCK, BK, armor_frag, sm90_layout

_LIB = None  # ctypes library from load_library()

STATUS = {0: "success", 1: "invalid value", 2: "unsupported", 3: "CUDA error"}


def load_library(path: str) -> None:
    """Use a shared library built from csrc/sm90_sparse (exports fk_sm90_sparse_gemm)."""
    global _LIB
    lib = ctypes.CDLL(path)
    lib.fk_sm90_sparse_gemm.restype = ctypes.c_int
    lib.fk_sm90_sparse_gemm.argtypes = [
        ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p,
        ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p,
        ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p]
    lib.fk_sm90_last_error.restype = ctypes.c_char_p
    lib.fk_sm90_sparse_available.restype = ctypes.c_int
    _LIB = lib


def _binding():
    """(call, last_error) or None."""
    try:
        from .. import _C  # type: ignore[attr-defined]
    except Exception:
        _C = None
    if _C is not None and hasattr(_C, "sm90_sparse_gemm"):
        return _C.sm90_sparse_gemm, getattr(_C, "sm90_last_error", lambda: "")
    if _LIB is not None:
        return _LIB.fk_sm90_sparse_gemm, lambda: _LIB.fk_sm90_last_error().decode()
    return None


def availability() -> tuple[bool, str]:
    if _binding() is None:
        return False, ("not built: no factorkern._C.sm90_sparse_gemm binding and no library "
                       "loaded with factorkern.cuda_sm90.load_library()")
    if not torch.cuda.is_available():
        return False, "no CUDA device"
    if torch.cuda.get_device_capability() != (9, 0):
        return False, f"needs sm_90 (H100/H200), device is sm_{''.join(map(str, torch.cuda.get_device_capability()))}"
    return True, "sm_90a wgmma.sp kernel (unproven: not in auto dispatch)"


def supports(x: torch.Tensor, m: int, k: int) -> Optional[str]:
    """None if the kernel takes y = x @ S.T for S (m, k), else the reason."""
    ok, why = availability()
    if not ok:
        return why
    if not x.is_cuda:
        return "x is not on a CUDA device"
    if x.dtype not in (torch.float16, torch.bfloat16):
        return f"dtype {x.dtype}: the kernel takes float16/bfloat16"
    if k % 8 or m % 8:
        return f"in and out must be multiples of 8 (16-byte rows), got in={k}, out={m}"
    if x.dim() != 2 or x.stride(1) != 1 or x.stride(0) % 8 or x.data_ptr() % 16:
        return "x must be 2-D with unit column stride, 16-byte aligned rows"
    return None


def _call(x, a, e, kp, m, bias, armor, y):
    b = _binding()
    if b is None:
        raise RuntimeError(availability()[1])
    fn, last_error = b
    n, k = x.shape
    dtype = 1 if x.dtype == torch.bfloat16 else 0
    stream = torch.cuda.current_stream(x.device).cuda_stream
    st = fn(dtype, n, k, m, x.data_ptr(), x.stride(0), a.data_ptr(), e.data_ptr(), kp,
            bias.data_ptr() if bias is not None else None,
            armor.data_ptr() if armor is not None else None, ARMOR_BLOCK,
            y.data_ptr(), y.stride(0), stream)
    if st != 0:
        raise RuntimeError(f"fk_sm90_sparse_gemm: {STATUS.get(st, st)}: {last_error()}")
    return y


def _prep_x(x):
    if x.stride(1) != 1 or x.stride(0) % 8 or x.data_ptr() % 16:
        x = x.contiguous()
    return x


def sparse_mm(x, values, meta, cols, bias=None, layout=None, armor=None, out=None):
    """y = x @ S.T (+ bias) (then @ A.T fused when ``armor`` fragments are given). ``layout`` is
    the prepared (a_frag, e_frag) (computed here when None); ``out`` an optional (N, out) buffer
    with 16-byte aligned rows."""
    m = values.shape[0]
    a, e = layout if layout is not None else sm90_layout(values, meta, cols)
    x = _prep_x(x)
    y = out if out is not None else torch.empty(x.shape[0], m, dtype=x.dtype, device=x.device)
    return _call(x, a, e, -(-cols // BK) * BK, m, bias, armor, y)


def armor_mm(x, a_blocks, values, meta, b_blocks, bias=None, layout=None, a_frag=None):
    xb = blockdiag_apply(x, b_blocks)  # one batched cuBLAS pass, (N, in) row-major
    af = a_frag if a_frag is not None else armor_frag(a_blocks)
    return sparse_mm(xb, values, meta, values.shape[1] * 2, bias, layout, armor=af)


def sparse_dense_mm(x, values, meta, D, bias=None, layout=None):
    h = torch.nn.functional.linear(x, D)
    return sparse_mm(h, values, meta, D.shape[0], bias, layout)


def dense_sparse_mm(x, D, values, meta, bias=None, layout=None):
    h = sparse_mm(x, values, meta, x.shape[1], None, layout)
    return torch.nn.functional.linear(h, D, bias)
