"""LittleBit checkpoints (SamsungLabs/LittleBit, read at commit
7f872f115bd88f89124d7e27f82176e994d4b582; its code is CC BY-NC: none of it is copied here, the
layout below is restated from reading it) -> LittleBitFactors and ``fk.nn.LittleBitLinear``.

The paper's ``LittleBitLinear`` (``quantization/modules/littlebit.py``) computes, per path,
``((((x * v2) @ sign(V).T) * (v1 * u2)) @ sign(U).T) * u1`` with U (out, r) and V (r, in), and
adds a residual path of the same form (suffix ``_R``) when ``residual``. Its ``state_dict()``
holds, relative to the layer:

- ``U_packed`` int32 (out, ceil(r / 32)), ``U_shape`` int64 [out, r]; ``V_packed`` int32
  (r, ceil(in / 32)), ``V_shape`` [r, in]; and ``U_R_*``, ``V_R_*`` for the residual path.
  Packer (``quantization/utils/binary_packer.py``): rows packed along their columns, 32 signs
  per word, least significant bit first, bit 1 = -1 (the opposite of SignBits), padding with +1
  (bit 0);
- ``u1`` (1, out), ``u2`` (1, r), ``v1`` (1, r), ``v2`` (1, in) (and ``*_R``): scale rows;
- ``bias`` (when the layer has one), and the buffers ``_eff_bit_target``,
  ``_split_dim_final``, ``_eff_bit_actual`` (bookkeeping, not needed here).

So one path is our term with h = u1, l = v1 * u2, g = v2 (``fold_paper_scales``), U = their U
(out, r) packed along r, and V = their V (r, in), packed along in: exactly SignBits of our
V.T. The words are flipped with ``SignBits.from_inverted`` (bit 1 = -1 -> bit 1 = +1, padding
cleared).
"""

from __future__ import annotations

import torch

from ..formats import LittleBitFactors, SignBits
from ..formats.littlebit import fold_paper_scales
from ._common import require

REPOSITORY = "SamsungLabs/LittleBit"
COMMIT = "7f872f115bd88f89124d7e27f82176e994d4b582"


def _get(sd, key):
    return require(sd, key, "LittleBit")


def _signs(sd, prefix, name):
    words = _get(sd, f"{prefix}{name}_packed")
    shape = [int(d) for d in _get(sd, f"{prefix}{name}_shape").reshape(-1).tolist()]
    if len(shape) != 2 or tuple(words.shape) != (shape[0], -(-shape[1] // 32)):
        raise ValueError(f"LittleBit {prefix}{name}_packed is {tuple(words.shape)}, expected "
                         f"(rows, ceil(cols/32)) for {name}_shape {shape}")
    return SignBits.from_inverted(words.to(torch.int32), shape[1])


def littlebit_factors_from_official(state_dict: dict, prefix: str = "",
                                    dtype=None) -> LittleBitFactors:
    """A LittleBit ``LittleBitLinear`` state_dict -> LittleBitFactors (one term, two with the
    residual path ``*_R``), W = sum of diag(u1) sign(U) diag(v1 u2) sign(V) diag(v2).

    Args:
        state_dict: the layer's (or a model's, with ``prefix``) state_dict as LittleBit saves it.
        prefix: the layer's key prefix, e.g. ``"model.layers.0.mlp.up_proj."``.
        dtype: dtype of the scales (default: the checkpoint's). l = v1 * u2 is formed in float32
            and rounded once.
    """
    terms = []
    for suffix in ("", "_R"):
        if f"{prefix}U{suffix}_packed" not in state_dict:
            if suffix == "":
                raise KeyError(f"LittleBit checkpoint has no {prefix}U_packed")
            break
        U = _signs(state_dict, prefix, "U" + suffix)
        V = _signs(state_dict, prefix, "V" + suffix)
        u1, u2, v1, v2 = (_get(state_dict, f"{prefix}{n}{suffix}")
                          for n in ("u1", "u2", "v1", "v2"))
        dt = dtype or u1.dtype
        h, l, g = fold_paper_scales(u1.float(), u2.float(), v1.float(), v2.float())
        terms.append((U, V, h.to(dt), l.to(dt), g.to(dt)))
    return LittleBitFactors(terms)


def littlebit_linear_from_official(state_dict: dict, prefix: str = "", dtype=None):
    """A LittleBit ``LittleBitLinear`` state_dict -> ``fk.nn.LittleBitLinear`` (rank r, with the
    residual term when the checkpoint has one, its bias if any)."""
    from ..nn.littlebit import LittleBitLinear

    F = littlebit_factors_from_official(state_dict, prefix, dtype)
    bias = state_dict.get(prefix + "bias")
    ranks = set(F.ranks)
    if len(ranks) != 1:
        raise ValueError(f"LittleBitLinear keeps one rank for both terms, the checkpoint has "
                         f"{F.ranks}")
    layer = LittleBitLinear(F.in_features, F.out_features, r=ranks.pop(),
                            residual=len(F.terms) == 2, bias=bias is not None, device="meta",
                            dtype=F.dtype)
    sd = {}
    for t, (U, V, h, l, g) in enumerate(F.terms):
        sd.update({f"u_words{t}": U.words, f"v_words{t}": V.words, f"h{t}": h, f"l{t}": l,
                   f"g{t}": g})
    if bias is not None:
        sd["bias"] = bias.to(F.dtype)
    layer.load_state_dict(sd, assign=True)
    return layer
