"""sm_90a (Hopper) 2:4 sparse GEMM on wgmma.mma_async.sp: layouts and launcher glue.

Kernel: csrc/sm90_sparse/ (design, status and the GPU checks still owed in its README.md).
Importing this package registers the ``Sparse24`` layout for the ``"cuda_sm90"`` backend key,
so ``S.prepare("cuda_sm90")`` returns ``(a_frag, e_frag)``. The kernel is not registered with
dispatch (unproven: no GPU has run it yet).
"""

from ..formats import register_layout
from .launch import (armor_mm, availability, dense_sparse_mm, load_library, sparse_dense_mm,
                     sparse_mm, supports)
from .layout import (ARMOR_BLOCK, armor_frag, armor_frag_to_blocks, sm90_layout, sm90_to_dense,
                     _sparse24_layout)

register_layout("Sparse24", "cuda_sm90", _sparse24_layout)

__all__ = ["ARMOR_BLOCK", "armor_frag", "armor_frag_to_blocks", "sm90_layout", "sm90_to_dense",
           "availability", "supports", "load_library", "sparse_mm", "armor_mm",
           "sparse_dense_mm", "dense_sparse_mm"]
