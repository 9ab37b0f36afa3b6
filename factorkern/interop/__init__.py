"""Importers: other libraries' checkpoints and tensors -> factorkern formats and layers.

=========================================  ===================================================
compressed-tensors ``sparse-24-bitmask``   ``compressed_tensors.load_sparse24_bitmask(model,
(llm-compressor's 2:4 models)              state_dict_or_path)`` -> Sparse24Linear layers;
                                           ``sparse24_from_bitmask(compressed, bitmask, shape)``
torch ``SparseSemiStructuredTensor``       ``torch_sparse.to_torch_semi_structured(S)``,
(CUTLASS and cuSPARSELt layouts)           ``torch_sparse.from_torch_semi_structured(t)``
ARMOR (LawrenceRLiu/ARMOR)                 ``armor.armor_linear_from_official(sd, prefix)``,
                                           ``armor.armor_factors_from_official(sd, prefix)``
LittleBit (SamsungLabs/LittleBit)          ``LittleBitFactors.from_official(sd, prefix)``,
                                           ``littlebit.littlebit_linear_from_official(...)``
fly's MonarchLinear (HazyResearch/fly)     loads unchanged into ``fk.nn.MonarchLinear``;
                                           ``fly.monarch_linear_from_fly(sd, in, out)``
=========================================  ===================================================

None of them needs the other library installed: they read its tensors and key names. Each
module's docstring states the layout it reads, with the repository and commit it was read at.
"""

from .armor import armor_factors_from_official, armor_linear_from_official
from .compressed_tensors import load_sparse24_bitmask, sparse24_from_bitmask
from .fly import monarch_linear_from_fly
from .littlebit import littlebit_factors_from_official, littlebit_linear_from_official
from .torch_sparse import from_torch_semi_structured, to_torch_semi_structured

__all__ = ["load_sparse24_bitmask", "sparse24_from_bitmask", "to_torch_semi_structured",
           "from_torch_semi_structured", "armor_factors_from_official",
           "armor_linear_from_official", "littlebit_factors_from_official",
           "littlebit_linear_from_official", "monarch_linear_from_fly"]
