"""Pure-torch reference implementations: the test oracle and the CPU path.

Every function takes x flattened to (N, in) and the raw factor tensors, accumulates in fp32 for
half inputs (in the input dtype otherwise, float64 included) and returns (N, out) in x's dtype.
"""

from .armor import armor_mm, armor_mm_backward
from .dense_sparse import (dense_sparse_mm, dense_sparse_mm_backward, sparse_dense_mm,
                           sparse_dense_mm_backward)
from .littlebit import littlebit_mm, littlebit_mm_backward
from .lowrank import lowrank_mm, lowrank_mm_backward
from .monarch import monarch_mm, monarch_mm_backward
from .sparse import sparse_mm, sparse_mm_backward

__all__ = ["armor_mm", "armor_mm_backward", "dense_sparse_mm", "dense_sparse_mm_backward",
           "sparse_dense_mm", "sparse_dense_mm_backward", "littlebit_mm",
           "littlebit_mm_backward", "lowrank_mm", "lowrank_mm_backward", "monarch_mm",
           "monarch_mm_backward", "sparse_mm", "sparse_mm_backward"]
