"""Factorizers: get a family's factors from a dense W (out, in) (docs/factorize.md).

Every function takes W in any float dtype, computes in float32 (float64 for a float64 W) on W's
device, and returns a :class:`Factorization` (factors in W's dtype and device, the relative
reconstruction error ``||W - W_hat||_F / ||W||_F`` and, given calibration activations X (N, in),
the relative output error ``||X W.T - X W_hat.T||_F / ||X W.T||_F``; both in float64).

=====================================  =========================================================
``prune_24(W, X=None)``                Sparse24 (out, in): magnitude or Wanda scores
``dense_sparse(W, k, order, iters)``   (D, S) for "ds" (W ~ D S) or (S, D) for "sd" (W ~ S D):
                                       ALS with re-pruning (DSFormer's initialization)
``monarch(W, nblocks=4, rank=1)``      MonarchFactors: fly's optimal projection (block SVDs)
``littlebit(W, r, residual=True)``     LittleBitFactors: Dual-SVID (+ residual term)
``armor(W, block=128, X=None, iters)`` (A BlockDiag, S Sparse24, B BlockDiag): ARMOR's BCD
``lowrank(W, r)``                      (U (out, r), V (in, r)), W ~ U V.T: truncated SVD
=====================================  =========================================================
"""

from ._common import Factorization
from .armor import armor
from .dense_sparse import dense_sparse
from .littlebit import littlebit
from .lowrank import lowrank
from .monarch import monarch
from .sparse24 import prune_24

__all__ = ["Factorization", "prune_24", "dense_sparse", "monarch", "littlebit", "armor",
           "lowrank"]
