"""Sparse24 -> the register-fragment layout of the sm_90a wgmma.sp kernel (csrc/sm90_sparse/).

Pure torch, any device. The kernel takes the sparse factor S (rows M, cols K; 2:4 along K) in
wgmma's A slot from registers, so the layout is the per-thread fragment order of
``wgmma.mma_async.sp.m64nNk32`` for .f16/.bf16 (PTX ISA, "sparse wgmma" matrix fragments and
metadata). Within one m64 x k32 step, warp w, lane = 4 * g + t:

- values: register r (two 16-bit elements) holds the two kept values, lower column first, of
  row 16 * w + g + 8 * (r & 1), 4-column group t + 4 * (r >> 1).
- metadata (sparsity selector 0): lanes with t in {0, 1} hold one b32: bits 0..15 = the 4 nibbles
  of row 16 * w + g for groups 4t..4t+3 (columns 16t..16t+15), bits 16..31 = the same for row + 8.
  Nibble = idx0 | idx1 << 2: exactly the canonical Sparse24 meta word, so each half of the b32 is a
  canonical int16 word and the conversion only moves words.

Prepared tensors (``sm90_layout``): ``a_frag`` (Mp/64, Kp/32, 128, 8) in the values' dtype and
``e_frag`` int32 (Mp/64, Kp/32, 64) (entry 16 * w + 2 * g + h is the word of lanes 4g+h); Mp = M
rounded up to 128, Kp = K rounded up to 64; padded groups are zero values with nibble 0b0100.
ARMOR's A blocks (128 x 128) go to ``armor_frag`` (nblocks, 2, 8, 128, 8): the dense wgmma
m64nNk16 A fragment (register r: row 16 * w + g + 8 * (r & 1), columns 2t + 8 * (r >> 1) + {0, 1}).
``sm90_to_dense`` and ``armor_frag_to_blocks`` decode the fragments back, written from the
per-thread point of view (which rows and columns a thread's registers hold), as the test oracle.
"""

from __future__ import annotations

import torch

from ..formats.sparse24 import meta_nibbles

BM, BK = 128, 64     # the kernel's tile: rows of S per CTA, K per k-tile
ARMOR_BLOCK = 128    # the fused epilogue's A block size (one output tile = one block)
PAD_NIBBLE = 0b0100  # indices (0, 1): a valid nibble for all-zero padding groups


def _round_up(v: int, m: int) -> int:
    return -(-v // m) * m


def _lane_coords(device):
    """(w, g, t) for the 128 threads of the warpgroup, each (128,) int64."""
    tid = torch.arange(128, device=device)
    lane = tid % 32
    return tid // 32, lane // 4, lane % 4


def sm90_layout(values: torch.Tensor, meta: torch.Tensor, cols: int):
    """Canonical Sparse24 (values (M, K/2), int16 meta (M, ceil(K/16))) -> (a_frag, e_frag)."""
    rows = values.shape[0]
    groups = cols // 4
    mp, kp = _round_up(rows, BM), _round_up(cols, BK)
    dev = values.device
    # Padded values (Mp, Kp/2) and nibbles (Mp, Kp/4).
    vals = values.new_zeros(mp, kp // 2)
    vals[:rows, :cols // 2] = values
    nib = torch.full((mp, kp // 4), PAD_NIBBLE, dtype=torch.int64, device=dev)
    nib[:rows, :groups] = meta_nibbles(meta, groups)

    w, g, t = _lane_coords(dev)
    mb = torch.arange(mp // 64, device=dev).view(-1, 1, 1, 1)
    ks = torch.arange(kp // 32, device=dev).view(1, -1, 1, 1)
    j = torch.arange(8, device=dev).view(1, 1, 1, 8)
    r, h = j // 2, j % 2
    row = 64 * mb + (16 * w + g).view(1, 1, -1, 1) + 8 * (r & 1)
    grp = 8 * ks + t.view(1, 1, -1, 1) + 4 * (r >> 1)
    shape = (mp // 64, kp // 32, 128, 8)
    a_frag = vals[row.expand(shape), (2 * grp + h).expand(shape)].contiguous()

    # 16-bit words: word q of row i = nibbles 4q..4q+3, little endian.
    words = (nib.view(mp, kp // 16, 4) << (4 * torch.arange(4, device=dev))).sum(-1)
    e = torch.arange(64, device=dev)
    ew, eg, eh = e // 16, (e % 16) // 2, e % 2
    mb2 = torch.arange(mp // 64, device=dev).view(-1, 1, 1)
    ks2 = torch.arange(kp // 32, device=dev).view(1, -1, 1)
    r0 = 64 * mb2 + (16 * ew + eg).view(1, 1, -1)
    wq = 2 * ks2 + eh.view(1, 1, -1)
    eshape = (mp // 64, kp // 32, 64)
    lo = words[r0.expand(eshape), wq.expand(eshape)]
    hi = words[(r0 + 8).expand(eshape), wq.expand(eshape)]
    packed = lo | (hi << 16)  # 0 .. 2^32 - 1
    e_frag = torch.where(packed >= 1 << 31, packed - (1 << 32), packed).to(torch.int32)
    return a_frag, e_frag.contiguous()


def sm90_to_dense(a_frag: torch.Tensor, e_frag: torch.Tensor, rows: int, cols: int):
    """Decode (a_frag, e_frag) to the dense (rows, cols) matrix, thread by thread as wgmma.sp
    reads them (the oracle for ``sm90_layout``); also checks every nibble is a valid pair."""
    nmb, nks = a_frag.shape[0], a_frag.shape[1]
    mp, kp = 64 * nmb, 32 * nks
    dense = a_frag.new_zeros(mp, kp)
    word = e_frag.to(torch.int64) & 0xFFFFFFFF
    for tid in range(128):
        w, lane = tid // 32, tid % 32
        g, t = lane // 4, lane % 4
        for r in range(4):
            row = 16 * w + g + 8 * (r & 1)            # row inside the m64 block
            grp = t + 4 * (r >> 1)                    # 4-column group inside the k32 step
            # Metadata of (row, grp): lane 4g + grp // 4 holds groups 4h..4h+3, the high half
            # for rows g + 8.
            mw = word[:, :, 16 * w + 2 * g + grp // 4]            # (nmb, nks)
            half = (mw >> (16 * (r & 1))) & 0xFFFF
            nibble = (half >> (4 * (grp % 4))) & 0xF
            i0, i1 = nibble & 3, (nibble >> 2) & 3
            if bool((i0 >= i1).any()):
                raise ValueError(f"invalid metadata nibble for thread {tid}, register {r}")
            v0 = a_frag[:, :, tid, 2 * r]
            v1 = a_frag[:, :, tid, 2 * r + 1]
            mb = torch.arange(nmb, device=a_frag.device).view(-1, 1)
            ks = torch.arange(nks, device=a_frag.device).view(1, -1)
            rr = (64 * mb + row).expand(nmb, nks)
            col0 = 32 * ks + 4 * grp
            dense[rr, (col0 + i0)] = v0
            dense[rr, (col0 + i1)] = v1
    return dense[:rows, :cols]


def armor_frag(blocks: torch.Tensor) -> torch.Tensor:
    """BlockDiag blocks (nblocks, 128, 128) -> (nblocks, 2, 8, 128, 8) dense wgmma A fragments."""
    nb, ob, ib = blocks.shape
    if ob != ARMOR_BLOCK or ib != ARMOR_BLOCK:
        raise ValueError(f"the fused ARMOR epilogue takes {ARMOR_BLOCK} x {ARMOR_BLOCK} blocks, "
                         f"got {ob} x {ib}")
    w, g, t = _lane_coords(blocks.device)
    mh = torch.arange(2, device=blocks.device).view(-1, 1, 1, 1)
    ks = torch.arange(8, device=blocks.device).view(1, -1, 1, 1)
    j = torch.arange(8, device=blocks.device).view(1, 1, 1, 8)
    r, h = j // 2, j % 2
    row = 64 * mh + (16 * w + g).view(1, 1, -1, 1) + 8 * (r & 1)
    col = 16 * ks + 2 * t.view(1, 1, -1, 1) + 8 * (r >> 1) + h
    shape = (2, 8, 128, 8)
    return blocks[:, row.expand(shape), col.expand(shape)].contiguous()


def armor_frag_to_blocks(frag: torch.Tensor) -> torch.Tensor:
    """Inverse of ``armor_frag``, thread by thread (the oracle)."""
    nb = frag.shape[0]
    out = frag.new_zeros(nb, ARMOR_BLOCK, ARMOR_BLOCK)
    for tid in range(128):
        w, lane = tid // 32, tid % 32
        g, t = lane // 4, lane % 4
        for mh in range(2):
            for ks in range(8):
                for r in range(4):
                    row = 64 * mh + 16 * w + g + 8 * (r & 1)
                    col = 16 * ks + 2 * t + 8 * (r >> 1)
                    out[:, row, col] = frag[:, mh, ks, tid, 2 * r]
                    out[:, row, col + 1] = frag[:, mh, ks, tid, 2 * r + 1]
    return out


def _sparse24_layout(fmt):
    a, e = sm90_layout(fmt.values, fmt.meta, fmt.cols)
    return (a, e)
