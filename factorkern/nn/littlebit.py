"""LittleBitLinear: W = sum_t diag(h_t) sign(U_t) diag(l_t) sign(V_t).T diag(g_t), signs packed."""

from __future__ import annotations

import torch
from torch import nn

from .. import ops
from ..formats import LittleBitFactors, SignBits
from ..formats.signbits import pack_signs
from ._base import FactorizedLinear

SMOOTHSIGN_ALPHA = 100.0


class SmoothSign(torch.autograd.Function):
    """LittleBit's straight-through estimator: forward sign (sign(0) = +1), backward
    alpha * (1 - tanh(alpha * x)^2) (alpha = 100)."""

    @staticmethod
    def forward(ctx, x, alpha):
        ctx.save_for_backward(x)
        ctx.alpha = alpha
        return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        t = torch.tanh(ctx.alpha * x)
        return g * ctx.alpha * (1 - t * t), None


def smooth_sign(x: torch.Tensor, alpha: float = SMOOTHSIGN_ALPHA) -> torch.Tensor:
    return SmoothSign.apply(x, alpha)


class LittleBitLinear(FactorizedLinear):
    """y = x @ W.T + bias with W LittleBit-factorized (sign factors of rank r, one main term and,
    with ``residual=True``, one residual term).

    Buffers ``u_words{t}`` (out, ceil(r/32)) and ``v_words{t}`` (r, ceil(in/32)) hold the packed
    signs (SignBits); parameters ``h{t}`` (out,), ``l{t}`` (r,), ``g{t}`` (in,) the scales.
    With ``latent=True`` the layer also keeps real latent factors ``U{t}`` (out, r) and
    ``V{t}`` (in, r): in training mode the forward runs the torch composite with the SmoothSign
    straight-through estimator so U, V train; switching to eval (``.eval()``/``.train(False)``),
    calling ``pack()`` or taking a ``state_dict()`` re-packs their signs into the words the
    kernels read, so a checkpoint always holds the current signs.
    """

    def __init__(self, in_features, out_features, r, residual=True, latent=False, bias=True,
                 device=None, dtype=None):
        super().__init__(in_features, out_features, bias, device, dtype)
        if r <= 0:
            raise ValueError(f"r must be positive, got {r}")
        self.r = int(r)
        self.nterms = 2 if residual else 1
        self.latent = bool(latent)
        dt = dtype or torch.float32
        # An empty skeleton (fk.nn.load) makes shapes only: ops on the meta device go through
        # torch's Python decompositions, seconds on their first use.
        meta = torch.empty(0, device=device).is_meta
        names = []
        for t in range(self.nterms):
            if meta:
                U = torch.empty(out_features, r, device="meta")
                V = torch.empty(in_features, r, device="meta")
                uw = torch.empty(out_features, -(-r // 32), device="meta", dtype=torch.int32)
                vw = torch.empty(r, -(-in_features // 32), device="meta", dtype=torch.int32)
            else:
                # Latent values start at magnitude ~1/alpha, where SmoothSign's gradient is alive.
                U = torch.randn(out_features, r, device=device) / SMOOTHSIGN_ALPHA
                V = torch.randn(in_features, r, device=device) / SMOOTHSIGN_ALPHA
                uw, vw = pack_signs(U), pack_signs(V.T)
            self.register_buffer(f"u_words{t}", uw)
            self.register_buffer(f"v_words{t}", vw)
            scale = (1.0 / (in_features * r)) ** 0.5
            setattr(self, f"h{t}", nn.Parameter(torch.full((out_features,), scale, device=device,
                                                           dtype=dt)))
            setattr(self, f"l{t}", nn.Parameter(torch.ones(r, device=device, dtype=dt)))
            setattr(self, f"g{t}", nn.Parameter(torch.ones(in_features, device=device, dtype=dt)))
            if self.latent:
                setattr(self, f"U{t}", nn.Parameter(U.to(dt)))
                setattr(self, f"V{t}", nn.Parameter(V.to(dt)))
            names += [f"u_words{t}", f"v_words{t}", f"h{t}", f"l{t}", f"g{t}"]
        # Storage counts only what inference keeps (the latent factors are training state).
        self._factor_names = tuple(names)

    def _formats(self, get):
        terms = [(SignBits(get(f"u_words{t}"), self.r, check=False),
                  SignBits(get(f"v_words{t}"), self.in_features, check=False),
                  get(f"h{t}"), get(f"l{t}"), get(f"g{t}")) for t in range(self.nterms)]
        return {"F": LittleBitFactors(terms, check=False)}

    @property
    def F(self) -> LittleBitFactors:
        return self._format("F")

    @torch.no_grad()
    def pack(self) -> None:
        """Re-pack the signs of the latent U, V into the words (latent layers only)."""
        if not self.latent:
            return
        for t in range(self.nterms):
            getattr(self, f"u_words{t}").copy_(pack_signs(getattr(self, f"U{t}")))
            getattr(self, f"v_words{t}").copy_(pack_signs(getattr(self, f"V{t}").T))

    def train(self, mode: bool = True):
        if not mode:
            self.pack()
        return super().train(mode)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        # The words must hold the latent factors' current signs in every mode: in training
        # they are otherwise refreshed only by .eval()/pack(), and a checkpoint taken mid-training
        # would silently keep the signs of the last pack.
        self.pack()
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def forward(self, x):
        if self.latent and self.training:
            return self._forward_ste(x)
        return ops.littlebit_mm(x, self.F, self.bias, self.backend)

    def _forward_ste(self, x):
        y = None
        for t in range(self.nterms):
            sU = smooth_sign(getattr(self, f"U{t}"))
            sV = smooth_sign(getattr(self, f"V{t}"))
            yt = ((((x * getattr(self, f"g{t}")) @ sV) * getattr(self, f"l{t}")) @ sU.T) \
                * getattr(self, f"h{t}")
            y = yt if y is None else y + yt
        return y if self.bias is None else y + self.bias

    def to_dense(self) -> torch.Tensor:
        self.pack()  # the current signs, also in training mode
        return self.F.to_dense()

    def _family_repr(self):
        return f"r={self.r}, residual={self.nterms == 2}"

    @classmethod
    def from_linear(cls, linear: nn.Linear, r: int = 256, residual: bool = True,
                    latent: bool = False):
        """Dual-SVID initialization of ``linear.weight`` (``factorkern.factorize.littlebit``)."""
        from ..factorize import littlebit

        cls._check_linear(linear)
        W = linear.weight.detach()
        res = littlebit(W, r, residual=residual)
        F = res.factors
        layer = cls(linear.in_features, linear.out_features, r, residual, latent,
                    linear.bias is not None, W.device, W.dtype)
        if len(F.terms) != layer.nterms:
            raise ValueError(f"factorize.littlebit returned {len(F.terms)} terms, expected "
                             f"{layer.nterms}")
        with torch.no_grad():
            for t, (U, V, h, l, g) in enumerate(F.terms):
                getattr(layer, f"u_words{t}").copy_(U.words)
                getattr(layer, f"v_words{t}").copy_(V.words)
                getattr(layer, f"h{t}").copy_(h)
                getattr(layer, f"l{t}").copy_(l)
                getattr(layer, f"g{t}").copy_(g)
                if latent:
                    # Latent factors start at the packed signs scaled to 1/alpha, where the
                    # SmoothSign gradient is alive; the STE trains them from there.
                    getattr(layer, f"U{t}").copy_(U.unpack(W.dtype) / SMOOTHSIGN_ALPHA)
                    getattr(layer, f"V{t}").copy_(V.unpack(W.dtype).T / SMOOTHSIGN_ALPHA)
        layer._copy_bias(linear)
        layer.factorization_error = res.error
        return layer
