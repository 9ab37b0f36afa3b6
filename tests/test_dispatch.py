"""auto from verification records, on the CPU: the record format, the staleness rule, the
decision table, auto through dispatch on a stand-in GPU (test kernels from fk_test_plugins),
resolution under torch.compile(fullgraph=True), one rule for backend names, the popcount path's
inference-only error, and the prepared-layout cache."""

import copy
import json
import os

import pytest
import torch

import factorkern as fk
from factorkern import dispatch, layouts, records
from factorkern.records import Table

from fk_test_plugins import plugins  # noqa: F401  (fixture)

FAKE_GPU = {"type": "cuda", "name": "Test GPU 80GB", "capability": [9, 0], "sms": 132}
SOFTWARE = {"driver": "550.54.15", "cuda": "12.4", "torch": "2.5.1", "triton": "3.1.0",
            "factorkern": "0.1.0",
            "sources": {"library": "L", "triton": "T", "cuda": "C", "test_good": "G",
                        "test_wrong": "W"}}


def _row(backend="test_good", *, status="pass", ms=1.0, library_ms=2.0, m=5, cls="S-a8",
         dtype="float32", op="lowrank_mm", source="verify"):
    return {"op": op, "backend": backend, "dtype": dtype, "out": 16, "in": 32,
            "sizes": {"r": 8}, "shape_class": cls, "m": m, "m_bucket": records.m_bucket(m),
            "status": status, "rel_err": 1e-7, "tol": 1e-5, "detail": "", "ms": ms,
            "library_ms": library_ms, "dense_ms": 1.5, "library_rel_err": 1e-7,
            "source": source}


def _record(rows, kernels=None, device=FAKE_GPU, software=SOFTWARE, interpreted=False):
    rec = records.new_record(copy.deepcopy(device), copy.deepcopy(software),
                             interpreted=interpreted, quick=False, settings={})
    rec["rows"] = rows
    seen = {(r["op"], r["backend"], r["dtype"]) for r in rows}
    rec["kernels"] = kernels if kernels is not None else [
        {"op": o, "backend": b, "dtype": d, "status": "passed", "detail": ""}
        for o, b, d in sorted(seen)]
    return rec


def test_importing_the_test_plugins_registers_nothing_in_this_process():
    # Test files import fk_test_plugins for its fixture; kernels that exit or hang must reach
    # only verification children (FACTORKERN_PLUGINS) and the fixture's table copies, never the
    # tables every later test walks (fk.backends(), property tests over all backends).
    import fk_test_plugins

    assert not set(fk_test_plugins.KERNELS) & set(dispatch._BACKENDS)
    assert not set(fk_test_plugins.KERNELS) & set(fk.backends())


def test_the_plugins_fixture_registers_into_copies(plugins):
    assert set(plugins.KERNELS) <= set(fk.backends())


# ---- cells -----------------------------------------------------------------------------------
def test_m_bucket_and_shape_class():
    assert [records.m_bucket(m) for m in (1, 2, 16, 17, 128, 129, 8192)] == \
        ["1", "2-16", "2-16", "17-128", "17-128", "129+", "129+"]
    assert records.shape_class({"out": 4096, "in": 4096, "k": 2048}) == "L-a128"
    assert records.shape_class({"out": 768, "in": 768, "r": 192}) == "S-a16"
    assert records.shape_class({"out": 1000, "in": 1504, "k": 752}) == "M-a8"
    assert records.shape_class({"out": 1000, "in": 1500, "k": 752}) == "M-a1"
    assert records.shape_class({"out": 300, "in": 4100}) == "M-a1"
    with pytest.raises(ValueError):
        records.m_bucket(0)


# ---- staleness ------------------------------------------------------------------------------
def _changed(path, value):
    soft = copy.deepcopy(SOFTWARE)
    d = soft
    for k in path[:-1]:
        d = d[k]
    d[path[-1]] = value
    return soft


@pytest.mark.parametrize("path,value,whole,backend_stale", [
    (("driver",), "550.90.07", False, None),          # same driver branch: still good
    (("driver",), "560.28.03", True, None),           # another major: stale
    (("cuda",), "12.6", True, None),
    (("torch",), "2.5.2", True, None),
    (("factorkern",), "0.2.0", True, None),
    (("sources", "library"), "L2", True, None),
    (("triton",), "3.2.0", False, "triton"),          # only the Triton rows
    (("sources", "triton"), "T2", False, "triton"),
    (("sources", "cuda"), "C2", False, "cuda"),
])
def test_staleness_rule_field_by_field(path, value, whole, backend_stale):
    rec = _record([_row()], kernels=[{"op": "lowrank_mm", "backend": b, "dtype": "float16",
                                      "status": "passed", "detail": ""}
                                     for b in ("triton", "cuda", "test_good")])
    why, stale = records.check(rec, FAKE_GPU, _changed(path, value), gpu=True)
    assert (why is not None) == whole, why
    if backend_stale:
        assert set(stale) == {backend_stale}
    elif not whole:
        assert stale == {}


def test_record_of_another_device_or_interpreted_is_not_used():
    rec = _record([_row()])
    for k, v in (("name", "Other GPU"), ("capability", [8, 0]), ("sms", 114), ("type", "cpu")):
        assert "another device" in records.check(rec, dict(FAKE_GPU, **{k: v}), SOFTWARE,
                                                 gpu=True)[0]
    interp = _record([_row()], interpreted=True)
    assert "interpreter" in records.check(interp, FAKE_GPU, SOFTWARE, gpu=True)[0]
    assert records.check(dict(rec, schema=99), FAKE_GPU, SOFTWARE, gpu=True)[0]
    assert records.check(rec, FAKE_GPU, SOFTWARE, gpu=True) == (None, {})


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(records.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(records, "shipped_dir", lambda: tmp_path / "shipped")
    (tmp_path / "shipped").mkdir()
    return tmp_path


def test_find_prefers_cache_skips_stale_and_other_devices(cache):
    other = _record([_row()], device=dict(FAKE_GPU, sms=114))
    stale = _record([_row()], software=_changed(("torch",), "2.4.0"))
    good = _record([_row()])
    shipped = _record([_row(ms=1.5)])
    records.save(other, cache / "cache" / "records" / "a.json")
    records.save(stale, cache / "cache" / "records" / "b.json")
    records.save(good, cache / "cache" / "records" / "c.json")
    records.save(shipped, cache / "shipped" / "d.json")
    found = records.find(FAKE_GPU, SOFTWARE)
    assert found.path.endswith("c.json")
    assert any("torch 2.4.0 -> 2.5.1" in n for n in found.notes)
    os.unlink(cache / "cache" / "records" / "c.json")
    assert records.find(FAKE_GPU, SOFTWARE).path.endswith("d.json")     # then the shipped one
    os.unlink(cache / "shipped" / "d.json")
    found = records.find(FAKE_GPU, SOFTWARE)
    assert found.record is None and found.notes


def test_corrupt_or_half_written_cache_files_are_ignored_with_a_warning(cache):
    folder = cache / "cache" / "records"
    good = records.save(_record([_row()]), folder / "good.json")
    text = good.read_text()
    (folder / "half.json").write_text(text[: len(text) // 2])     # a write cut short
    (folder / "junk.json").write_bytes(b"\x00\xff not json")
    (folder / "list.json").write_text("[1, 2]")
    bad_row = _record([_row()])
    bad_row["rows"][0]["m"] = "five"
    records.save(bad_row, folder / "badrow.json")
    (folder / "nodevice.json").write_text(json.dumps(dict(_record([_row()]), device=[1])))
    with pytest.warns(RuntimeWarning, match="ignoring the verification record") as w:
        found = records.find(FAKE_GPU, SOFTWARE)
    assert found.path.endswith("good.json")
    assert {os.path.basename(str(x.message).split(": ")[1]) for x in w} >= {
        "half.json", "junk.json", "list.json", "badrow.json", "nodevice.json"}


def test_save_is_atomic(tmp_path):
    path = tmp_path / "r.json"
    records.save(_record([_row()]), path)
    before = path.read_text()
    bad = _record([_row()])
    bad["rows"][0]["ms"] = object()          # not serializable: fails halfway through
    with pytest.raises(TypeError):
        records.save(bad, path)
    assert path.read_text() == before        # the old record is intact
    assert os.listdir(tmp_path) == ["r.json"]  # and no temporary file is left


# ---- decisions --------------------------------------------------------------------------------
def test_table_takes_a_kernel_only_where_it_passed_and_was_faster():
    t = Table(_record([_row(m=5), _row(m=16)]))
    assert t.choice("lowrank_mm", "float32", "2-16", "S-a8")[0] == "test_good"
    assert t.proven("lowrank_mm", "test_good")
    assert t.choice("lowrank_mm", "float32", "1", "S-a8")[0] is None          # no row there
    assert t.choice("lowrank_mm", "float16", "2-16", "S-a8")[0] is None
    slower = Table(_record([_row(m=5), _row(m=16, ms=3.0)]))                   # slower at one
    b, why = slower.choice("lowrank_mm", "float32", "2-16", "S-a8")
    assert b is None and "not faster" in why
    failed = Table(_record([_row(m=5), _row(m=16, status="fail")]))
    assert failed.choice("lowrank_mm", "float32", "2-16", "S-a8")[0] is None
    untimed = Table(_record([_row(ms=None)]))
    assert "not timed" in untimed.choice("lowrank_mm", "float32", "2-16", "S-a8")[1]


@pytest.mark.parametrize("status", ["failed", "crashed", "timeout", "incomplete", "refused"])
def test_table_never_takes_a_kernel_whose_run_was_not_clean(status):
    # Passed and faster in this cell, but the kernel failed (or crashed...) somewhere else.
    rec = _record([_row()], kernels=[{"op": "lowrank_mm", "backend": "test_good",
                                      "dtype": "float32", "status": status, "detail": "x"}])
    b, why = Table(rec).choice("lowrank_mm", "float32", "2-16", "S-a8")
    assert b is None and status in why
    assert not Table(rec).proven("lowrank_mm", "test_good")


def test_table_stale_backend_refused_rows_sweep_rows_and_best_of_two():
    rows = [_row(), _row("test_wrong", ms=0.5)]
    assert Table(_record(rows)).choice("lowrank_mm", "float32", "2-16", "S-a8")[0] == \
        "test_wrong"                                                  # 4x beats 2x
    stale = Table(_record(rows), stale={"test_wrong": "sources changed"})
    assert stale.choice("lowrank_mm", "float32", "2-16", "S-a8")[0] == "test_good"
    refused = Table(_record([_row(status="refused"), _row()]))
    assert refused.choice("lowrank_mm", "float32", "2-16", "S-a8")[0] == "test_good"
    only_refused = Table(_record([_row(status="refused")]))
    assert only_refused.choice("lowrank_mm", "float32", "2-16", "S-a8")[0] is None
    sweep_only = Table(_record([_row(source="sweep")]))
    assert sweep_only.choice("lowrank_mm", "float32", "2-16", "S-a8")[0] is None
    vetoed = Table(_record([_row(), _row(m=8, ms=5.0, source="sweep")]))
    assert vetoed.choice("lowrank_mm", "float32", "2-16", "S-a8")[0] is None


def test_merge_keeps_the_kernels_a_limited_run_did_not_cover():
    old = _record([_row(), _row("test_wrong")])
    new = _record([_row(ms=0.5)])
    merged = records.merge(old, new)
    assert sorted((r["backend"], r["ms"]) for r in merged["rows"]) == [
        ("test_good", 0.5), ("test_wrong", 1.0)]
    assert {k["backend"] for k in merged["kernels"]} == {"test_good", "test_wrong"}


def test_extend_replaces_same_rows_of_the_same_source():
    rec = _record([_row()])
    records.extend(rec, [_row(ms=0.9, source="x")])
    records.extend(rec, [_row(ms=0.8, source="x")])
    assert [(r["source"], r["ms"]) for r in rec["rows"]] == [("verify", 1.0), ("sweep", 0.8)]


# ---- auto through dispatch, on a stand-in GPU ---------------------------------------------------
@pytest.fixture
def fake_gpu(plugins, cache, monkeypatch):
    """auto treats CPU tensors as if on FAKE_GPU, whose record is read from the cache."""
    monkeypatch.setattr(dispatch, "_auto_device", lambda x: "cuda:fake")
    monkeypatch.setattr(dispatch, "_report_device", lambda: "cuda:fake")
    monkeypatch.setattr(dispatch, "_TABLES", {})
    monkeypatch.setattr(records, "device_key", lambda device=None: dict(FAKE_GPU))

    def write(rec):
        dispatch.reload_records()
        return records.save(rec, cache / "cache" / "records" / "fake.json")
    return write


def _lowrank(r=8, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    U = torch.randn(16, r, generator=g, dtype=dtype)
    V = torch.randn(32, r, generator=g, dtype=dtype)
    return U, V


def test_auto_runs_a_kernel_only_where_the_record_backs_it(fake_gpu):
    soft = records.software_key()
    rows = [_row(m=5), _row(m=16), _row("test_wrong", ms=0.1),
            _row("test_good", m=3, dtype="float64", ms=5.0)]
    kernels = [{"op": "lowrank_mm", "backend": "test_good", "dtype": d, "status": "passed",
                "detail": ""} for d in ("float32", "float64")] + [
        {"op": "lowrank_mm", "backend": "test_wrong", "dtype": "float32", "status": "failed",
         "detail": "wrong at M=17"}]
    fake_gpu(_record(rows, kernels, software=soft))
    U, V = _lowrank()
    x = torch.randn(5, 32)
    assert dispatch.resolve("lowrank_mm", "auto", x, U, V) == "test_good"
    for other, why in ((torch.randn(1, 32), "no row"),                   # M bucket not backed
                       (torch.randn(5, 32, dtype=torch.float64), "not faster"),
                       (torch.randn(300, 32), "no row")):
        U2, V2 = (U, V) if other.dtype == torch.float32 else _lowrank(dtype=torch.float64)
        backend, reason = dispatch.explain("lowrank_mm", other, U2, V2)
        assert backend == "torch" and why in reason
    U3, V3 = _lowrank(r=72)                                               # another shape class
    assert dispatch.explain("lowrank_mm", x, U3, V3)[0] == "torch"
    before = plugins_calls()
    y = fk.lowrank_mm(x, U, V)                                           # runs the test kernel
    assert plugins_calls() == before + 1
    torch.testing.assert_close(y, x @ V @ U.T, rtol=1e-5, atol=1e-5)
    info = fk.backends()
    assert info["test_good"]["ops"] == {"lowrank_mm": "proven"}
    assert info["test_wrong"]["ops"] == {"lowrank_mm": "unproven"}
    assert info["auto"]["record"].endswith("fake.json")
    assert info["auto"]["ops"]["lowrank_mm"].startswith("test_good for float32 M 2-16 S-a8")
    assert info["auto"]["ops"]["monarch_mm"].startswith("torch (library path) everywhere")


def plugins_calls():
    import fk_test_plugins

    return fk_test_plugins.CALLS["good"]


def test_auto_falls_back_when_the_kernel_does_not_take_the_call(fake_gpu, monkeypatch):
    fake_gpu(_record([_row(cls="S-a8")], software=records.software_key()))
    monkeypatch.setattr(dispatch._KERNELS[("lowrank_mm", "test_good")], "supports",
                        lambda x, U, V, *_: "not today")
    U, V = _lowrank()
    backend, why = dispatch.explain("lowrank_mm", torch.randn(5, 32), U, V)
    assert backend == "torch" and "not today" in why


def test_auto_without_usable_record_says_to_run_verify(fake_gpu):
    fake_gpu(_record([_row()], software=dict(records.software_key(), torch="0.0.1")))  # stale
    U, V = _lowrank()
    backend, why = dispatch.explain("lowrank_mm", torch.randn(5, 32), U, V)
    assert backend == "torch" and "python -m factorkern.verify" in why and "torch 0.0.1" in why
    auto = fk.backends()["auto"]
    assert auto["record"] is None and "python -m factorkern.verify" in auto["reason"]
    assert set(auto["ops"].values()) == {"torch (library path): no record"}


def test_auto_on_the_cpu_is_the_library_path_whatever_the_records(plugins, cache):
    records.save(_record([_row()], software=records.software_key(),
                         device=records.device_key()), cache / "cache" / "records" / "cpu.json")
    U, V = _lowrank()
    backend, why = dispatch.explain("lowrank_mm", torch.randn(5, 32), U, V)
    assert backend == "torch" and "library path" in why
    assert fk.backends()["auto"]["record"] is None


def test_resolution_is_static_under_torch_compile(fake_gpu, monkeypatch):
    fake_gpu(_record([_row()], software=records.software_key()))
    lookups = []
    table = dispatch._table
    monkeypatch.setattr(dispatch, "_table", lambda d: lookups.append(d) or table(d))
    import sys

    monkeypatch.setattr(sys.modules["factorkern.verify"], "verify",
                        lambda *a, **k: pytest.fail("verify ran"))
    monkeypatch.setattr(fk, "verify", lambda *a, **k: pytest.fail("verify ran"))
    U, V = _lowrank()
    fn = torch.compile(lambda x: fk.lowrank_mm(x, U, V), fullgraph=True)
    before = plugins_calls()
    x = torch.randn(5, 32)
    for _ in range(3):
        torch.testing.assert_close(fn(x), x @ V @ U.T, rtol=1e-5, atol=1e-5)
    assert plugins_calls() == before + 3      # the kernel the record backs runs every call
    assert len(lookups) == 1                  # the record was consulted once, while tracing


# ---- names, inference-only ----------------------------------------------------------------------
def test_backend_names_follow_one_rule_for_argument_and_environment(monkeypatch):
    U, V = _lowrank()
    x = torch.randn(3, 32)
    want = fk.lowrank_mm(x, U, V, backend="torch")
    for name in ("TORCH", " Torch ", "torch"):
        torch.testing.assert_close(fk.lowrank_mm(x, U, V, backend=name), want)
        monkeypatch.setenv("FACTORKERN_BACKEND", name)
        torch.testing.assert_close(fk.lowrank_mm(x, U, V), want)
    monkeypatch.setenv("FACTORKERN_BACKEND", "AUTO")
    torch.testing.assert_close(fk.lowrank_mm(x, U, V), want)
    monkeypatch.delenv("FACTORKERN_BACKEND")
    with pytest.raises(RuntimeError, match="backend 'cuda'"):       # known, unavailable here
        fk.lowrank_mm(x, U, V, backend="CUDA")
    with pytest.raises(ValueError, match="backend must be one of"):
        fk.lowrank_mm(x, U, V, backend="Cudnn")
    with pytest.raises(TypeError, match="backend must be a str"):
        fk.lowrank_mm(x, U, V, backend=3)


def test_popcount_backward_says_it_is_inference_only():
    F = fk.LittleBitFactors.from_real([(torch.randn(8, 4), torch.randn(32, 4), torch.rand(8),
                                        torch.rand(4), torch.rand(32))])
    x = torch.randn(2, 32, requires_grad=True)
    y = fk.littlebit_mm(x, F, quantize_activations=True)
    with pytest.raises(RuntimeError, match="inference-only"):
        y.sum().backward()
    with torch.no_grad():
        fk.littlebit_mm(x, F, quantize_activations=True)   # the forward itself is fine


# ---- prepared layouts ---------------------------------------------------------------------------
def test_layout_built_once_per_factor_across_layer_calls(monkeypatch):
    from factorkern.formats._common import _LAYOUTS

    built = []
    fn = _LAYOUTS[("Sparse24", "torch")]
    monkeypatch.setitem(_LAYOUTS, ("Sparse24", "torch"), lambda S: built.append(1) or fn(S))
    layer = fk.nn.DenseSparseLinear(32, 16, k=16)
    x = torch.randn(4, 32)
    with torch.no_grad():
        y1 = layer(x)
        y2 = layer(x)                      # a new Sparse24 object around the same tensors
        assert len(built) == 1 and torch.equal(y1, y2)
        layer.s_values.mul_(2)             # in-place update: rebuilt
        y3 = layer(x)
        assert len(built) == 2
        torch.testing.assert_close(y3, x @ (layer.D @ layer.S.to_dense()).T + layer.bias)
    layer.train()
    layer(x).sum().backward()              # grads flow into the factors: never cached
    layer(x).sum().backward()
    assert len(built) == 4
    n = len(layouts._PREPARED)
    del layer
    import gc

    gc.collect()
    assert len(layouts._PREPARED) < n     # freed with the factor



def test_sm90_kernels_are_registered_for_verification_and_refuse_clearly_here():
    ks = dispatch.kernels("cuda_sm90")
    assert {op for op, _ in ks} == {"dense_sparse_mm", "sparse_dense_mm", "armor_mm",
                                    "sparse_mm"}
    assert all(k.supports is not None for k in ks.values())
    if not torch.cuda.is_available():
        S = fk.prune_24(torch.randn(16, 32).half())
        with pytest.raises(RuntimeError, match="backend 'cuda_sm90' is not available"):
            fk.sparse_mm(torch.randn(2, 32).half(), S, backend="CUDA_SM90")
