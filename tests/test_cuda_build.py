"""The CUDA extension without a GPU: it was compiled for the targets we ship, `_C` imports
without touching the device, calls fail cleanly (RuntimeError with the reason), the C API
example compiles and links against libfactorkern, and the SASS holds the instructions the kernels
were written for. Skips when the extension was not built (pure-Python install)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

C = pytest.importorskip("factorkern._C", reason="CUDA extension not built (pure-Python install)")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.dirname(os.path.abspath(C.__file__))
LIB = os.path.join(PKG, "lib", "libfactorkern.so")
MB = 1 << 20
KINDS = ("dense_sparse_kernel", "sparse_dense_kernel", "armor_kernel", "littlebit_exact_kernel",
         "littlebit_popcount_kernel")
FAKE = 1 << 40  # a 256-byte aligned address that is never dereferenced (checks fail first)


def _cuobjdump():
    try:
        import triton
    except ImportError:
        return shutil.which("cuobjdump")
    p = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    return p if os.path.exists(p) else shutil.which("cuobjdump")


def _ds(**kw):
    """fk_dense_sparse_mm through _C with fake pointers; keyword overrides."""
    a = dict(dtype=C.FLOAT16, n=4, n_in=256, k=64, out=96, x=FAKE, ldx=256, d=FAKE, sv=FAKE,
             sm=FAKE, bias=0, y=FAKE, ldy=96, ws=FAKE, ws_bytes=MB, stream=0, device=-1)
    a.update(kw)
    C.dense_sparse_mm(a["dtype"], a["n"], a["n_in"], a["k"], a["out"], a["x"], a["ldx"], a["d"],
                      a["sv"], a["sm"], a["bias"], a["y"], a["ldy"], a["ws"], a["ws_bytes"],
                      a["stream"], a["device"])


def test_import_and_build_info():
    assert C.MAX_TOKENS == 16 and C.MAX_TERMS == 4
    info = C.build_info()
    archs = os.environ.get("FACTORKERN_CUDA_ARCH", "90a;80")
    for a in archs.replace(",", ";").split(";"):
        assert f"sm_{a.strip()}" in info, info
    assert C.status_string(2) == "unsupported by the kernels"


def test_import_does_not_touch_the_device():
    # A fresh interpreter: importing factorkern and _C must not initialize CUDA.
    code = ("import torch, factorkern, factorkern._C, factorkern.cuda;"
            "print(torch.cuda.is_initialized())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("False")


@pytest.mark.parametrize("kw, msg", [
    (dict(n=17), "n <= 16"),
    (dict(dtype=7), "float16 (0) or bfloat16 (1)"),
    (dict(n_in=192, ldx=192), "multiple of 128"),
    (dict(k=60), "multiple of 8"),
    (dict(ws=0), "workspace"),
    (dict(ws_bytes=16), "workspace"),
    (dict(x=FAKE + 8), "16-byte aligned"),
    (dict(sv=0), "must not be null"),
    (dict(ldy=10), "ldy"),
])
def test_argument_errors(kw, msg):
    with pytest.raises(RuntimeError, match=re.escape(msg)):
        _ds(**kw)


def test_zero_tokens_is_a_no_op():
    _ds(n=0, x=0, y=0, ws=0, ws_bytes=0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a usable GPU")
@pytest.mark.parametrize("call", ["dense_sparse", "sparse_dense", "armor", "littlebit",
                                  "popcount"])
def test_call_without_gpu_raises_cleanly(call):
    with pytest.raises(RuntimeError, match="CUDA runtime error"):
        if call == "dense_sparse":
            _ds()
        elif call == "sparse_dense":
            C.sparse_dense_mm(0, 4, 256, 128, 96, FAKE, 256, FAKE, FAKE, FAKE, 0, FAKE, 96, FAKE,
                              MB, 0, -1)
        elif call == "armor":
            C.armor_mm(1, 4, 256, 128, FAKE, 256, FAKE, 64, FAKE, FAKE, FAKE, 128, 0, FAKE, 128,
                       FAKE, MB, 0, -1)
        else:
            terms = [(FAKE, FAKE, FAKE, FAKE, FAKE, 40, 4)]
            C.littlebit_mm(0, 4, 256, 96, FAKE, 256, terms, 0, FAKE, 96, FAKE, MB, 0,
                           call == "popcount", -1)


def test_workspace_sizes():
    assert C.dense_sparse_mm_workspace_size(4, 256, 64, 96) == 1024
    assert C.armor_mm_workspace_size(3, 256, 128) == 3 * 256 * 4 + 1536
    terms = [(FAKE, FAKE, FAKE, FAKE, FAKE, 40, 4)]
    exact = C.littlebit_mm_workspace_size(2, 256, False, terms)
    assert exact == 2 * 128 * 4
    assert C.littlebit_mm_workspace_size(2, 256, True, terms) > exact


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="no host C++ compiler")
def test_c_example_compiles_links_and_runs(tmp_path):
    if not os.path.exists(LIB):
        pytest.skip("libfactorkern.so not built")
    sys.path.insert(0, ROOT)  # build_cuda.py finds the toolkit the way the build did
    try:
        import build_cuda
    finally:
        sys.path.remove(ROOT)
    home = build_cuda.cuda_home()
    libdir = build_cuda.cudart_dir(home)
    exe = tmp_path / "fk_example"
    cxx = shutil.which("g++") or shutil.which("c++")
    cmd = [cxx, "-std=c++17", os.path.join(ROOT, "examples", "c_api", "dense_sparse_example.cpp"),
           f"-I{os.path.join(ROOT, 'csrc', 'include')}", f"-I{os.path.join(home, 'include')}",
           f"-L{os.path.dirname(LIB)}", "-lfactorkern", f"-Wl,-rpath,{os.path.dirname(LIB)}",
           f"-L{libdir}", "-lcudart_static", "-ldl", "-lrt", "-lpthread", "-o", str(exe)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    if torch.cuda.is_available():
        assert run.returncode == 0, run.stdout + run.stderr
    else:
        assert run.returncode == 2, run.stdout + run.stderr  # clean failure: no usable GPU


@pytest.fixture(scope="module")
def sass_sm90():
    """{function: SASS text} of the sm_90a image (one cuobjdump run, shared with
    tests/test_cuda_sass.py through bench.model's cache)."""
    if _cuobjdump() is None:
        pytest.skip("cuobjdump not found (ships with triton: triton/backends/nvidia/bin)")
    if "90a" not in os.environ.get("FACTORKERN_CUDA_ARCH", "90a;80"):
        pytest.skip("sm_90a not among the build targets")
    from bench import model

    funcs, _ = model.cuda_sass(C.__file__)
    return {k: "\n".join(t for _, t in v) for k, v in funcs.items()}


@pytest.mark.parametrize("arch", ["sm_80", "sm_90a"])
def test_every_kernel_compiled_for(arch):
    if arch.replace("sm_", "") not in os.environ.get("FACTORKERN_CUDA_ARCH", "90a;80"):
        pytest.skip(f"{arch} not among the build targets")
    tool = _cuobjdump()
    if tool is None:
        pytest.skip("cuobjdump not found (ships with triton: triton/backends/nvidia/bin)")
    r = subprocess.run([tool, "-res-usage", "-arch", arch, C.__file__], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    funcs = re.findall(r"Function (\S+):", r.stdout)
    for kind in KINDS:
        # 2 dtypes x 3 token buckets each
        assert sum(kind in f for f in funcs) == 6, (kind, funcs)


def _of(funcs, kind):
    got = {k: v for k, v in funcs.items() if kind in k}
    assert got, kind
    return got


def test_sass_popcount_uses_popc(sass_sm90):
    # The grid barrier itself uses a few POPC; the bit-plane products add 8 per sign word.
    def by_args(kind):  # mangled template arguments (dtype, token bucket) -> body
        return {k.split(kind, 1)[1]: v for k, v in _of(sass_sm90, kind).items()}

    exact = by_args("littlebit_exact_kernel")
    for args, body in by_args("littlebit_popcount_kernel").items():
        assert body.count("POPC") >= exact[args].count("POPC") + 8, args


def test_sass_factors_stream_past_l1_with_128_bit_loads(sass_sm90):
    # values/meta/dense rows/sign words: 16-byte non-coherent loads that do not allocate in L1
    # (tests/test_cuda_sass.py checks the loops in detail).
    for kind in KINDS:
        for name, body in _of(sass_sm90, kind).items():
            assert re.search(r"LDG\.E\.NA\.128\.CONSTANT", body), name


def test_sass_grid_barrier_present(sass_sm90):
    # One persistent launch per op: the stages are split by cooperative grid barriers, which
    # compile to a device-scope fence + atomic arrival (MEMBAR/ATOM or RED) on the barrier word.
    for kind in KINDS:
        for name, body in _of(sass_sm90, kind).items():
            assert "MEMBAR" in body or "FENCE" in body, name
