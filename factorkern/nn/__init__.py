"""Drop-in replacements for nn.Linear built on factorkern ops."""

from ._base import FactorizedLinear
from .armor import ArmorLinear
from .convert import FAMILIES, ConvertReport, convert
from .dense_sparse import DenseSparseLinear, SparseDenseLinear
from .io import load, save
from .littlebit import LittleBitLinear, SmoothSign, smooth_sign
from .lowrank import LowRankLinear
from .monarch import MonarchLinear
from .sparse import Sparse24Linear

__all__ = ["FactorizedLinear", "DenseSparseLinear", "SparseDenseLinear", "ArmorLinear",
           "LittleBitLinear", "MonarchLinear", "LowRankLinear", "Sparse24Linear", "convert",
           "ConvertReport", "FAMILIES", "SmoothSign", "smooth_sign", "save", "load"]
