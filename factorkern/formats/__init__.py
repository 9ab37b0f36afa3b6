"""Factor formats: the contract other libraries build on, specified bit for bit in
docs/formats.md."""

from ._common import register_layout
from .blockdiag import BlockDiag
from .littlebit import LittleBitFactors, fold_paper_scales
from .monarch import MonarchFactors
from .signbits import SignBits
from .sparse24 import Sparse24, prune_24

__all__ = ["Sparse24", "prune_24", "SignBits", "BlockDiag", "MonarchFactors",
           "LittleBitFactors", "fold_paper_scales", "register_layout"]
