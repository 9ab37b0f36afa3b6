"""Importers (factorkern.interop): other libraries' tensors and checkpoints -> our formats and
layers. compressed-tensors is run itself (it installs from PyPI); torch's semi-structured tensors
are checked against torch's own conversion code; ARMOR, LittleBit and fly checkpoints (not on
PyPI) are built here with the key layout and formulas their repositories document, restated
independently of factorkern (see each importer's docstring for repository and commit)."""

import copy

import pytest
import torch
from torch import nn

import factorkern as fk
from factorkern.formats import LittleBitFactors, Sparse24, fold_paper_scales
from factorkern.interop import (armor_factors_from_official, armor_linear_from_official,
                                from_torch_semi_structured, littlebit_linear_from_official,
                                load_sparse24_bitmask, monarch_linear_from_fly,
                                sparse24_from_bitmask, to_torch_semi_structured)
from factorkern.nn import ArmorLinear, LittleBitLinear, MonarchLinear, Sparse24Linear

from families import rel_err

pytestmark = pytest.mark.filterwarnings("ignore:The PyTorch API of SparseSemiStructuredTensor")


def _no_dense(monkeypatch):
    """Make every dense <-> Sparse24 conversion raise: what runs after this builds no dense W."""
    def boom(*a, **k):
        raise AssertionError("a dense round trip ran")
    monkeypatch.setattr(Sparse24, "from_dense", classmethod(boom))
    monkeypatch.setattr(Sparse24, "to_dense", boom)


# ---- compressed-tensors sparse-24-bitmask -----------------------------------------------------
def test_bitmask_hand_example_bit_order():
    # Row 0 keeps columns 1, 3, 4, 7: little-endian bits 1, 3, 4, 7 of one byte = 0b10011010.
    # Row 1 keeps columns 0, 1 (group 0) and 5, 6 (group 1): 0b01100011.
    compressed = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])
    bitmask = torch.tensor([[0b10011010], [0b01100011]], dtype=torch.uint8)
    S = sparse24_from_bitmask(compressed, bitmask, torch.tensor([[2], [8]]))
    assert torch.equal(S.to_dense(), torch.tensor([[0, 1, 0, 2, 3, 0, 0, 4],
                                                   [5, 6, 0, 0, 0, 7, 8, 0.0]]))
    assert S.meta.tolist() == [[(1 | 3 << 2) | (0 | 3 << 2) << 4],
                               [(0 | 1 << 2) | (1 | 2 << 2) << 4]]
    bad = torch.tensor([[0b10011011], [0b01100011]], dtype=torch.uint8)  # group 0 keeps 3
    with pytest.raises(ValueError, match=r"row 0, columns 0\.\.3 \(group 0\) keep 3"):
        sparse24_from_bitmask(compressed, bad, (2, 8))
    with pytest.raises(ValueError, match=r"bitmask must be \(out, ceil\(in/8\)\)"):
        sparse24_from_bitmask(compressed, bitmask, (2, 12))


def _pruned_model(dtype):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 48), nn.GELU(), nn.Linear(48, 20, bias=False),
                          nn.LayerNorm(20)).to(dtype)
    with torch.no_grad():  # a 2:4 model, as llm-compressor's 2:4 recipes leave it
        for i in (0, 2):
            model[i].weight.copy_(fk.prune_24(model[i].weight).to_dense())
        model[3].weight.normal_()
    return model


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_compressed_tensors_sparse24_bitmask_loads_into_sparse24_linear(dtype, monkeypatch,
                                                                       tmp_path):
    ct = pytest.importorskip("compressed_tensors", reason="compressed-tensors not installed "
                             "(pip install 'compressed-tensors<0.15', the test extra)")
    try:
        from compressed_tensors.compressors import ModelCompressor
        from compressed_tensors.config import Sparse24BitMaskConfig
    except ImportError:
        pytest.skip(f"compressed-tensors {ct.__version__} dropped the sparse-24-bitmask "
                    "compressor (0.14 has it)")
    dense = _pruned_model(dtype)
    compressor = ModelCompressor(sparsity_config=Sparse24BitMaskConfig(targets=["Linear"]))
    state = compressor.compress(dense)  # compressed-tensors' own compressor
    assert {"0.compressed", "0.bitmask", "0.shape", "2.bitmask"} <= set(state)
    assert "0.weight" not in state

    model = copy.deepcopy(dense)
    with monkeypatch.context() as m:
        _no_dense(m)
        assert load_sparse24_bitmask(model, state) == ["0", "2"]
    assert isinstance(model[0], Sparse24Linear) and isinstance(model[2], Sparse24Linear)
    assert model[2].bias is None and isinstance(model[3], nn.LayerNorm)
    for i in (0, 2):  # lossless: the kept weights and the pattern are the dense model's
        assert torch.equal(model[i].to_dense(), dense[i].weight)
    x = torch.randn(3, 5, 64).to(dtype)
    with torch.no_grad():
        want, got = dense(x), model(x)
    assert got.dtype == dtype
    assert rel_err(got, want) < 2 * torch.finfo(dtype).eps

    # the same checkpoint from a saved folder, into a meta-device skeleton
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "model.safetensors"))
    with torch.device("meta"):
        skeleton = copy.deepcopy(dense).to("meta")
    load_sparse24_bitmask(skeleton, tmp_path)
    with torch.no_grad():
        assert torch.equal(skeleton(x), got)


def test_load_sparse24_bitmask_reports_mismatches():
    S = fk.prune_24(torch.randn(8, 16))
    mask = torch.zeros(8, 16, dtype=torch.bool).scatter(1, S.indices(), True)
    bits = (mask.reshape(8, 2, 8).to(torch.int64) << torch.arange(8)).sum(-1).to(torch.uint8)
    state = {"lin.compressed": S.values, "lin.bitmask": bits, "lin.shape": torch.tensor([8, 16]),
             "lin.bias": torch.zeros(8), "extra": torch.zeros(1)}
    model = nn.Module()
    model.lin = nn.Linear(16, 8)
    with pytest.raises(KeyError, match="unexpected.*extra"):
        load_sparse24_bitmask(copy.deepcopy(model), state)
    out = copy.deepcopy(model)
    load_sparse24_bitmask(out, state, strict=False)
    assert torch.equal(out.lin.to_dense(), S.to_dense())
    model.lin = nn.Linear(16, 4)
    with pytest.raises(ValueError, match=r"checkpoint weight is \(8, 16\)"):
        load_sparse24_bitmask(model, state, strict=False)


# ---- torch SparseSemiStructuredTensor ---------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_torch_cutlass_layout_matches_torch_and_skips_dense(dtype, monkeypatch):
    from torch.sparse import SparseSemiStructuredTensorCUTLASS
    from torch.sparse._semi_structured_conversions import \
        sparse_semi_structured_from_dense_cutlass

    S = fk.prune_24(torch.randn(64, 192).to(dtype))  # no zeros: torch encodes groups as we do
    packed, meta = sparse_semi_structured_from_dense_cutlass(S.to_dense())
    with monkeypatch.context() as m:
        _no_dense(m)
        t = to_torch_semi_structured(S, "cutlass")
        back = from_torch_semi_structured(t)
    assert isinstance(t, SparseSemiStructuredTensorCUTLASS)
    assert t.shape == (64, 192) and t.dtype == dtype
    assert torch.equal(t.packed, packed) and torch.equal(t.meta, meta)
    assert torch.equal(t.to_dense(), S.to_dense())  # torch's own decoder
    assert torch.equal(back.values, S.values) and torch.equal(back.meta, S.meta)
    assert torch.equal(Sparse24.from_torch_semi_structured(S.to_torch_semi_structured(
        "cutlass")).meta, S.meta)


def test_torch_cutlass_from_torch_with_zero_groups():
    # torch picks other index pairs for groups with fewer than 2 nonzeros: still the same matrix
    W = fk.prune_24(torch.randn(32, 64, dtype=torch.float16)).to_dense()
    W[:4] = 0
    W[5, 1::4] = 0
    from torch.sparse._semi_structured_conversions import \
        sparse_semi_structured_from_dense_cutlass
    from torch.sparse import SparseSemiStructuredTensorCUTLASS

    packed, meta = sparse_semi_structured_from_dense_cutlass(W)
    t = SparseSemiStructuredTensorCUTLASS(W.shape, packed, meta, None, None, None)
    S = from_torch_semi_structured(t)
    assert torch.equal(S.to_dense(), W)


def test_torch_semi_structured_refuses_float32_and_bad_shapes():
    from torch.sparse._semi_structured_conversions import (
        sparse_semi_structured_from_dense_cutlass, sparse_semi_structured_to_dense_cutlass)

    W = torch.zeros(32, 64)
    W[:, 0::4], W[:, 1::4] = 1.0, 2.0  # both kept values of each group in the same pair of columns
    # why: torch's CUTLASS path stores float32 as 1:2 and drops one of them
    lost = sparse_semi_structured_to_dense_cutlass(*sparse_semi_structured_from_dense_cutlass(W))
    assert not torch.equal(lost, W)
    S = Sparse24.from_dense(W)
    with pytest.raises(TypeError, match="float32.*dtype=torch.float16"):
        to_torch_semi_structured(S, "cutlass")
    t = to_torch_semi_structured(S, "cutlass", dtype=torch.float16)  # converted on request
    assert torch.equal(t.to_dense().float(), W)
    with pytest.raises(ValueError, match="multiple of 32"):
        to_torch_semi_structured(fk.prune_24(torch.randn(16, 64, dtype=torch.float16)),
                                 "cutlass")
    with pytest.raises(RuntimeError, match="cuSPARSELt compresses on a CUDA GPU"):
        to_torch_semi_structured(S.to(torch.float16), "cusparselt")
    with pytest.raises(ValueError, match="backend must be one of"):
        to_torch_semi_structured(S, "cusparse")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("backend", ["cutlass", "cusparselt"])
def test_torch_semi_structured_matmul_on_gpu(backend):
    if backend == "cusparselt" and not torch.backends.cusparselt.is_available():
        pytest.skip("torch built without cuSPARSELt")
    S = fk.prune_24(torch.randn(128, 256, dtype=torch.float16, device="cuda"))
    t = to_torch_semi_structured(S, backend)
    x = torch.randn(64, 256, dtype=torch.float16, device="cuda")
    ref = fk.sparse_mm(x, S, backend="torch")
    assert rel_err(torch.nn.functional.linear(x, t), ref) < 1e-2
    back = from_torch_semi_structured(t)
    assert torch.equal(back.to_dense(), S.to_dense())


# ---- ARMOR ------------------------------------------------------------------------------------
def _armor_checkpoint(out_f, in_f, bA, bB, naive_norms=False, bias=True, seed=0):
    """An ARMOR_Linear state_dict as LawrenceRLiu/ARMOR saves it, and the W its reconstruct_()
    gives (restated from its Normalizer and BlockwiseDiagMatrix, float64)."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(out_f // bA, bA, bA, generator=g, dtype=torch.float64)
    B = torch.randn(in_f // bB, bB, bB, generator=g, dtype=torch.float64)
    imp = torch.rand(out_f, in_f // 4, 4, generator=g)
    mask = torch.zeros(out_f, in_f // 4, 4, dtype=torch.bool).scatter(
        -1, imp.topk(2, -1).indices, True).reshape(out_f, in_f)
    X = torch.randn(out_f * in_f // 2, generator=g, dtype=torch.float64)
    norm_in = torch.rand(in_f, generator=g, dtype=torch.float64) + 0.5   # norm over dim 0
    norm_out = torch.rand(out_f, generator=g, dtype=torch.float64) + 0.5  # norm over dim 1
    sd = {"A.diag_blocks": A, "B.diag_blocks": B, "naive_compression_module.X": X,
          "naive_compression_module.sparse_mask": mask,
          "normalizer.norms.0": norm_in, "normalizer.norms.1": norm_out,
          "normalizer.zeros.0": torch.empty(0), "normalizer.zeros.1": torch.empty(0)}
    naive = torch.zeros(out_f, in_f, dtype=torch.float64)
    naive[mask] = X
    if naive_norms:
        n0 = torch.rand(in_f, generator=g, dtype=torch.float64) + 0.5
        n1 = torch.rand(out_f, generator=g, dtype=torch.float64) + 0.5
        sd["naive_compression_module.normalizer.norms.0"] = n0
        sd["naive_compression_module.normalizer.norms.1"] = n1
        naive = naive * n1[:, None] * n0[None, :]
    W = torch.block_diag(*A) @ naive @ torch.block_diag(*B)
    W = W * norm_out[:, None] * norm_in[None, :]   # Normalizer.denormalize, norm_order [0, 1]
    if bias:
        sd["bias"] = torch.randn(out_f, generator=g, dtype=torch.float64)
    return sd, W


@pytest.mark.parametrize("out_f,in_f,bA,bB", [(32, 64, 8, 16), (48, 32, 16, 16)])
def test_armor_checkpoint_folds_normalizers_into_a_and_b(out_f, in_f, bA, bB):
    sd, W = _armor_checkpoint(out_f, in_f, bA, bB)
    layer = armor_linear_from_official(sd)
    assert isinstance(layer, ArmorLinear) and layer.block == (bA if bA == bB else (bA, bB))
    assert layer.a_blocks.shape == (out_f // bA, bA, bA)
    assert layer.b_blocks.shape == (in_f // bB, bB, bB)
    assert rel_err(layer.to_dense(), W) < 1e-13
    x = torch.randn(3, in_f, dtype=torch.float64)
    assert rel_err(layer(x), x @ W.T + sd["bias"]) < 1e-13
    # a whole model's state_dict with a prefix, in fp16 (module.to(dtype): the bool mask stays)
    full = {f"model.layers.0.q_proj.{k}": v.half() if v.is_floating_point() else v
            for k, v in sd.items()}
    A, S, B, bias = armor_factors_from_official(full, "model.layers.0.q_proj.")
    assert S.dtype == torch.float16
    assert rel_err(fk.armor_mm(x.half(), A, S, B, bias), x @ W.T + sd["bias"]) < 1e-2


def test_armor_checkpoint_naive_normalizer_and_errors():
    sd, W = _armor_checkpoint(16, 32, 8, 8, naive_norms=True, bias=False)
    with pytest.raises(ValueError, match="pass the norm_order"):
        armor_linear_from_official(sd)
    layer = armor_linear_from_official(sd, naive_norm_order=(0, 1))
    assert layer.bias is None and rel_err(layer.to_dense(), W) < 1e-13
    bad = dict(sd, **{"normalizer.zeros.1": torch.ones(16, dtype=torch.float64)})
    with pytest.raises(ValueError, match="additive zero points"):
        armor_linear_from_official(bad, naive_norm_order=(0, 1))
    mask = sd["naive_compression_module.sparse_mask"].clone()
    mask[3, 4:8] = True
    with pytest.raises(ValueError, match=r"row 3, columns 4\.\.7"):
        armor_factors_from_official(dict(sd, **{"naive_compression_module.sparse_mask": mask,
                                                "naive_compression_module.X": torch.zeros(
                                                    16, 32, dtype=torch.float64)}),
                                    naive_norm_order=(0, 1))
    with pytest.raises(KeyError, match="A.diag_blocks"):
        armor_factors_from_official({})


# ---- LittleBit --------------------------------------------------------------------------------
def _littlebit_pack(Z):
    """LittleBit's packer restated: LSB first, bit 1 = -1, padded with +1 (bit 0)."""
    rows, cols = Z.shape
    bits = (Z < 0).to(torch.int64)
    pad = (-cols) % 32
    bits = torch.cat([bits, bits.new_zeros(rows, pad)], 1).reshape(rows, -1, 32)
    words = (bits << torch.arange(32)).sum(-1)
    return torch.where(words >= 2 ** 31, words - 2 ** 32, words).to(torch.int32)


def _littlebit_checkpoint(out_f, in_f, r, residual, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    sd, paths = {}, []
    for suf in ("", "_R") if residual else ("",):
        U = torch.randn(out_f, r, generator=g)
        V = torch.randn(r, in_f, generator=g)
        U[0, 0] = 0.0  # sign(0) = +1 (SmoothSign's forward)
        scales = {n: torch.rand(1, k, generator=g).to(dtype) + 0.5
                  for n, k in (("u1", out_f), ("u2", r), ("v1", r), ("v2", in_f))}
        sd[f"U{suf}_packed"], sd[f"U{suf}_shape"] = _littlebit_pack(U), torch.tensor([out_f, r])
        sd[f"V{suf}_packed"], sd[f"V{suf}_shape"] = _littlebit_pack(V), torch.tensor([r, in_f])
        sd.update({n + suf: t for n, t in scales.items()})
        paths.append((torch.where(U >= 0, 1.0, -1.0), torch.where(V >= 0, 1.0, -1.0), scales))
    sd.update(_eff_bit_target=torch.tensor(-1.0), _split_dim_final=torch.tensor(r),
              _eff_bit_actual=torch.tensor(1.0))
    return sd, paths


def _littlebit_forward(x, paths):
    """LittleBit's forward restated: ((((x*v2) @ Vq.T) * (v1*u2)) @ Uq.T) * u1, summed."""
    y = 0
    for Uq, Vq, s in paths:
        s = {k: v.double() for k, v in s.items()}
        y = y + ((((x * s["v2"]) @ Vq.double().T) * (s["v1"] * s["u2"])) @ Uq.double().T) \
            * s["u1"]
    return y


@pytest.mark.parametrize("out_f,in_f,r,residual", [(24, 40, 8, True), (33, 70, 40, False)])
def test_littlebit_official_checkpoint(out_f, in_f, r, residual):
    sd, paths = _littlebit_checkpoint(out_f, in_f, r, residual, torch.float32)
    F = LittleBitFactors.from_official(sd)
    assert len(F.terms) == (2 if residual else 1) and F.ranks[0] == r
    x = torch.randn(4, in_f, dtype=torch.float64)
    want = _littlebit_forward(x, paths)
    assert rel_err(x @ F.to(torch.float64).to_dense().T, want) < 1e-6
    sd["bias"] = torch.randn(out_f)
    full = {f"model.mlp.up_proj.{k}": v for k, v in sd.items()}
    layer = littlebit_linear_from_official(full, "model.mlp.up_proj.")
    assert isinstance(layer, LittleBitLinear) and layer.nterms == len(F.terms)
    y = layer(x.float())
    assert rel_err(y, want + sd["bias"].double()) < 1e-5


def test_littlebit_bf16_rows_and_fold_paper_scales():
    sd, paths = _littlebit_checkpoint(16, 32, 8, True, torch.bfloat16)
    F = LittleBitFactors.from_official(sd)
    assert F.dtype == torch.bfloat16 and F.terms[0][2].shape == (16,)
    x = torch.randn(3, 32, dtype=torch.float64)
    assert rel_err(fk.littlebit_mm(x.bfloat16(), F), _littlebit_forward(x, paths)) < 2e-2
    u1, u2, v1, v2 = (torch.rand(1, n) for n in (6, 3, 3, 5))  # the paper's (1, n) rows
    h, l, g = fold_paper_scales(u1, u2, v1, v2)
    assert h.shape == (6,) and l.shape == (3,) and g.shape == (5,)
    assert torch.equal(l, (u2 * v1).reshape(-1))
    with pytest.raises(ValueError, match=r"u2 must be a vector \(n,\) or a row"):
        fold_paper_scales(u1, torch.rand(2, 3), v1, v2)
    with pytest.raises(KeyError, match="U_packed"):
        LittleBitFactors.from_official({})


# ---- fly MonarchLinear ------------------------------------------------------------------------
def _fly_monarch(x, w1, w2, out_f):
    """fly's StructuredLinear + blockdiag_butterfly_multiply (version 2 reference) restated."""
    k, q, p = w1.shape
    l, s, r = w2.shape
    x = torch.nn.functional.pad(x, (0, k * p - x.shape[1]))
    b = x.shape[0]
    out1 = torch.einsum("kqp,bkp->bkq", w1, x.reshape(b, k, p)).reshape(b, r, l).transpose(1, 2)
    return torch.einsum("lsr,blr->bsl", w2, out1).reshape(b, s * l)[:, :out_f]


@pytest.mark.parametrize("in_f,out_f,nblocks", [(24, 40, 4), (50, 30, 4), (64, 64, 8)])
def test_fly_monarch_state_dict_loads_unchanged(in_f, out_f, nblocks):
    shapes = fk.MonarchFactors.fly_shapes(in_f, out_f, nblocks)
    g = torch.Generator().manual_seed(0)
    sd = {"blkdiag1": torch.randn(shapes[0], generator=g, dtype=torch.float64),
          "blkdiag2": torch.randn(shapes[1], generator=g, dtype=torch.float64),
          "bias": torch.randn(out_f, generator=g, dtype=torch.float64)}
    x = torch.randn(5, in_f, dtype=torch.float64)
    want = _fly_monarch(x, sd["blkdiag1"], sd["blkdiag2"], out_f) + sd["bias"]
    plain = MonarchLinear(in_f, out_f, nblocks=nblocks, dtype=torch.float64)
    plain.load_state_dict(sd)  # fly's names and shapes: loads as is
    assert rel_err(plain(x), want) < 1e-12
    layer = monarch_linear_from_fly({f"mlp.fc1.{k}": v for k, v in sd.items()}, in_f, out_f,
                                    prefix="mlp.fc1.")
    assert layer.nblocks == nblocks and rel_err(layer(x), want) < 1e-12
    with pytest.raises(ValueError, match="are not those of"):
        monarch_linear_from_fly(sd, in_f + 40, out_f)
