"""The compile audit in CI: every Triton kernel x every autotune config x fp16/bf16/fp32,
compiled for sm_90a (H100) without a GPU (``factorkern.triton_kernels._audit``).

CI checks the committed table (tests/triton_audit.json, keyed by a hash of each kernel's
source, specialization and options) against the current launches, asserts what the table says
(shared memory within the H100's limit for at least one config and the default one of every
shape class, no spills and 128-bit loads in the decode kernels, a CTA barrier before every
phase-counter release), and compiles a sample of launches afresh: the default decode configs,
whose SASS and PTX are read here. ``FACTORKERN_AUDIT=full`` recompiles every launch instead of
the sample (local runs: about 20 minutes on 2 cores; Triton's cache makes reruns fast).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from factorkern.triton_kernels import _audit, _compile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FULL = os.environ.get("FACTORKERN_AUDIT", "") == "full"
SAMPLE = 8


def _child(args, tmp_path, timeout):
    pytest.importorskip("triton.backends.nvidia")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = tmp_path / "report.json"
    r = subprocess.run([sys.executable, "-m", "factorkern.triton_kernels._audit", *args,
                        "--json", str(out)], env=env, cwd=ROOT, capture_output=True, text=True,
                       timeout=timeout)
    if r.returncode == 2:
        pytest.skip(r.stderr.strip())
    assert r.returncode == 0, r.stderr[-4000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    args = ["--check", "--sample", str(10 ** 6 if FULL else SAMPLE)]
    return _child(args, tmp_path_factory.mktemp("audit"), timeout=7200 if FULL else 900)


def test_table_covers_every_launch(report):
    """A kernel, a space or a launcher changed without refreshing the table: rerun
    ``python -m factorkern.triton_kernels._audit --full --write``."""
    missing = report["missing"]
    assert not missing, (f"{len(missing)} of {report['n_items']} launches are not in the "
                         f"audit table, e.g. {missing[:5]}")


def test_audit_finds_no_problem(report):
    assert report["problems"] == []


def test_no_finding_beyond_the_reviewed_list(report):
    """Spills and narrow loads in decode configs are listed in tests/triton_audit_findings.txt
    once reviewed; a new one fails here (fix the config, or review it and rerun --write)."""
    new = sorted(set(report["findings"]) - set(report["reviewed"]))
    assert not new, f"{len(new)} new findings, e.g. {new[:5]}"


def test_every_accepted_shape_class_has_a_config_that_fits(report):
    """Every (kernel, shape class, dtype) that the op's ``supports`` accepts has at least one
    config within the H100's 227 KB of shared memory (else ``supports`` must refuse it)."""
    fitting = report["fitting"]
    assert len(fitting) + len(report["refused"]) == report["n_cases"]
    none = [label for label, n in fitting.items() if n == 0]
    assert not none, f"no config fits {_compile.H100_MAX_SHARED} B of shared memory: {none}"


def test_findings_checker():
    """Spills in any decode config and narrow marked loads in fp16/bf16 decode are findings;
    prefill and fp32 narrow loads are not."""
    def e(variant, dtype, spill=0, narrow=()):
        return dict(op="sparse_mm", variant=variant, shape_class="M=1 64x64", dtype=dtype,
                    index=0, shared=1024, regs=255, spill_stores=spill, spill_loads=spill,
                    local_ops=spill, wide_loads=1, narrow_loads=list(narrow),
                    release_fenced=None)

    assert _audit.findings([e("decode", "bf16")]) == []
    assert _audit.findings([e("prefill", "bf16", spill=8)]) == []
    assert _audit.findings([e("decode", "fp32", narrow=[["x.py", 1, "LDG.E.64"]])]) == []
    assert _audit.findings([e("decode", "fp32", spill=8)]) == \
        ["sparse_mm decode M=1 64x64 fp32 config 0: spills"]
    assert _audit.findings([e("decode", "fp16", narrow=[["x.py", 1, "LDG.E.64"]])]) == \
        ["sparse_mm decode M=1 64x64 fp16 config 0: narrow loads"]


def test_fit_checker():
    """``problems`` reports a shape class whose every config (or whose default) is over."""
    lim = _compile.H100_MAX_SHARED

    def e(index, shared):
        return dict(op="armor_mm", variant="prefill", shape_class="bA=128 bB=128",
                    dtype="fp32", index=index, shared=shared, regs=128, spill_stores=0,
                    spill_loads=0, local_ops=0, wide_loads=0, narrow_loads=[],
                    release_fenced=None)

    assert _audit.problems([e(0, lim), e(1, lim + 1)]) == []
    assert any("no config fits" in p for p in _audit.problems([e(0, lim + 1), e(1, lim + 2)]))
    assert any("default config" in p for p in _audit.problems([e(0, lim + 1), e(1, lim)]))


def test_sample_compiles_as_the_table_says(report):
    assert report["sample"], "nothing sampled"
    same_triton = report["triton"] == report["table_triton"]
    for s in report["sample"]:
        fresh = s["fresh"]
        assert "error" not in fresh, f"{s['label']}: {fresh.get('error')}"
        assert fresh["shared"] <= _compile.H100_MAX_SHARED, s["label"]
        if same_triton and s["table"] is not None:
            for k in ("shared", "regs", "spill_stores", "local_ops", "wide_loads",
                      "release_fenced"):
                assert fresh[k] == s["table"][k], f"{s['label']} {k}: table {s['table'][k]}, " \
                                                  f"compiled {fresh[k]}"


def test_decode_sass_has_no_spills_and_wide_loads(report):
    """Issue-13 patterns in the decode kernels' SASS: no register spills or local memory, and
    the loads of weights, signs, metadata, activations and workspaces are 128-bit."""
    decode = [s for s in report["sample"] if " decode " in s["label"]]
    assert {s["kernel"] for s in decode} >= {"_chain_phased_kernel", "_armor_phased_kernel",
                                              "_littlebit_kernel", "_monarch_kernel"}
    reviewed = set(report["reviewed"])
    for s in decode:
        f = s["fresh"]
        where = f"{s['label']} config {s['index']}"
        if f"{where}: spills" not in reviewed:
            assert f["spill_stores"] == 0 and f["spill_loads"] == 0 and f["local_ops"] == 0, \
                f"{where}: {f['spill_stores']} B spilled, {f['local_ops']} LDL/STL"
        assert f["wide_loads"] > 0
        if f"{where}: narrow loads" not in reviewed:
            assert f["narrow_loads"] == [], f"{where}: narrow loads {f['narrow_loads']}"


def test_phase_counter_releases_follow_a_cta_barrier(report):
    """The PTX of every kernel with phase counters (chain and ARMOR decode, LittleBit) has a
    bar.sync before each release: Triton before 3.9 inserts none itself."""
    fenced = {s["kernel"]: s["fresh"]["release_fenced"] for s in report["sample"]}
    for k in ("_chain_phased_kernel", "_armor_phased_kernel", "_littlebit_kernel"):
        assert fenced.get(k) is True, f"{k}: {fenced.get(k)}"


def test_docs_table_is_rendered_from_the_audit_table():
    doc = _audit.read_table(os.path.join(ROOT, _audit.TABLE))
    with open(os.path.join(ROOT, _audit.DOC)) as f:
        assert f.read() == _audit.render_doc(doc), \
            "docs/triton_configs.md is stale: rerun the audit with --write"


# ---- the checkers themselves ----------------------------------------------------------------
FENCED = """
$L__BB0_3:
	st.global.b32 [%rd1], %r1;
	bar.sync 	0;
	mov.u32 %r2, 1;
	@%p1 atom.global.gpu.release.add.u32 %r3, [%rd2], %r2;
"""
UNFENCED = """
$L__BB0_3:
	bar.sync 	0;
	st.global.b32 [%rd1], %r1;
	@%p1 atom.global.gpu.release.add.u32 %r3, [%rd2], %r2;
$L__BB0_4:
"""
UNFENCED_BLOCK = """
	bar.sync 	0;
$L__BB0_8:
	add.s64 	%rd380, %rd139, 4;
	@%p1 atom.global.gpu.release.add.u32 %r849, [ %rd380 + 0 ], %r850;
"""

# What Triton emits for LittleBit's release in fp32: line-info labels between the barrier and the
# atomic (the same basic block).
FENCED_DEBUG_LABELS = """
$L__tmp16:
.loc	1 168 9
bar.sync 	0;
add.s64 	%rd242, %rd47, 4;
$L__tmp17:
mov.b32 	%r7673, 1;
$L__tmp18:
.loc	1 169 9
@%p1 atom.global.gpu.release.add.u32 %r7672, [ %rd242 + 0 ], %r7673;
"""


def test_release_checker():
    assert _audit.release_fenced(FENCED_DEBUG_LABELS) is True
    assert _audit.release_fenced(FENCED) is True
    assert _audit.release_fenced(UNFENCED) is False        # a store after the barrier
    assert _audit.release_fenced(UNFENCED_BLOCK) is False  # the barrier is in another block
    assert _audit.release_fenced("\tret;\n") is None


def test_load_width_reader():
    assert _compile.load_bits("LDG.E.128") == 128
    assert _compile.load_bits("LDGSTS.E.BYPASS.128") == 128
    assert _compile.load_bits("LDG.E.U16") == 16
    assert _compile.load_bits("LDG.E.64") == 64
    assert _compile.load_bits("LDG.E") == 32
    lines = [("a.py", 3, "LDG.E.128"), ("a.py", 3, "LDG.E.U16"), ("b.py", 1, "LDG.E"),
             ("a.py", 3, "LDGDEPBAR")]
    wide, narrow = _audit.wide_load_report(lines, {("a.py", 3): 128})
    assert wide == 1 and narrow == [("a.py", 3, "LDG.E.U16")]
    wide, narrow = _audit.wide_load_report([("a.py", 3, "LDGSTS.E.64")], {("a.py", 3): 64})
    assert wide == 1 and narrow == []


def test_resident_sparse_q_prefill_compiles_for_sm90():
    """sparse_dense_mm prefill with t resident (k <= 256) reads its 2:4 Q tiles from column 0;
    a literal 0 there was a constexpr that load_s24_tile's ``tl.multiple_of`` rejects: every
    config failed to compile for a GPU while the interpreter ran it. The default config compiles
    (one fp16 launch, in a child process without TRITON_INTERPRET)."""
    pytest.importorskip("triton.backends.nvidia")
    code = ("from factorkern.triton_kernels import _audit as A\n"
            "c = [c for c in A.cases() if c.label == 'sparse_dense_mm prefill k=64 (t resident) "
            "fp16']\n"
            "it = A.items(c)[0]\n"
            "m = A.measure(it.launch, sass_lines=False)\n"
            "print(m['shared'], m['spill_stores'])\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    shared, spills = map(int, r.stdout.split())
    assert 0 < shared <= _compile.H100_MAX_SHARED and spills == 0
