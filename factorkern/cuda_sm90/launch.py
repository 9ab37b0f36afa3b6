"""Python glue of the sm_90a 2:4 kernel: availability, argument checks, the call.

The kernel is reached through a shared library loaded with ``load_library(path)`` (libfactorkern.so
exports ``fk_sm90_sparse_gemm``; the GPU tests may also compile csrc/sm90_sparse with nvcc), else
through ``factorkern._C.sm90_sparse_gemm`` when the extension binds it (the C function's
arguments, pointers and the stream as ints, absent pointers as 0, plus the device to make current
during the launch; returns the status, ``_C.sm90_last_error()`` the message), else it reports
"not built". Every operand's dtype, device and alignment is checked here before the call (the C
side sees only pointers). Nothing here touches the GPU at import time.

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
    """(call, last_error, takes_device) or None. A library loaded with load_library() wins over
    factorkern._C."""
    if _LIB is not None:
        return _LIB.fk_sm90_sparse_gemm, lambda: _LIB.fk_sm90_last_error().decode(), False
    try:
        from .. import _C  # type: ignore[attr-defined]
    except Exception:
        _C = None
    if _C is not None and hasattr(_C, "sm90_sparse_gemm"):
        return _C.sm90_sparse_gemm, getattr(_C, "sm90_last_error", lambda: ""), True
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
    # Static facts only (dispatch asks while torch.compile traces, where there is no data
    # pointer): strides and alignment are the launcher's business (_prep_x copies).
    if x.dim() != 2:
        return f"x must be 2-D (N, in), got {x.dim()}-D"
    return None


_DTYPE_CODE = {torch.float16: 0, torch.bfloat16: 1}


def _stream(device: torch.device) -> int:
    return torch.cuda.current_stream(device).cuda_stream


def _check_operands(x, a, e, m, bias, armor, y) -> None:
    """Everything the C launcher reads as raw memory must have the dtype, shape, device and
    alignment it assumes: the C side sees only pointers, so a wrong dtype there would be read
    as another type, never reported."""
    if x.dtype not in _DTYPE_CODE:
        raise TypeError(f"x is {x.dtype}; the sm_90a kernel takes float16 or bfloat16")

    def same(name, t, dtype=x.dtype):
        if t.dtype != dtype:
            raise TypeError(f"{name} is {t.dtype}, expected {dtype} (x is {x.dtype})")
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device}, x on {x.device}")

    same("the prepared S values (a_frag)", a)
    same("the prepared S metadata (e_frag)", e, torch.int32)
    if armor is not None:
        same("the prepared ARMOR A blocks", armor)
    if bias is not None:
        same("bias", bias)
        if bias.shape != (m,) or not bias.is_contiguous():
            raise ValueError(f"bias must be contiguous of shape ({m},), got {tuple(bias.shape)}")
    same("out", y)
    if y.shape != (x.shape[0], m) or y.stride(1) != 1 or y.stride(0) % 8 or y.data_ptr() % 16:
        raise ValueError(f"out must be ({x.shape[0]}, {m}) with unit column stride and 16-byte "
                         f"aligned rows, got shape {tuple(y.shape)} strides {y.stride()}")
    for name, t in (("a_frag", a), ("e_frag", e), ("ARMOR A blocks", armor)):
        if t is not None and (not t.is_contiguous() or t.data_ptr() % 16):
            raise ValueError(f"{name} must be contiguous and 16-byte aligned")


def _call(x, a, e, kp, m, bias, armor, y):
    _check_operands(x, a, e, m, bias, armor, y)
    b = _binding()
    if b is None:
        raise RuntimeError(availability()[1])
    fn, last_error, _ = b
    n, k = x.shape
    # pybind11 takes integers for the uintptr_t arguments: absent operands are null pointers (0).
    args = (_DTYPE_CODE[x.dtype], n, k, m, x.data_ptr(), x.stride(0), a.data_ptr(), e.data_ptr(),
            kp, 0 if bias is None else bias.data_ptr(), 0 if armor is None else armor.data_ptr(),
            ARMOR_BLOCK, y.data_ptr(), y.stride(0), _stream(x.device))
    if b[2]:  # factorkern._C: also the device to make current during the launch
        st = fn(*args, -1 if x.device.index is None else x.device.index)
    else:  # a ctypes library from load_library(): the caller's current device is used
        st = fn(*args)
    if st != 0:
        raise RuntimeError(f"fk_sm90_sparse_gemm: {STATUS.get(st, st)}: {last_error()}")
    return y


def _prep_x(x):
    """x with unit column stride, rows a multiple of 8 elements apart and a 16-byte aligned start
    (copied otherwise: a contiguous x can still start misaligned, e.g. a slice of a row)."""
    if x.stride(1) != 1 or x.stride(0) % 8:
        x = x.contiguous()
    if x.stride(1) != 1 or x.stride(0) % 8 or x.data_ptr() % 16:
        x = x.clone(memory_format=torch.contiguous_format)
    return x


def sparse_mm(x, values, meta, cols, bias=None, layout=None, armor=None, out=None):
    """y = x @ S.T (+ bias) (then @ A.T fused when ``armor`` fragments are given). ``layout`` is
    the prepared (a_frag, e_frag) (computed here when None); ``out`` an optional (N, out) buffer
    with 16-byte aligned rows."""
    if x.dim() != 2:
        raise ValueError(f"x must be 2-D (N, in), got shape {tuple(x.shape)}")
    m = values.shape[0]
    a, e = layout if layout is not None else sm90_layout(values, meta, cols)
    x = _prep_x(x)
    bias = None if bias is None else bias.contiguous()
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
