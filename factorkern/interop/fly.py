"""fly's MonarchLinear checkpoints (HazyResearch/fly, ``src/models/layers/monarch_linear.py``,
read at commit 6b73449a6b3e228af9e4afe4f153a384e9b537b9) -> ``fk.nn.MonarchLinear``.

fly's layer keeps ``blkdiag1`` (nblocks, q, p), ``blkdiag2`` (nblocks, s, r) and ``bias``
(out,); ``fk.nn.MonarchLinear`` uses the same names, shapes and product (see
``factorkern.formats.monarch``), so its ``state_dict`` loads unchanged. fly does not store
in/out features (the blocks are padded to multiples of nblocks), so they are given here.
"""

from __future__ import annotations

REPOSITORY = "HazyResearch/fly"
COMMIT = "6b73449a6b3e228af9e4afe4f153a384e9b537b9"


def monarch_linear_from_fly(state_dict: dict, in_features: int, out_features: int,
                            prefix: str = ""):
    """fly ``MonarchLinear(in_features, out_features, nblocks=...)`` state_dict ->
    ``fk.nn.MonarchLinear`` (nblocks read from ``blkdiag1``; bias if the checkpoint has one)."""
    from ..nn.monarch import MonarchLinear

    w1 = state_dict.get(prefix + "blkdiag1")
    w2 = state_dict.get(prefix + "blkdiag2")
    if w1 is None or w2 is None:
        raise KeyError(f"fly MonarchLinear checkpoint needs {prefix}blkdiag1 and "
                       f"{prefix}blkdiag2")
    bias = state_dict.get(prefix + "bias")
    layer = MonarchLinear(in_features, out_features, nblocks=int(w1.shape[0]),
                          bias=bias is not None, device="meta", dtype=w1.dtype)
    if tuple(layer.blkdiag1.shape) != tuple(w1.shape) or \
            tuple(layer.blkdiag2.shape) != tuple(w2.shape):
        raise ValueError(f"fly blocks {tuple(w1.shape)}, {tuple(w2.shape)} are not those of "
                         f"MonarchLinear({in_features}, {out_features}, nblocks={w1.shape[0]}): "
                         f"{tuple(layer.blkdiag1.shape)}, {tuple(layer.blkdiag2.shape)}")
    sd = {"blkdiag1": w1, "blkdiag2": w2, **({} if bias is None else {"bias": bias})}
    layer.load_state_dict(sd, assign=True)
    return layer
