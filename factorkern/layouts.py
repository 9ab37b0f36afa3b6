"""Prepared layouts: what ``format.prepare(key)`` builds for a backend (or a library layout
key), cached on the format's tensors. Used by the ops for every backend."""

from __future__ import annotations

import weakref

import torch

from .formats._common import _LAYOUTS

_PREPARED: dict = {}   # (id of the first tensor, key) -> (weakref, fingerprint, layout)


def _fingerprint(fmt, key):
    meta = tuple(getattr(fmt, f, None) for f in getattr(fmt, "_meta_fields", ()))
    return (key, type(fmt).__name__, meta) + tuple(
        (t.data_ptr(), t._version, tuple(t.shape), t.dtype, t.device) for t in fmt.tensors())


def prepared(fmt, key: str) -> tuple:
    """The layout of ``fmt`` for ``key`` (a backend or library layout key, see
    ``factorkern.formats.register_layout``), () when none is registered.

    Cached on the format's tensors rather than on the format object (layers build a new format
    object around the same parameters at every call): built once per factor, rebuilt when a
    tensor is replaced or updated in place (its version changes: optimizer steps,
    ``load_state_dict``, ``copy_``), dropped when the tensors are freed. Not cached while a
    factor can receive gradients (grad mode on and a tensor requiring grad: training changes the
    factors at every step anyway, and checks such as gradcheck perturb them through ``.data``,
    which no version counter sees) nor while torch.compile traces (the layout is built in the
    graph). Updates made through ``.data`` are not seen by a cached layout: use in-place ops
    under ``torch.no_grad()`` instead.
    """
    fn = _LAYOUTS.get((type(fmt).__name__, key))
    if fn is None:
        return ()
    tensors = fmt.tensors()
    if (torch.compiler.is_compiling() or not tensors
            or (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))):
        return tuple(fn(fmt))
    try:
        fp = _fingerprint(fmt, key)
    except Exception:  # tensors without storage (fake tensors of a tracer): build, do not cache
        return tuple(fn(fmt))
    anchor = tensors[0]
    slot = (id(anchor), key)
    hit = _PREPARED.get(slot)
    if hit is not None and hit[0]() is anchor and hit[1] == fp:
        return hit[2]
    out = tuple(fn(fmt))
    ref = weakref.ref(anchor, lambda _r, slot=slot: _PREPARED.pop(slot, None))
    _PREPARED[slot] = (ref, fp, out)
    return out
