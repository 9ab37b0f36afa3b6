"""The op registry: public functions, their ``factorkern::<op>`` custom ops, fake impls and
autograd. No math here: validate (errors name the argument), dispatch, call.

Every public op computes ``y = x @ W.T (+ bias)`` like ``F.linear``: x is (..., in), y is
(..., out) in x's dtype, W (out, in) is never built. The custom op receives x flattened to
(N, in), the backend string ``dispatch.resolve`` chose (for the library path, the layout key of
``factorkern.library``) and that backend's prepared layout; the backward runs on the library
path (``factorkern.library``) whatever backend ran the forward. Users' reference: docs/ops.md.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import dispatch as _dispatch
from . import layouts as _layouts
from . import library as _library
from ._checks import check_bias, check_device, check_format, check_in, check_like, check_x
from .formats import BlockDiag, LittleBitFactors, MonarchFactors, Sparse24

__all__ = ["dense_sparse_mm", "sparse_dense_mm", "armor_mm", "littlebit_mm", "monarch_mm",
           "lowrank_mm", "sparse_mm"]


def _call(op: str, x: Tensor, out_features: int, backend: str, fmt_for_layout, *args):
    """Flatten x, resolve the backend, fetch the prepared layout, call the custom op."""
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    name = _dispatch.resolve(op, backend, x2, *args[:-1])
    if _library.is_library(name):
        name = _library.layout_key(op, fmt_for_layout)
    extra = []
    if fmt_for_layout is not None:
        if not torch.compiler.is_compiling():
            # Re-validate the format's index/bit tensors if they changed in place, on every
            # backend (a storage/version lookup when they did not).
            fmt_for_layout.check_unchanged()
        extra = list(_layouts.prepared(fmt_for_layout, name))
    y = getattr(torch.ops.factorkern, op)(x2, *args, name, extra)
    return y.reshape(*lead, out_features)


def _flatten(args):
    """The tensors among a custom op's arguments (tensors, tensor lists, None, ints) and a spec
    to put the arguments back together."""
    tensors, spec = [], []
    for a in args:
        if isinstance(a, Tensor):
            spec.append(("tensor",))
            tensors.append(a)
        elif isinstance(a, (list, tuple)):
            spec.append(("list", len(a)))
            tensors += list(a)
        else:
            spec.append(("value", a))
    return tensors, spec


def _unflatten(spec, tensors):
    out, i = [], 0
    for s in spec:
        if s[0] == "tensor":
            out.append(tensors[i])
            i += 1
        elif s[0] == "list":
            out.append(list(tensors[i:i + s[1]]))
            i += s[1]
        else:
            out.append(s[1])
    return out


def _register_autograd(custom_op, op: str) -> None:
    """The op's autograd: the library path's backward (``factorkern.library.backward``), given
    the op's arguments, the forward's layout when the library path ran it, and
    ``needs_input_grad`` (gradients nobody needs are not computed)."""
    def setup(ctx, inputs, output):
        *args, backend, extra = inputs
        ctx.backend = backend
        keep = list(extra) if _library.is_library(backend) else []
        tensors, ctx.spec = _flatten(args)
        ctx.n_extra, ctx.n_keep = len(extra), len(keep)
        ctx.save_for_backward(*tensors, *keep)

    def backward(ctx, gy):
        saved = ctx.saved_tensors
        n = len(saved) - ctx.n_keep
        args = _unflatten(ctx.spec, saved[:n])
        grads = _library.backward(op, ctx.backend)(gy, *args, list(saved[n:]),
                                                   ctx.needs_input_grad)
        # register_autograd wants the gradient of a Tensor[] input as a list of the same length.
        return (*grads, None, [None] * ctx.n_extra)

    custom_op.register_autograd(backward, setup_context=setup)


# ---------------------------------------------------------------------------------------------
# dense_sparse_mm: W = D @ S
# ---------------------------------------------------------------------------------------------
@torch.library.custom_op("factorkern::dense_sparse_mm", mutates_args=())
def _dense_sparse_mm(x: Tensor, D: Tensor, s_values: Tensor, s_meta: Tensor,
                     bias: Optional[Tensor], backend: str, extra: list[Tensor]) -> Tensor:
    return _dispatch.kernel("dense_sparse_mm", backend)(x, D, s_values, s_meta, bias, extra)


@_dense_sparse_mm.register_fake
def _(x, D, s_values, s_meta, bias, backend, extra):
    return x.new_empty(x.shape[0], D.shape[0])


_register_autograd(_dense_sparse_mm, "dense_sparse_mm")


def dense_sparse_mm(x: Tensor, D: Tensor, S: Sparse24, bias: Optional[Tensor] = None,
                    backend: str = "auto") -> Tensor:
    """y = x @ (D @ S).T + bias, computed as (x @ S.T) @ D.T (DSFormer, sparse factor first).

    Args:
        x: (..., in) float16/bfloat16/float32/float64.
        D: (out, k) dense, x's dtype.
        S: Sparse24 of shape (k, in), 2:4 along in; values in x's dtype.
        bias: optional (out,).
        backend: "auto" | "torch" | "triton" | "cuda" | "cuda_sm90" (case-insensitive; see
            ``factorkern.backends()`` and docs/dispatch.md).
    Returns:
        (..., out) in x's dtype.
    """
    op = "dense_sparse_mm"
    check_x(op, x)
    check_format(op, "S", S, Sparse24)
    k, n_in = S.shape
    check_in(op, x, n_in, f"S of shape {S.shape}")
    if not isinstance(D, Tensor) or D.dim() != 2 or D.shape[1] != k:
        raise ValueError(f"{op}: D must be (out, k) with k = S.shape[0] = {k}, got "
                         f"{tuple(D.shape) if isinstance(D, Tensor) else type(D).__name__}")
    check_like(op, "D", D, x)
    check_like(op, "S.values", S.values, x)
    check_device(op, "S.meta", S.meta, x)
    check_bias(op, bias, x, D.shape[0])
    return _call(op, x, D.shape[0], backend, S, D, S.values, S.meta, bias)


# ---------------------------------------------------------------------------------------------
# sparse_dense_mm: W = S @ D
# ---------------------------------------------------------------------------------------------
@torch.library.custom_op("factorkern::sparse_dense_mm", mutates_args=())
def _sparse_dense_mm(x: Tensor, s_values: Tensor, s_meta: Tensor, D: Tensor,
                     bias: Optional[Tensor], backend: str, extra: list[Tensor]) -> Tensor:
    return _dispatch.kernel("sparse_dense_mm", backend)(x, s_values, s_meta, D, bias, extra)


@_sparse_dense_mm.register_fake
def _(x, s_values, s_meta, D, bias, backend, extra):
    return x.new_empty(x.shape[0], s_values.shape[0])


_register_autograd(_sparse_dense_mm, "sparse_dense_mm")


def sparse_dense_mm(x: Tensor, S: Sparse24, D: Tensor, bias: Optional[Tensor] = None,
                    backend: str = "auto") -> Tensor:
    """y = x @ (S @ D).T + bias, computed as (x @ D.T) @ S.T (DSFormer, dense factor first).

    Args:
        x: (..., in).
        S: Sparse24 of shape (out, k), 2:4 along k; values in x's dtype.
        D: (k, in) dense, x's dtype.
        bias: optional (out,).
    Returns:
        (..., out) in x's dtype.
    """
    op = "sparse_dense_mm"
    check_x(op, x)
    check_format(op, "S", S, Sparse24)
    out_f, k = S.shape
    if not isinstance(D, Tensor) or D.dim() != 2 or D.shape[0] != k:
        raise ValueError(f"{op}: D must be (k, in) with k = S.shape[1] = {k}, got "
                         f"{tuple(D.shape) if isinstance(D, Tensor) else type(D).__name__}")
    check_in(op, x, D.shape[1], f"D of shape {tuple(D.shape)}")
    check_like(op, "D", D, x)
    check_like(op, "S.values", S.values, x)
    check_device(op, "S.meta", S.meta, x)
    check_bias(op, bias, x, out_f)
    return _call(op, x, out_f, backend, S, S.values, S.meta, D, bias)


# ---------------------------------------------------------------------------------------------
# armor_mm: W = A @ S @ B
# ---------------------------------------------------------------------------------------------
@torch.library.custom_op("factorkern::armor_mm", mutates_args=())
def _armor_mm(x: Tensor, a_blocks: Tensor, s_values: Tensor, s_meta: Tensor, b_blocks: Tensor,
              bias: Optional[Tensor], backend: str, extra: list[Tensor]) -> Tensor:
    return _dispatch.kernel("armor_mm", backend)(x, a_blocks, s_values, s_meta, b_blocks, bias,
                                                 extra)


@_armor_mm.register_fake
def _(x, a_blocks, s_values, s_meta, b_blocks, bias, backend, extra):
    return x.new_empty(x.shape[0], s_values.shape[0])


_register_autograd(_armor_mm, "armor_mm")


def armor_mm(x: Tensor, A: BlockDiag, S: Sparse24, B: BlockDiag, bias: Optional[Tensor] = None,
             backend: str = "auto") -> Tensor:
    """y = x @ (A @ S @ B).T + bias, computed as ((x @ B.T) @ S.T) @ A.T (ARMOR).

    Args:
        x: (..., in).
        A: BlockDiag (out, out), square blocks (nA, bA, bA) with nA * bA = out.
        S: Sparse24 (out, in), 2:4 along in.
        B: BlockDiag (in, in), square blocks (nB, bB, bB) with nB * bB = in.
        bias: optional (out,).
    Returns:
        (..., out) in x's dtype.
    """
    op = "armor_mm"
    check_x(op, x)
    check_format(op, "A", A, BlockDiag)
    check_format(op, "S", S, Sparse24)
    check_format(op, "B", B, BlockDiag)
    out_f, n_in = S.shape
    check_in(op, x, n_in, f"S of shape {S.shape}")
    for name, M, n in (("A", A, out_f), ("B", B, n_in)):
        nb, bo, bi = M.blocks.shape
        if bo != bi or nb * bo != n:
            raise ValueError(f"{op}: {name} must be square blocks tiling {n} (nblocks * block = "
                             f"{n}), got blocks of shape {tuple(M.blocks.shape)}")
        check_like(op, f"{name}.blocks", M.blocks, x)
    check_like(op, "S.values", S.values, x)
    check_device(op, "S.meta", S.meta, x)
    check_bias(op, bias, x, out_f)
    return _call(op, x, out_f, backend, S, A.blocks, S.values, S.meta, B.blocks, bias)


# ---------------------------------------------------------------------------------------------
# littlebit_mm: W = sum_t diag(h) sign(U) diag(l) sign(V).T diag(g)
# ---------------------------------------------------------------------------------------------
@torch.library.custom_op("factorkern::littlebit_mm", mutates_args=())
def _littlebit_mm(x: Tensor, u_words: list[Tensor], v_words: list[Tensor], h: list[Tensor],
                  l: list[Tensor], g: list[Tensor], bias: Optional[Tensor], backend: str,
                  extra: list[Tensor]) -> Tensor:
    return _dispatch.kernel("littlebit_mm", backend)(x, u_words, v_words, h, l, g, bias, extra)


@_littlebit_mm.register_fake
def _(x, u_words, v_words, h, l, g, bias, backend, extra):
    return x.new_empty(x.shape[0], h[0].shape[0])


_register_autograd(_littlebit_mm, "littlebit_mm")


# The opt-in quantized-activation path (popcount kernels): a separate op, so `auto` on
# littlebit_mm never changes the numbers. Inference only: its backward raises an error that says
# so (rounding has no gradient).
@torch.library.custom_op("factorkern::littlebit_mm_popcount", mutates_args=())
def _littlebit_mm_popcount(x: Tensor, u_words: list[Tensor], v_words: list[Tensor],
                           h: list[Tensor], l: list[Tensor], g: list[Tensor],
                           bias: Optional[Tensor], backend: str, extra: list[Tensor]) -> Tensor:
    return _dispatch.kernel("littlebit_mm_popcount", backend)(x, u_words, v_words, h, l, g, bias,
                                                              extra)


@_littlebit_mm_popcount.register_fake
def _(x, u_words, v_words, h, l, g, bias, backend, extra):
    return x.new_empty(x.shape[0], h[0].shape[0])


_register_autograd(_littlebit_mm_popcount, "littlebit_mm_popcount")


def littlebit_mm(x: Tensor, F: LittleBitFactors, bias: Optional[Tensor] = None,
                 backend: str = "auto", *, quantize_activations: bool = False) -> Tensor:
    """y = x @ W.T + bias with W = sum over terms of diag(h) sign(U) diag(l) sign(V).T diag(g),
    computed per term as h * ((((x * g) @ sign(V)) * l) @ sign(U).T) (LittleBit).

    Args:
        x: (..., in).
        F: LittleBitFactors of W (out, in); its scales in x's dtype.
        bias: optional (out,).
        quantize_activations: False (default): the exact path, signs applied exactly, fp32
            accumulation. True: opt in to the XNOR/popcount path, which quantizes x * g per
            token to int8 (``factorkern.reference.littlebit_quant`` documents the rounding) and
            so changes the numbers (about 1.3% relative error with Gaussian x and g); runs the op
            ``factorkern::littlebit_mm_popcount`` (backend "torch": its quantized reference,
            "cuda": the popcount kernel). Inference only: its backward raises an error.
    Returns:
        (..., out) in x's dtype.
    """
    op = "littlebit_mm_popcount" if quantize_activations else "littlebit_mm"
    check_x(op, x)
    check_format(op, "F", F, LittleBitFactors)
    check_in(op, x, F.in_features, f"F of shape {F.shape}")
    for i, (U, V, h, l, g) in enumerate(F.terms):
        for name, t in (("h", h), ("l", l), ("g", g)):
            check_like(op, f"F.terms[{i}].{name}", t, x)
        check_device(op, f"F.terms[{i}].U", U.words, x)
        check_device(op, f"F.terms[{i}].V", V.words, x)
    check_bias(op, bias, x, F.out_features)
    uw, vw, h, l, g = F.lists()
    return _call(op, x, F.out_features, backend, F, uw, vw, h, l, g, bias)


# ---------------------------------------------------------------------------------------------
# monarch_mm: W = P BD(w2) P BD(w1)
# ---------------------------------------------------------------------------------------------
@torch.library.custom_op("factorkern::monarch_mm", mutates_args=())
def _monarch_mm(x: Tensor, w1: Tensor, w2: Tensor, out_features: int, bias: Optional[Tensor],
                backend: str, extra: list[Tensor]) -> Tensor:
    return _dispatch.kernel("monarch_mm", backend)(x, w1, w2, out_features, bias, extra)


@_monarch_mm.register_fake
def _(x, w1, w2, out_features, bias, backend, extra):
    return x.new_empty(x.shape[0], out_features)


_register_autograd(_monarch_mm, "monarch_mm")


def monarch_mm(x: Tensor, M: MonarchFactors, bias: Optional[Tensor] = None,
               backend: str = "auto") -> Tensor:
    """y = x @ W.T + bias with W the Monarch matrix of M (fly's convention, see
    ``factorkern.formats.monarch``).

    Args:
        x: (..., in_features).
        M: MonarchFactors, w1 (k, q, p) and w2 (l, s, r) in x's dtype.
        bias: optional (out_features,).
    Returns:
        (..., out_features) in x's dtype.
    """
    op = "monarch_mm"
    check_x(op, x)
    check_format(op, "M", M, MonarchFactors)
    check_in(op, x, M.in_features, f"M of shape {M.shape}")
    check_like(op, "M.w1", M.w1, x)
    check_like(op, "M.w2", M.w2, x)
    check_bias(op, bias, x, M.out_features)
    return _call(op, x, M.out_features, backend, M, M.w1, M.w2, M.out_features, bias)


# ---------------------------------------------------------------------------------------------
# lowrank_mm: W = U @ V.T
# ---------------------------------------------------------------------------------------------
@torch.library.custom_op("factorkern::lowrank_mm", mutates_args=())
def _lowrank_mm(x: Tensor, U: Tensor, V: Tensor, bias: Optional[Tensor], backend: str,
                extra: list[Tensor]) -> Tensor:
    return _dispatch.kernel("lowrank_mm", backend)(x, U, V, bias, extra)


@_lowrank_mm.register_fake
def _(x, U, V, bias, backend, extra):
    return x.new_empty(x.shape[0], U.shape[0])


_register_autograd(_lowrank_mm, "lowrank_mm")


def lowrank_mm(x: Tensor, U: Tensor, V: Tensor, bias: Optional[Tensor] = None,
               backend: str = "auto") -> Tensor:
    """y = x @ (U @ V.T).T + bias, computed as (x @ V) @ U.T.

    Args:
        x: (..., in).
        U: (out, r); V: (in, r); both x's dtype.
        bias: optional (out,).
    Returns:
        (..., out) in x's dtype.
    """
    op = "lowrank_mm"
    check_x(op, x)
    for name, t in (("U", U), ("V", V)):
        if not isinstance(t, Tensor) or t.dim() != 2:
            raise ValueError(f"{op}: {name} must be a 2-D tensor, got "
                             f"{tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__}")
    if U.shape[1] != V.shape[1]:
        raise ValueError(f"{op}: U (out, r) and V (in, r) must share r, got {tuple(U.shape)} and "
                         f"{tuple(V.shape)}")
    check_in(op, x, V.shape[0], f"V of shape {tuple(V.shape)}")
    check_like(op, "U", U, x)
    check_like(op, "V", V, x)
    check_bias(op, bias, x, U.shape[0])
    return _call(op, x, U.shape[0], backend, None, U, V, bias)


# ---------------------------------------------------------------------------------------------
# sparse_mm: W = S (plain 2:4)
# ---------------------------------------------------------------------------------------------
@torch.library.custom_op("factorkern::sparse_mm", mutates_args=())
def _sparse_mm(x: Tensor, s_values: Tensor, s_meta: Tensor, bias: Optional[Tensor], backend: str,
               extra: list[Tensor]) -> Tensor:
    return _dispatch.kernel("sparse_mm", backend)(x, s_values, s_meta, bias, extra)


@_sparse_mm.register_fake
def _(x, s_values, s_meta, bias, backend, extra):
    return x.new_empty(x.shape[0], s_values.shape[0])


_register_autograd(_sparse_mm, "sparse_mm")


def sparse_mm(x: Tensor, S: Sparse24, bias: Optional[Tensor] = None,
              backend: str = "auto") -> Tensor:
    """y = x @ S.T + bias with W = S a plain 2:4 matrix (the baseline of every 2:4 method).

    Args:
        x: (..., in).
        S: Sparse24 of shape (out, in), 2:4 along in; values in x's dtype.
        bias: optional (out,).
        backend: "auto" | "torch" | "triton" | "cuda" | "cuda_sm90" (case-insensitive; see
            ``factorkern.backends()`` and docs/dispatch.md).
    Returns:
        (..., out) in x's dtype. Gradients flow to x, the kept values S.values (the pattern
        S.meta stays fixed) and bias.
    """
    op = "sparse_mm"
    check_x(op, x)
    check_format(op, "S", S, Sparse24)
    out_f, n_in = S.shape
    check_in(op, x, n_in, f"S of shape {S.shape}")
    check_like(op, "S.values", S.values, x)
    check_device(op, "S.meta", S.meta, x)
    check_bias(op, bias, x, out_f)
    return _call(op, x, out_f, backend, S, S.values, S.meta, bias)
