"""sm_90a (Hopper) 2:4 sparse GEMM on wgmma.mma_async.sp: layouts and launcher glue.

Kernel: csrc/sm90_sparse/ (design, status and the GPU checks still owed in its README.md).
Importing this package registers the ``Sparse24`` layout for the ``"cuda_sm90"`` backend key,
so ``S.prepare("cuda_sm90")`` returns ``(a_frag, e_frag)``, and registers the op-shaped functions
as backend ``"cuda_sm90"`` kernels, so ``python -m factorkern.verify`` covers them (``auto`` runs
them only where a verification record backs them).
"""

from ..dispatch import register_kernel
from ..formats import register_layout
from .launch import (armor_mm, availability, dense_sparse_mm, load_library, sparse_dense_mm,
                     sparse_mm, supports)
from .layout import (ARMOR_BLOCK, armor_frag, armor_frag_to_blocks, sm90_layout, sm90_to_dense,
                     _sparse24_layout)

register_layout("Sparse24", "cuda_sm90", _sparse24_layout)
# Kernel signature (x, ..., bias, extra): extra = prepare("cuda_sm90") = the ``layout`` argument.
register_kernel("dense_sparse_mm", "cuda_sm90", dense_sparse_mm,
                supports=lambda x, D, v, m, *_: supports(x, v.shape[0], 2 * v.shape[1]))
register_kernel("sparse_dense_mm", "cuda_sm90", sparse_dense_mm,
                supports=lambda x, v, m, D, *_: supports(x, v.shape[0], 2 * v.shape[1]))
register_kernel("sparse_mm", "cuda_sm90",
                lambda x, v, m, bias, extra: sparse_mm(x, v, m, 2 * v.shape[1], bias, extra),
                supports=lambda x, v, m, *_: supports(x, v.shape[0], 2 * v.shape[1]))
register_kernel("armor_mm", "cuda_sm90", armor_mm, supports=lambda x, a, v, m, b, *_: supports(
    x, v.shape[0], 2 * v.shape[1]) or (None if a.shape[-1] == ARMOR_BLOCK else
                                       f"A blocks must be {ARMOR_BLOCK} x {ARMOR_BLOCK}"))

__all__ = ["ARMOR_BLOCK", "armor_frag", "armor_frag_to_blocks", "sm90_layout", "sm90_to_dense",
           "availability", "supports", "load_library", "sparse_mm", "armor_mm",
           "sparse_dense_mm", "dense_sparse_mm"]
