"""factorkern: fast kernels for structured-factorized linear layers.

``y = x @ W.T (+ bias)`` computed from the factors of W, never building W:

    import factorkern as fk
    y = fk.dense_sparse_mm(x, D, fk.Sparse24.from_dense(S))

See README.md and docs/ (docs/index.md) for the families, the factor formats and the backends.
"""

from . import formats
from .dispatch import backends
from .formats import (BlockDiag, LittleBitFactors, MonarchFactors, SignBits, Sparse24,
                      prune_24)
from .ops import (armor_mm, dense_sparse_mm, littlebit_mm, lowrank_mm, monarch_mm,
                  sparse_dense_mm, sparse_mm)
# The function (``fk.verify()``); the package of the same name runs ``python -m
# factorkern.verify``. Bound here so the attribute stays the function after the package loads.
from .verify import verify

__version__ = "0.1.0"

__all__ = ["dense_sparse_mm", "sparse_dense_mm", "armor_mm", "littlebit_mm", "monarch_mm",
           "lowrank_mm", "sparse_mm", "Sparse24", "prune_24", "SignBits", "BlockDiag",
           "MonarchFactors", "LittleBitFactors", "backends", "verify", "formats", "nn",
           "factorize", "interop", "distributed"]


def __getattr__(name):
    # Submodules that pull in more (layers, factorizers) load on first use.
    if name in ("nn", "factorize", "interop", "distributed"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'factorkern' has no attribute {name!r}")
