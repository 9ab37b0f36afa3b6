"""LittleBitFactors: W = sum over terms t of diag(h_t) sign(U_t) diag(l_t) sign(V_t).T diag(g_t).

Each term holds U: SignBits (out, r) (packed along r), V: SignBits of V.T (r, in) (packed along
in), and real scales h (out,), l (r,), g (in,). y = x @ W.T is, per term,
``h * ((((x * g) @ sign(V)) * l) @ sign(U).T)``, terms summed. LittleBit's paper uses one main term
and one residual term of the same form.

The paper's code computes ``((((x*v2) @ sign(V).T) * (v1*u2)) @ sign(U).T) * u1``: h = u1,
g = v2, l = u2 * v1 (``fold_paper_scales``). Its packer stores bit 1 = -1: convert its words with
``SignBits.from_inverted``. Specified bit for bit in docs/formats.md.
"""

from __future__ import annotations

import torch

from ._common import FormatBase, check_float
from .signbits import SignBits

_FIELDS = ("u_words", "v_words", "h", "l", "g")


def fold_paper_scales(u1, u2, v1, v2):
    """The paper's (u1, u2, v1, v2) scales -> our (h, l, g) = (u1, u2 * v1, v2), each 1-D.

    The paper's checkpoints keep them as rows: u1 (1, out), u2 and v1 (1, r), v2 (1, in); rows
    and 1-D vectors are both taken (any other shape raises ValueError naming it)."""
    flat = []
    for name, t in (("u1", u1), ("u2", u2), ("v1", v1), ("v2", v2)):
        check_float(name, t)
        if t.dim() == 2 and t.shape[0] == 1:
            t = t.reshape(-1)
        if t.dim() != 1:
            raise ValueError(f"{name} must be a vector (n,) or a row (1, n), got shape "
                             f"{tuple(t.shape)}")
        flat.append(t)
    u1, u2, v1, v2 = flat
    if u2.shape != v1.shape:
        raise ValueError(f"u2 and v1 must both have r entries, got {tuple(u2.shape)} and "
                         f"{tuple(v1.shape)}")
    return u1, u2 * v1, v2


class LittleBitFactors(FormatBase):
    """Sign-bit factors of W (out_features, in_features); see the module docstring.

    ``terms``: list of (U: SignBits (out, r), V: SignBits (r, in), h (out,), l (r,), g (in,)).
    """

    _meta_fields = ("in_features", "out_features")

    def __init__(self, terms, *, check: bool = True):
        if isinstance(terms, torch.Tensor) or not isinstance(terms, (list, tuple)):
            raise TypeError(f"LittleBitFactors terms must be a list of (U, V, h, l, g) tuples, "
                            f"got {type(terms).__name__} (real factors: "
                            f"LittleBitFactors.from_real)")
        if not terms:
            raise ValueError("LittleBitFactors needs at least one term")
        for i, t in enumerate(terms):
            if not isinstance(t, (list, tuple)) or len(t) != 5:
                raise ValueError(f"terms[{i}] must be a (U, V, h, l, g) tuple, got "
                                 f"{len(t) if isinstance(t, (list, tuple)) else type(t).__name__}"
                                 f"{' items' if isinstance(t, (list, tuple)) else ''}")
            if not isinstance(t[0], SignBits) or not isinstance(t[1], SignBits):
                raise TypeError(f"terms[{i}]: U and V must be SignBits (packed signs), got "
                                f"{type(t[0]).__name__} and {type(t[1]).__name__} (real factors: "
                                f"LittleBitFactors.from_real)")
        self.terms = [tuple(t) for t in terms]
        U, V = self.terms[0][0], self.terms[0][1]
        self.out_features = U.shape[0]
        self.in_features = V.cols
        super().__init__()
        if check:
            self.validate()

    # tensor access -------------------------------------------------------------------------
    def tensors(self):
        out = []
        for U, V, h, l, g in self.terms:
            out += [U.words, V.words, h, l, g]
        return out

    def lists(self):
        """(u_words, v_words, h, l, g): five lists with one tensor per term (the op schema)."""
        cols = list(zip(*[(U.words, V.words, h, l, g) for U, V, h, l, g in self.terms]))
        return tuple(list(c) for c in cols)

    @property
    def ranks(self) -> list[int]:
        return [int(t[3].shape[0]) for t in self.terms]

    @property
    def shape(self):
        return (self.out_features, self.in_features)

    @property
    def dtype(self):
        return self.terms[0][2].dtype

    @property
    def device(self):
        return self.terms[0][2].device

    def _replace(self, fn):
        terms = [(SignBits(fn(U.words), U.cols, check=False), SignBits(fn(V.words), V.cols,
                                                                        check=False),
                  fn(h), fn(l), fn(g)) for U, V, h, l, g in self.terms]
        return LittleBitFactors(terms, check=False)

    def state_dict(self, prefix: str = "") -> dict:
        sd = {prefix + "nterms": torch.tensor(len(self.terms))}
        for i, term in enumerate(self.terms):
            U, V, h, l, g = term
            for name, t in zip(_FIELDS, (U.words, V.words, h, l, g)):
                sd[f"{prefix}{i}.{name}"] = t
        sd[prefix + "in_features"] = torch.tensor(self.in_features)
        sd[prefix + "out_features"] = torch.tensor(self.out_features)
        return sd

    @classmethod
    def from_state_dict(cls, sd: dict, prefix: str = ""):
        n = int(sd[prefix + "nterms"])
        in_f = int(sd[prefix + "in_features"])
        out_f = int(sd[prefix + "out_features"])
        terms = []
        for i in range(n):
            uw, vw, h, l, g = (sd[f"{prefix}{i}.{name}"] for name in _FIELDS)
            check_float(f"{prefix}{i}.l", l)
            if l.dim() != 1:
                raise ValueError(f"{prefix}{i}.l must be 1-D (r,), got shape {tuple(l.shape)}")
            terms.append((SignBits(uw, int(l.shape[0])), SignBits(vw, in_f), h, l, g))
        F = cls(terms)
        if F.out_features != out_f:
            raise ValueError(f"{prefix}out_features = {out_f} but the U words have "
                             f"{F.out_features} rows")
        return F

    # constructors --------------------------------------------------------------------------
    @classmethod
    def from_official(cls, state_dict: dict, prefix: str = "", dtype=None) -> "LittleBitFactors":
        """Factors of one layer of a checkpoint saved by LittleBit's own code
        (SamsungLabs/LittleBit): its packed signs (bit 1 = -1), its (1, n) scale rows and its
        residual path; see ``factorkern.interop.littlebit``."""
        from ..interop.littlebit import littlebit_factors_from_official

        return littlebit_factors_from_official(state_dict, prefix, dtype)

    @classmethod
    def from_real(cls, terms) -> "LittleBitFactors":
        """terms: list of (U (out, r), V (in, r), h (out,), l (r,), g (in,)) with real U, V
        whose signs are packed (sign(0) = +1)."""
        packed = []
        for i, term in enumerate(terms):
            if not isinstance(term, (list, tuple)) or len(term) != 5:
                raise ValueError(f"terms[{i}] must be a (U, V, h, l, g) tuple of tensors")
            U, V, h, l, g = term
            check_float(f"terms[{i}].U", U)
            check_float(f"terms[{i}].V", V)
            if U.dim() != 2 or V.dim() != 2 or U.shape[1] != V.shape[1]:
                raise ValueError(f"terms[{i}]: U (out, r) and V (in, r) must share r, got "
                                 f"{tuple(U.shape)} and {tuple(V.shape)}")
            packed.append((SignBits.pack(U), SignBits.pack(V.T), h, l, g))
        return cls(packed)

    def _validate(self) -> None:
        out_f, in_f = self.out_features, self.in_features
        check_float("terms[0].h", self.terms[0][2])
        dtype, device = self.dtype, self.device
        for i, term in enumerate(self.terms):
            if len(term) != 5:
                raise ValueError(f"terms[{i}] must be (U, V, h, l, g), got {len(term)} items")
            U, V, h, l, g = term
            if not isinstance(U, SignBits) or not isinstance(V, SignBits):
                raise TypeError(f"terms[{i}]: U and V must be SignBits")
            for name, sb in (("U", U), ("V", V)):
                try:
                    sb._validate()
                except (TypeError, ValueError) as e:
                    raise type(e)(f"terms[{i}].{name}: {e}") from None
            r = U.cols
            if U.shape[0] != out_f or V.shape != (r, in_f):
                raise ValueError(f"terms[{i}]: U must be ({out_f}, r) and V (r, {in_f}) with the "
                                 f"same r, got U {U.shape} and V {V.shape}")
            for name, t, n in (("h", h, out_f), ("l", l, r), ("g", g, in_f)):
                check_float(f"terms[{i}].{name}", t)
                if tuple(t.shape) != (n,):
                    raise ValueError(f"terms[{i}].{name} must have shape ({n},), got "
                                     f"{tuple(t.shape)}")
                if t.dtype != dtype:
                    raise TypeError(f"terms[{i}].{name} is {t.dtype}, expected {dtype} like "
                                    "terms[0].h")
            for name, t in (("U", U.words), ("V", V.words), ("h", h), ("l", l), ("g", g)):
                if t.device != device:
                    raise ValueError(f"terms[{i}].{name} is on {t.device}, expected {device}")

    def to_dense(self) -> torch.Tensor:
        """W (out_features, in_features) in the dtype of the scales."""
        W = None
        for U, V, h, l, g in self.terms:
            dt = h.dtype
            Wt = (h[:, None] * (U.unpack(dt) * l)) @ (V.unpack(dt) * g)
            W = Wt if W is None else W + Wt
        return W

    def bits_per_weight(self, scale_bits: int = 16) -> float:
        """Storage bits per weight of W: r (a + b) sign bits plus (a + b + r) scales of
        ``scale_bits`` each, per term, over a * b (a = in, b = out). With one residual term and
        16-bit scales this is LittleBit's (2r(a+b+16) + 32(a+b)) / (ab)."""
        a, b = self.in_features, self.out_features
        bits = sum(r * (a + b) + scale_bits * (a + b + r) for r in self.ranks)
        return bits / (a * b)
