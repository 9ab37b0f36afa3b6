"""The "cuda" backend: the kernels of csrc/ through the pybind11 module ``factorkern._C``.

Importing this module imports ``factorkern._C`` (an ImportError is recorded by the dispatcher as
"extension not built") and registers the kernels with ``factorkern.dispatch``. Nothing here
touches the GPU at import time. The glue passes ``data_ptr()`` integers, sizes, strides,
``torch.cuda.current_stream(x.device).cuda_stream`` and x's device index to ``_C``, which makes
that device current for the launch (restored after) and releases the GIL while it runs; the C side
checks everything again and a failing call raises RuntimeError with its message.

What the kernels take (``supports`` gives the reason otherwise, and ``auto`` falls back):
- CUDA tensors, float16 or bfloat16, N <= 16 tokens (decode kernels; prefill goes to Triton or
  the reference). No padding is done: a shape the kernels do not take is refused, never padded.
- dense_sparse_mm: in % 128 == 0 (2:4 values and metadata of S read with 16-byte loads),
  k % 8 == 0. sparse_dense_mm: k % 128 == 0, in % 8 == 0. armor_mm: in % 128 == 0, block sizes
  multiples of 8. littlebit_mm (+ _popcount): in % 128 == 0, at most 4 terms; any rank (the
  prepared layout pads U's words to a multiple of 128 columns with zero words, and the kernel
  writes zeros to the padded part of the intermediate, so padding never contributes).
x is made contiguous (and copied when not 16-byte aligned). All kernels are registered
``proven=False``: ``auto`` does not pick them until their GPU tests have run.
"""

from __future__ import annotations

from typing import Optional

import torch

from .. import _C  # noqa: F401  (ImportError here = extension not built)
from ..dispatch import register_kernel
from ..formats._common import register_layout

MAX_TOKENS = int(_C.MAX_TOKENS)
MAX_TERMS = int(_C.MAX_TERMS)
_DTYPES = {torch.float16: int(_C.FLOAT16), torch.bfloat16: int(_C.BFLOAT16)}


# --- shared checks -----------------------------------------------------------------------------
def _reason_common(x) -> Optional[str]:
    if not x.is_cuda:
        return f"x is on {x.device}; the CUDA kernels need CUDA tensors"
    if x.dtype not in _DTYPES:
        return f"x is {x.dtype}; the CUDA kernels take float16 and bfloat16"
    if x.shape[0] > MAX_TOKENS:
        return (f"{x.shape[0]} tokens: the CUDA kernels are decode kernels for N <= {MAX_TOKENS} "
                "(use backend 'triton' or 'torch' for prefill)")
    return None


def _mult(name: str, value: int, m: int, why: str) -> Optional[str]:
    return None if value % m == 0 else f"{name} = {value} is not a multiple of {m} ({why})"


def _first(*reasons):
    return next((r for r in reasons if r is not None), None)


def _aligned(t: torch.Tensor) -> torch.Tensor:
    t = t.contiguous()
    return t if t.data_ptr() % 16 == 0 else t.clone()


def _ptr(t: Optional[torch.Tensor]) -> int:
    return 0 if t is None else t.data_ptr()


def _check(reason: Optional[str], op: str) -> None:
    if reason is not None:
        raise RuntimeError(f"{op}: the cuda kernel does not take this call: {reason}")


def _output(x, out_features, out):
    if out is None:
        return torch.empty(x.shape[0], out_features, dtype=x.dtype, device=x.device)
    if out.shape != (x.shape[0], out_features) or out.dtype != x.dtype or out.stride(1) != 1:
        raise ValueError(f"out must be ({x.shape[0]}, {out_features}) {x.dtype} with unit "
                         f"column stride, got {tuple(out.shape)} {out.dtype}")
    return out


def _workspace(nbytes: int, device) -> torch.Tensor:
    """nbytes of device memory starting on a 256-byte boundary (torch's CUDA allocator gives
    that already; sliced here so the kernels never depend on it)."""
    buf = torch.empty(max(int(nbytes), 1) + 255, dtype=torch.uint8, device=device)
    return buf[(-buf.data_ptr()) % 256:]


def _stream(device) -> int:
    return torch.cuda.current_stream(device).cuda_stream


def _device(x) -> int:
    """The device _C makes current for the launch (x may be on another device than the current
    one); -1 leaves the current device."""
    return -1 if x.device.index is None else x.device.index


# --- 2:4 family ----------------------------------------------------------------------------------
def dense_sparse_supports(x, D, s_values, s_meta) -> Optional[str]:
    return _first(_reason_common(x),
                  _mult("in", x.shape[1], 128, "16-byte loads of the 2:4 values and metadata"),
                  _mult("k", D.shape[1], 8, "16-byte loads of D"))


def dense_sparse_mm(x, D, s_values, s_meta, bias, extra, out=None):
    """y = (x @ S.T) @ D.T + bias; x (N, in), D (out, k), S (k, in) 2:4. Returns (N, out)."""
    _check(dense_sparse_supports(x, D, s_values, s_meta), "dense_sparse_mm")
    x = _aligned(x)
    bias = None if bias is None else bias.contiguous()  # read element by element
    D, s_values, s_meta = _aligned(D), _aligned(s_values), _aligned(s_meta)
    n, n_in = x.shape
    n_out, k = D.shape
    y = _output(x, n_out, out)
    if n == 0:
        return y
    ws_bytes = _C.dense_sparse_mm_workspace_size(n, n_in, k, n_out)
    ws = _workspace(ws_bytes, x.device)
    _C.dense_sparse_mm(_DTYPES[x.dtype], n, n_in, k, n_out, x.data_ptr(), x.stride(0),
                       D.data_ptr(), s_values.data_ptr(), s_meta.data_ptr(), _ptr(bias),
                       y.data_ptr(), y.stride(0), ws.data_ptr(), ws_bytes, _stream(x.device),
                       _device(x))
    return y


def sparse_dense_supports(x, s_values, s_meta, D) -> Optional[str]:
    return _first(_reason_common(x),
                  _mult("k", D.shape[0], 128, "16-byte loads of the 2:4 values and metadata"),
                  _mult("in", x.shape[1], 8, "16-byte loads of D"))


def sparse_dense_mm(x, s_values, s_meta, D, bias, extra, out=None):
    """y = (x @ D.T) @ S.T + bias; x (N, in), S (out, k) 2:4, D (k, in). Returns (N, out)."""
    _check(sparse_dense_supports(x, s_values, s_meta, D), "sparse_dense_mm")
    x = _aligned(x)
    bias = None if bias is None else bias.contiguous()  # read element by element
    D, s_values, s_meta = _aligned(D), _aligned(s_values), _aligned(s_meta)
    n, n_in = x.shape
    k = D.shape[0]
    n_out = s_values.shape[0]
    y = _output(x, n_out, out)
    if n == 0:
        return y
    ws_bytes = _C.sparse_dense_mm_workspace_size(n, n_in, k, n_out)
    ws = _workspace(ws_bytes, x.device)
    _C.sparse_dense_mm(_DTYPES[x.dtype], n, n_in, k, n_out, x.data_ptr(), x.stride(0),
                       s_values.data_ptr(), s_meta.data_ptr(), D.data_ptr(), _ptr(bias),
                       y.data_ptr(), y.stride(0), ws.data_ptr(), ws_bytes, _stream(x.device),
                       _device(x))
    return y


def armor_supports(x, a_blocks, s_values, s_meta, b_blocks) -> Optional[str]:
    return _first(_reason_common(x),
                  _mult("in", x.shape[1], 128, "16-byte loads of the 2:4 values and metadata"),
                  _mult("A block size", a_blocks.shape[-1], 8, "16-byte loads of the blocks"),
                  _mult("B block size", b_blocks.shape[-1], 8, "16-byte loads of the blocks"))


def armor_mm(x, a_blocks, s_values, s_meta, b_blocks, bias, extra, out=None):
    """y = ((x @ B.T) @ S.T) @ A.T + bias (ARMOR). Returns (N, out)."""
    _check(armor_supports(x, a_blocks, s_values, s_meta, b_blocks), "armor_mm")
    x = _aligned(x)
    bias = None if bias is None else bias.contiguous()  # read element by element
    a_blocks, b_blocks = _aligned(a_blocks), _aligned(b_blocks)
    s_values, s_meta = _aligned(s_values), _aligned(s_meta)
    n, n_in = x.shape
    n_out = s_values.shape[0]
    y = _output(x, n_out, out)
    if n == 0:
        return y
    ws_bytes = _C.armor_mm_workspace_size(n, n_in, n_out)
    ws = _workspace(ws_bytes, x.device)
    _C.armor_mm(_DTYPES[x.dtype], n, n_in, n_out, x.data_ptr(), x.stride(0), a_blocks.data_ptr(),
                a_blocks.shape[-1], s_values.data_ptr(), s_meta.data_ptr(), b_blocks.data_ptr(),
                b_blocks.shape[-1], _ptr(bias), y.data_ptr(), y.stride(0), ws.data_ptr(),
                ws_bytes, _stream(x.device), _device(x))
    return y


# --- LittleBit -----------------------------------------------------------------------------------
def padded_words(words: torch.Tensor) -> torch.Tensor:
    """SignBits words (rows, ceil(cols/32)) -> (rows, 4 * ceil(cols/128)) with zero words
    appended (the kernels read U rows 128 columns at a time with 16-byte loads)."""
    nw = words.shape[1]
    ldu = 4 * (-(-nw // 4))
    if ldu == nw:
        return words.contiguous()
    return torch.nn.functional.pad(words, (0, ldu - nw)).contiguous()


def _littlebit_layout(F) -> tuple:
    """prepare("cuda") of LittleBitFactors: U's words of every term padded (padded_words)."""
    return tuple(padded_words(U.words) for U, V, h, l, g in F.terms)


register_layout("LittleBitFactors", "cuda", _littlebit_layout)


def littlebit_supports(x, u_words, v_words, h, l, g) -> Optional[str]:
    return _first(_reason_common(x),
                  _mult("in", x.shape[1], 128, "16-byte loads of the sign words of V"),
                  None if len(u_words) <= MAX_TERMS else
                  f"{len(u_words)} terms; the kernels take at most {MAX_TERMS}")


def _littlebit(x, u_words, v_words, h, l, g, bias, extra, out, popcount):
    op = "littlebit_mm_popcount" if popcount else "littlebit_mm"
    _check(littlebit_supports(x, u_words, v_words, h, l, g), op)
    x = _aligned(x)
    bias = None if bias is None else bias.contiguous()  # read element by element
    n, n_in = x.shape
    n_out = h[0].shape[0]
    y = _output(x, n_out, out)
    if n == 0:
        return y
    # extra = the prepared layout (padded U words); computed here when called directly.
    u_pad = list(extra) if len(extra) == len(u_words) else [padded_words(w) for w in u_words]
    keep = []  # keep the aligned copies alive until the launch is queued
    terms = []
    for up, vw, ht, lt, gt in zip(u_pad, v_words, h, l, g):
        up, vw, ht, lt, gt = (_aligned(t) for t in (up, vw, ht, lt, gt))
        keep += [up, vw, ht, lt, gt]
        terms.append((up.data_ptr(), vw.data_ptr(), ht.data_ptr(), lt.data_ptr(), gt.data_ptr(),
                      lt.shape[0], up.shape[1]))
    ws_bytes = _C.littlebit_mm_workspace_size(n, n_in, popcount, terms)
    ws = _workspace(ws_bytes, x.device)
    _C.littlebit_mm(_DTYPES[x.dtype], n, n_in, n_out, x.data_ptr(), x.stride(0), terms,
                    _ptr(bias), y.data_ptr(), y.stride(0), ws.data_ptr(), ws_bytes,
                    _stream(x.device), popcount, _device(x))
    return y


def littlebit_mm(x, u_words, v_words, h, l, g, bias, extra, out=None):
    """Exact path: y = sum_t h_t * ((((x * g_t) @ sign(V_t)) * l_t) @ sign(U_t).T) + bias."""
    return _littlebit(x, u_words, v_words, h, l, g, bias, extra, out, popcount=False)


def littlebit_mm_popcount(x, u_words, v_words, h, l, g, bias, extra, out=None):
    """Opt-in popcount path (int8 per-token activations); matches
    ``factorkern.reference.littlebit_quant.littlebit_mm_popcount``."""
    return _littlebit(x, u_words, v_words, h, l, g, bias, extra, out, popcount=True)


_NOTE = "decode kernel (N <= 16), not yet proven on a GPU"
register_kernel("dense_sparse_mm", "cuda", dense_sparse_mm, proven=False,
                supports=dense_sparse_supports, note=_NOTE)
register_kernel("sparse_dense_mm", "cuda", sparse_dense_mm, proven=False,
                supports=sparse_dense_supports, note=_NOTE)
register_kernel("armor_mm", "cuda", armor_mm, proven=False, supports=armor_supports, note=_NOTE)
register_kernel("littlebit_mm", "cuda", littlebit_mm, proven=False, supports=littlebit_supports,
                note=_NOTE)
register_kernel("littlebit_mm_popcount", "cuda", littlebit_mm_popcount, proven=False,
                supports=littlebit_supports, note=_NOTE + "; quantizes activations (opt-in)")
