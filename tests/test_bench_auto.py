"""bench.sweep and auto: the rows auto takes are marked, and on a GPU the sweep's kernel rows
extend the device's verification record (only ever removing cells auto takes)."""

import json

import torch

from factorkern import records
from factorkern.records import Table

from fk_test_plugins import plugins  # noqa: F401  (fixture)
from test_dispatch import _record, _row, cache, fake_gpu  # noqa: F401  (fixtures)


def test_sweep_marks_the_rows_auto_takes(tmp_path, monkeypatch):
    from bench import sweep

    monkeypatch.setenv(records.CACHE_ENV, str(tmp_path))
    out = tmp_path / "rows.json"
    sweep.main(["--ops", "lowrank", "--shape", "64x128", "--m", "1,16", "--json", str(out),
                "--no-progress", "--rep-ms", "1", "--warmup-ms", "1"])
    rows = json.loads(out.read_text())
    assert {r["M"] for r in rows if r["auto"]} == {1, 16}
    assert all(r["backend"] == "fk:torch" for r in rows if r["auto"])   # the CPU: library path
    assert not any(r["auto"] for r in rows if r["kind"] == "baseline")


def _sweep_group(m, kernel_ms, ok=True):
    base = {"op": "lowrank_mm", "config": "r=8", "shape": "16x32", "M": m, "dtype": "float32",
            "shape_class": "S-a8", "error": None}
    return [dict(base, backend="fk:torch", kind="factorkern", ms=2.0, rel_err=1e-7, ok=True),
            dict(base, backend="fk:test_good", kind="factorkern", ms=kernel_ms, rel_err=1e-7,
                 ok=ok),
            dict(base, backend="fk:test_good:popcount", kind="factorkern", ms=0.1,
                 rel_err=1e-7, ok=True),
            dict(base, backend="dense", kind="baseline", ms=1.5, rel_err=None)]


def test_sweep_rows_extend_the_record_and_can_only_remove_cells(fake_gpu, monkeypatch):
    from bench import auto

    path = fake_gpu(_record([_row(m=5)], software=records.software_key()))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    notes = []
    rows = _sweep_group(8, 1.0) + _sweep_group(1, 0.5)        # M=1: a cell verify never saw
    assert auto.extend_record(rows, {"float32": 1e-4}, notes) == str(path)
    saved = records.load(path)
    sweep_rows = [r for r in saved["rows"] if r["source"] == "sweep"]
    assert {(r["backend"], r["m"], r["library_ms"], r["dense_ms"]) for r in sweep_rows} == \
        {("test_good", 8, 2.0, 1.5), ("test_good", 1, 2.0, 1.5)}
    assert "2 sweep rows added" in notes[0]
    t = Table(saved)
    assert t.choice("lowrank_mm", "float32", "2-16", "S-a8")[0] == "test_good"
    assert t.choice("lowrank_mm", "float32", "1", "S-a8")[0] is None     # sweep rows alone
    auto.extend_record(_sweep_group(8, 3.0), {"float32": 1e-4}, notes)   # slower: vetoed
    assert Table(records.load(path)).choice("lowrank_mm", "float32", "2-16", "S-a8")[0] is None
