"""Named model shapes and the M (tokens) lists of the sweep.

A shape is a linear layer's ``(out_features, in_features)``, written ``OUTxIN`` like the weight
``W (out, in)`` of ``F.linear``. The named sets are the projections of each model whose shapes
differ (attention, MLP up/gate, MLP down); Llama-3-8B's grouped-query k/v projection is
(1024, 4096).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Shape:
    """A linear layer W (out, in) of a model; ``model`` and ``layer`` only label it."""

    out: int
    inp: int
    model: str = "custom"
    layer: str = ""

    @property
    def name(self) -> str:
        return f"{self.out}x{self.inp}"

    @property
    def label(self) -> str:
        tag = f"{self.model}:{self.layer}" if self.layer else self.model
        return f"{tag} {self.name}"


MODELS: dict[str, tuple[Shape, ...]] = {
    "llama2-7b": (Shape(4096, 4096, "llama2-7b", "attn"),
                  Shape(11008, 4096, "llama2-7b", "up"),
                  Shape(4096, 11008, "llama2-7b", "down")),
    "llama3-8b": (Shape(1024, 4096, "llama3-8b", "kv"),
                  Shape(14336, 4096, "llama3-8b", "up"),
                  Shape(4096, 14336, "llama3-8b", "down")),
    "bert-base": (Shape(768, 768, "bert-base", "attn"),
                  Shape(3072, 768, "bert-base", "up"),
                  Shape(768, 3072, "bert-base", "down")),
}

# Decode (M <= 16, bytes bound) and prefill (compute bound).
M_FULL = (1, 16, 128, 2048, 8192)
M_QUICK_GPU = (1, 16, 2048)
M_QUICK_CPU = (1, 16)
DECODE_MAX_M = 16


def parse_shape(text: str) -> Shape:
    """``"OUTxIN"`` (e.g. ``"4096x11008"``) -> Shape(out=4096, inp=11008)."""
    parts = text.lower().replace("*", "x").split("x")
    try:
        out, inp = (int(p) for p in parts)
    except ValueError:
        raise ValueError(f"--shape wants OUTxIN with two positive integers, got {text!r}") \
            from None
    if out <= 0 or inp <= 0:
        raise ValueError(f"--shape wants OUTxIN with two positive integers, got {text!r}")
    return Shape(out, inp)


def model_shapes(names) -> list[Shape]:
    """Shapes of the named models, in order, without duplicates."""
    out: list[Shape] = []
    for n in names:
        key = n.strip().lower()
        if key not in MODELS:
            raise ValueError(f"unknown model shape {n!r}; known: {', '.join(MODELS)}")
        out += [s for s in MODELS[key] if s not in out]
    return out


def is_decode(m: int) -> bool:
    return m <= DECODE_MAX_M
