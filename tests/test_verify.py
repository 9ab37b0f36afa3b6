"""python -m factorkern.verify on the CPU: kernels that are wrong, leave output unwritten, exit,
segfault or hang (fk_test_plugins, seen by the spawned children through FACTORKERN_PLUGINS) are
rejected while the parent goes on; the interpreted quick run of the command line writes a record
marked interpreted, which is never used on a GPU."""

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from factorkern import records
from factorkern.records import Table
from factorkern.verify import verify

from fk_test_plugins import plugins  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parents[1]


def test_bad_kernels_are_rejected_and_the_parent_goes_on(plugins, tmp_path, monkeypatch):
    monkeypatch.setenv("FACTORKERN_PLUGINS", "fk_test_plugins")
    out = io.StringIO()
    rec = verify(backends=list(plugins.KERNELS), ops=["lowrank"], dtypes=["fp32"],
                 shapes=[(16, 32)], m=[1, 17], timeout=10, cache_dir=tmp_path, progress=False,
                 stream=out)
    status = {k["backend"]: (k["status"], k["detail"]) for k in rec["kernels"]}
    assert status["test_good"] == ("passed", "")
    assert status["test_wrong"][0] == "failed" and "relative error" in status["test_wrong"][1]
    assert status["test_unwritten"][0] == "failed" and "NaN" in status["test_unwritten"][1]
    assert status["test_exit"] == ("crashed", "the process died: exit code 3")
    assert status["test_segv"] == ("crashed", "the process died: killed by SIGSEGV")
    assert status["test_hang"][0] == "timeout"
    rows = {(r["backend"], r["m"]): r["status"] for r in rec["rows"]}
    assert rows[("test_wrong", 1)] == "pass" and rows[("test_wrong", 17)] == "fail"
    for b, first in (("test_exit", "crash"), ("test_segv", "crash"), ("test_hang", "timeout")):
        assert (rows[(b, 1)], rows[(b, 17)]) == (first, "skipped")
    assert rec["settings"]["children"] == 3          # a fresh child after each death
    # Written atomically where asked, and readable.
    path = Path(rec["path"])
    assert path.parent == tmp_path / "records" and path.name.endswith("-interpreted.json")
    saved = records.load(path)
    assert saved["kernels"] == rec["kernels"] and len(saved["rows"]) == 12
    # Whatever the timings, auto would only ever take the kernel that passed.
    for r in saved["rows"]:
        r["ms"], r["library_ms"] = 1.0, 2.0
    picks = Table(saved).picks("lowrank_mm")
    assert picks and {b for *_, b, _why in picks} == {"test_good"}
    text = out.getvalue()
    assert "killed by SIGSEGV" in text and "exit code 3" in text and "no answer within" in text


def test_interpreted_quick_verify_from_the_command_line(tmp_path):
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1", FACTORKERN_CACHE_DIR=str(tmp_path))
    env.pop("FACTORKERN_PLUGINS", None)
    p = subprocess.run([sys.executable, "-m", "factorkern.verify", "--quick", "--no-progress"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    (path,) = (tmp_path / "records").glob("*-interpreted.json")
    rec = records.load(path)
    assert rec["interpreted"] is True and rec["device"]["type"] == "cpu"
    triton = {k["op"]: k for k in rec["kernels"] if k["backend"] == "triton"}
    assert set(triton) >= {"dense_sparse_mm", "sparse_dense_mm", "armor_mm", "littlebit_mm",
                           "monarch_mm", "lowrank_mm", "sparse_mm"}
    assert all(k["status"] == "passed" for k in triton.values()), triton
    assert all(r["status"] in ("pass", "refused") for r in rec["rows"]
               if r["backend"] == "triton")
    assert "interpreted record" in p.stdout and "triton" in p.stdout
    why, _ = records.check(rec, rec["device"], rec["software"], gpu=True)
    assert "interpreter" in why                       # never used on a GPU
