"""bench/: the roofline arithmetic against hand counts, and the sweep end to end on the CPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench import baselines, cases, measure, report, roofline, shapes, sweep

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = ("op", "shape", "M", "dtype", "backend", "ms", "tflops", "gbps", "roofline_pct",
            "speedup_vs_dense")


# ---------------------------------------------------------------------------------------------
# roofline: hand counts (b = 2 bytes per value)
# ---------------------------------------------------------------------------------------------
HAND = [
    # op, M, out, in, sizes, flops, factor bytes
    # dense: 2*3*8*16; 8*16*2
    ("dense", 3, 8, 16, {}, 768, 256),
    # S (8, 16) 2:4: 2*2*8*16/2; 64 kept * 2 B + 64 * 2 bit
    ("sparse_mm", 2, 8, 16, {}, 256, 128 + 16),
    # D (8, 8) @ S (8, 16) 2:4: 2*2*(8*16/2 + 8*8); D 128 B + S 64 kept * 2 B + 64 * 2 bit
    ("dense_sparse_mm", 2, 8, 16, {"k": 8}, 512, 128 + 128 + 16),
    # S (8, 8) 2:4 @ D (8, 16): 2*2*(8*16 + 8*8/2); S 32 kept: 64 + 8, D 256
    ("sparse_dense_mm", 2, 8, 16, {"k": 8}, 640, 72 + 256),
    # A 2 blocks of 4, S (8, 16) 2:4, B 2 blocks of 8: 2*1*(16*8 + 64 + 8*4); 64 + 144 + 256
    ("armor_mm", 1, 8, 16, {"block_a": 4, "block_b": 8}, 448, 64 + 144 + 256),
    # 2 terms, r 4: 2*2*4*4*(16+8); per term 4*24 bits = 12 B + (8+4+16)*2 B
    ("littlebit_mm", 4, 8, 16, {"rank": 4, "terms": 2}, 1536, 2 * (12 + 56)),
    # w1 (2, 4, 8), w2 (2, 4, 4): 2*3*(64 + 32); 96 * 2
    ("monarch_mm", 3, 8, 16, {"w1": (2, 4, 8), "w2": (2, 4, 4)}, 576, 192),
    # r 4: 2*2*4*24; 4*24*2
    ("lowrank_mm", 2, 8, 16, {"rank": 4}, 384, 192),
]


@pytest.mark.parametrize("op,m,out_f,in_f,sizes,want_flops,want_fbytes", HAND,
                         ids=[h[0] for h in HAND])
def test_roofline_hand_counts(op, m, out_f, in_f, sizes, want_flops, want_fbytes):
    assert roofline.flops(op, m, out_f, in_f, **sizes) == want_flops
    assert roofline.factor_bytes(op, out_f, in_f, 2, **sizes) == want_fbytes
    # x read once, y written once, the factors once.
    assert roofline.min_bytes(op, m, out_f, in_f, 2, **sizes) == 2 * m * (in_f + out_f) + \
        want_fbytes
    assert roofline.compression(op, out_f, in_f, 2, **sizes) == pytest.approx(
        out_f * in_f * 2 / want_fbytes)


def test_roofline_floor_and_littlebit_bits_per_weight():
    # Bytes bound and compute bound sides of the floor.
    assert roofline.floor_seconds(1e12, 1e9, 1.0, 1000.0) == pytest.approx(1.0)
    assert roofline.floor_seconds(1e9, 3e12, 1.0, 1000.0) == pytest.approx(3.0)
    # LittleBit's published bits per weight with the residual path, a = in, b = out:
    # (2r(a+b+16) + 32(a+b)) / (ab).
    a, b, r = 4096, 11008, 256
    bits = roofline.factor_bytes("littlebit_mm", b, a, 2, rank=r, terms=2) * 8 / (a * b)
    assert bits == pytest.approx((2 * r * (a + b + 16) + 32 * (a + b)) / (a * b))
    with pytest.raises(ValueError, match="unknown op"):
        roofline.flops("nope", 1, 2, 2)


def _stored_bytes(factors):
    n = 0
    for v in factors.values():
        n += sum(t.numel() * t.element_size() for t in (
            v.tensors() if hasattr(v, "tensors") else [v]))
    return n


@pytest.mark.parametrize("op", roofline.OPS)
def test_roofline_factor_bytes_match_stored_factors(op):
    # At sizes where nothing pads (multiples of 32), the counted bytes are the stored bytes.
    shape = shapes.Shape(64, 128)
    fs = cases.FactorSizes(littlebit_rank=32)
    gen = torch.Generator().manual_seed(0)
    for case in cases.make_cases(op, shape, fs):
        f = case.build(torch.float16, torch.device("cpu"), gen)
        assert _stored_bytes(f) == roofline.factor_bytes(op, 64, 128, 2, **case.sizes)


# ---------------------------------------------------------------------------------------------
# shapes, baselines
# ---------------------------------------------------------------------------------------------
def test_shapes():
    s = shapes.parse_shape("4096x11008")
    assert (s.out, s.inp, s.name) == (4096, 11008, "4096x11008")
    for bad in ("4096", "0x5", "ax4"):
        with pytest.raises(ValueError, match="OUTxIN"):
            shapes.parse_shape(bad)
    got = shapes.model_shapes(["bert-base", "llama3-8b"])
    assert [x.name for x in got] == ["768x768", "3072x768", "768x3072", "1024x4096",
                                     "14336x4096", "4096x14336"]
    with pytest.raises(ValueError, match="unknown model"):
        shapes.model_shapes(["gpt-5"])
    assert cases.monarch_nblocks("sqrt", 4096, 4096) == 64
    assert cases.monarch_nblocks("sqrt", 3072, 768) == 32


@pytest.mark.parametrize("op", roofline.OPS)
def test_baselines_compute_the_same_product(op):
    shape = shapes.Shape(96, 160)
    gen = torch.Generator().manual_seed(1)
    cpu = torch.device("cpu")
    for case in cases.make_cases(op, shape, cases.FactorSizes(littlebit_rank=24)):
        f = case.build(torch.float32, cpu, gen)
        x = torch.randn(5, 160, generator=gen)
        want = case.call({k: v.to(torch.float64) for k, v in f.items()}, x.double(), "torch")
        for name in baselines.NAMES:
            if name == "dense" or baselines.applies(name, op, cpu, torch.float32) is not None:
                continue
            y = baselines.build(name, case, f, torch.float32, cpu, gen)(x)
            err = ((y.double() - want).norm() / want.norm()).item()
            assert err < 1e-5, (op, case.config, name, err)


# ---------------------------------------------------------------------------------------------
# the sweep
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("FACTORKERN_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_sweep_quick_cpu(tmp_path, cache_dir, capsys):
    """The CI sweep: the default --quick (on the CPU: bert-base, M 1 and 16, fp32)."""
    out = tmp_path / "rows.json"
    assert sweep.main(["--quick", "--json", str(out), "--rep-ms", "2", "--warmup-ms", "0"]) == 0
    text = capsys.readouterr().out
    rows = json.loads(out.read_text())
    assert "## Decode" in text and "## Summary" in text
    assert (cache_dir / "roofline.json").exists()
    assert {r["op"] for r in rows} == set(roofline.OPS)
    for r in rows:
        assert all(k in r for k in REQUIRED)
        if r["backend"] not in ("fk:torch", "dense", "composite", "fly-bmm"):
            continue  # a GPU kernel under development may fail here: its own tests say why
        assert r["error"] is None, r
        assert r["ms"] > 0 and r["tflops"] > 0 and r["gbps"] > 0 and r["roofline_pct"] > 0
        if r["backend"] == "dense":
            assert r["speedup_vs_dense"] == pytest.approx(1.0)
        else:
            assert r["ok"], r  # every factored row matches the float64 reference
    if not torch.cuda.is_available():
        assert "GPU numbers need a GPU" in text
        assert {r["shape"] for r in rows} == {"768x768", "3072x768", "768x3072"}
        assert {r["M"] for r in rows} == {1, 16}
        assert {r["backend"] for r in rows} == {"fk:torch", "dense", "composite", "fly-bmm"}


def test_sweep_rotation_errors_and_rerender(tmp_path, cache_dir, capsys, monkeypatch):
    # Pretend there is a 64 KiB L2 so the CPU run rotates copies of inputs and factors (the GPU
    # path), and make one baseline raise: it becomes an error cell, not a crash. 64x130 cannot
    # hold a 2:4 factor along in = 130: error rows too.
    monkeypatch.setattr(measure, "l2_bytes", lambda device: 64 << 10)
    real_build = baselines.build

    def flaky(name, *a, **k):
        if name == "composite":
            raise RuntimeError("boom")
        return real_build(name, *a, **k)

    monkeypatch.setattr(baselines, "build", flaky)
    out = tmp_path / "rows.json"
    sweep.main(["--shape", "64x128", "--shape", "64x130", "--m", "1,32", "--ops",
                "dense_sparse,monarch,lowrank", "--json", str(out), "--rep-ms", "1"])
    text = capsys.readouterr().out
    rows = json.loads(out.read_text())
    ok = [r for r in rows if r["shape"] == "64x128" and r["backend"] != "composite"]
    assert ok and all(r["ms"] > 0 and r["rotations"] > 1 for r in ok)
    assert all(r["ok"] for r in ok if r["backend"] != "dense")
    comp = [r for r in rows if r["backend"] == "composite" and r["shape"] == "64x128"]
    assert comp and all(r["ms"] is None and "boom" in r["error"] for r in comp)
    bad = [r for r in rows if r["shape"] == "64x130" and r["op"] == "dense_sparse_mm"]
    assert {r["backend"] for r in bad} == {"fk:torch", "dense", "composite"}
    assert all(r["error"].startswith("building factors") for r in bad if r["backend"] != "dense")
    assert all(r["ms"] > 0 for r in bad if r["backend"] == "dense")  # dense needs no factors
    assert "error: RuntimeError: boom" in text
    assert "## Prefill" in text and "| 32 |" in text

    # Re-render the saved rows (how a sweep split by --shapes is merged).
    merged = tmp_path / "merged.json"
    assert sweep.main(["--from-json", f"{out},{out}", "--json", str(merged)]) == 0
    assert len(json.loads(merged.read_text())) == 2 * len(rows)
    assert "re-rendered" in capsys.readouterr().out


def test_sweep_module_entry_point(tmp_path):
    """`python -m bench.sweep` from the repository root exits 0; --plot writes a PNG, or says
    that it needs matplotlib."""
    env = dict(os.environ, FACTORKERN_CACHE_DIR=str(tmp_path / "cache"))
    png = tmp_path / "speedup.png"
    p = subprocess.run([sys.executable, "-m", "bench.sweep", "--shape", "64x128", "--m", "1",
                        "--ops", "lowrank_mm", "--plot", str(png), "--rep-ms", "1"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "lowrank_mm" in p.stdout
    if report.have_matplotlib():
        assert png.stat().st_size > 0
    else:
        assert "needs matplotlib" in p.stderr and not png.exists()


def test_plot(tmp_path):
    pytest.importorskip("matplotlib")
    rows = []
    for shape in ("64x128", "128x64"):
        for m in (1, 16, 128):
            for backend, kind, ms in (("fk:torch", "factorkern", 1.0), ("dense", "baseline", 2.0),
                                      ("composite", "baseline", 1.5)):
                rows.append({"op": "lowrank_mm", "config": "r=32", "shape": shape, "M": m,
                             "dtype": "float16", "backend": backend, "kind": kind, "ms": ms,
                             "speedup_vs_dense": 2.0 / ms, "device": "test"})
    path = tmp_path / "p.png"
    report.plot(rows, path)
    assert path.stat().st_size > 1000


def test_sweep_littlebit_quantized_variant(tmp_path, cache_dir, monkeypatch):
    """A backend registering LittleBit's opt-in popcount op gets a ``fk:<backend>:popcount`` row,
    checked against the exact reference with the looser quantized tolerance. Stand-in kernel:
    the quantized reference registered for the triton backend (restored after the test)."""
    from factorkern import dispatch

    if measure.QUANTIZED_OP not in dispatch.OPS:
        pytest.skip("this factorkern has no quantized LittleBit op")
    if not torch.cuda.is_available():
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    if not dispatch.availability("triton")[0] and dispatch.availability("triton")[1].startswith(
            "triton is not importable"):
        pytest.skip("triton is not importable")
    fake = dispatch.Kernel(measure.QUANTIZED_OP, "triton",
                           dispatch._REFERENCE[measure.QUANTIZED_OP])
    monkeypatch.setitem(dispatch._KERNELS, (measure.QUANTIZED_OP, "triton"), fake)
    # Keep only the stand-in on the triton side (a real triton LittleBit kernel would run in the
    # interpreter here: not what this test is about).
    monkeypatch.delitem(dispatch._KERNELS, ("littlebit_mm", "triton"), raising=False)
    out = tmp_path / "rows.json"
    sweep.main(["--backends", "torch,triton", "--ops", "littlebit", "--shape", "64x128",
                "--littlebit-r", "32", "--m", "3", "--json", str(out), "--rep-ms", "1"])
    rows = {r["backend"]: r for r in json.loads(out.read_text())}
    q = rows["fk:triton:popcount"]
    assert q["ms"] > 0 and q["ok"] and 1e-4 < q["rel_err"] < 2e-2
    assert rows["fk:torch"]["rel_err"] < 1e-5


@pytest.mark.gpu
def test_sweep_gpu_smoke(tmp_path, cache_dir):
    """On a GPU: L2-cold rotation, CUDA-graph timing, the ceilings measured and cached, and the
    torch 2:4 baseline present for the sparse ops."""
    out = tmp_path / "rows.json"
    sweep.main(["--ops", "dense_sparse,monarch,lowrank", "--shape", "4096x4096", "--m", "1,2048",
                "--json", str(out), "--rep-ms", "10"])
    rows = json.loads(out.read_text())
    dense = [r for r in rows if r["backend"] == "dense"]
    assert dense and all(r["error"] is None and r["timer"] == "graph" for r in dense)
    assert all(r["rotations"] > 1 for r in dense if r["M"] == 1)
    assert any(r["backend"] == "torch-2:4" for r in rows)
    ok = [r for r in rows if r["backend"] in ("fk:torch", "composite", "fly-bmm", "torch-2:4")]
    assert ok and all(r["error"] is None and r["ok"] for r in ok), ok
    peaks = json.loads((cache_dir / "roofline.json").read_text())
    entry = next(iter(peaks.values()))
    assert entry["bandwidth_gbps"] > 500 and entry["matmul_tflops"]["bfloat16"] > 50
