"""sm_90a wgmma.sp 2:4 kernel (csrc/sm90_sparse): the fragment layouts on the CPU, the sm_90a
compile with the sparse HGMMA in the SASS, and (GPU only) numerics against the reference."""

import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import factorkern.cuda_sm90 as sm90
from factorkern import reference as ref
from factorkern.formats import prune_24

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "csrc" / "sm90_sparse" / "sm90_sparse_gemm.cu"


def _sparse(rows, cols, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    W = torch.randn(rows, cols, generator=gen, dtype=torch.float64).to(dtype)
    return prune_24(W)


# ---- layouts (CPU) ---------------------------------------------------------------------------
@pytest.mark.parametrize("rows,cols", [(128, 64), (200, 72), (8, 4), (130, 100), (64, 160)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_sm90_layout_round_trip(rows, cols, dtype):
    S = _sparse(rows, cols, dtype, seed=rows + cols)
    a, e = S.prepare("cuda_sm90")
    mp, kp = -(-rows // 128) * 128, -(-cols // 64) * 64
    assert a.shape == (mp // 64, kp // 32, 128, 8) and a.dtype == dtype
    assert e.shape == (mp // 64, kp // 32, 64) and e.dtype == torch.int32
    dense = sm90.sm90_to_dense(a, e, mp, kp)  # also checks every nibble (padding too) is valid
    assert torch.equal(dense[:rows, :cols], S.to_dense())
    assert not bool(dense[rows:].any()) and not bool(dense[:, cols:].any())


def test_sm90_layout_cached_and_bits():
    S = _sparse(64, 32)
    first = S.prepare("cuda_sm90")
    assert S.prepare("cuda_sm90")[0] is first[0]
    # Thread 5 = warp 0, lane 5: g = 1, h = 1 -> entry 2*1 + 1 = 3 of (mb 0, ks 0): bits 0..15 =
    # canonical word 1 of row 1 (groups 4..7), bits 16..31 = word 1 of row 9.
    word = int(first[1][0, 0, 3]) & 0xFFFFFFFF
    assert word & 0xFFFF == int(S.meta[1, 1]) & 0xFFFF
    assert word >> 16 == int(S.meta[9, 1]) & 0xFFFF
    # Thread 6 (g = 1, t = 2), register 3: row 9, group 6 -> values[9, 12:14].
    assert torch.equal(first[0][0, 0, 6, 6:8], S.values[9, 12:14])


def test_armor_frag_round_trip():
    gen = torch.Generator().manual_seed(3)
    blocks = torch.randn(3, 128, 128, generator=gen).half()
    frag = sm90.armor_frag(blocks)
    assert frag.shape == (3, 2, 8, 128, 8)
    assert torch.equal(sm90.armor_frag_to_blocks(frag), blocks)
    with pytest.raises(ValueError, match="128 x 128"):
        sm90.armor_frag(blocks[:, :64, :64])


def test_not_built_reports():
    ok, why = sm90.availability()
    if not torch.cuda.is_available():
        assert not ok
    x = torch.randn(4, 64)
    assert sm90.supports(x, 64, 64) is not None


# ---- compile + SASS (nvcc, cuobjdump) --------------------------------------------------------
def _cuobjdump():
    found = shutil.which("cuobjdump")
    if found:
        return found
    try:
        import triton
    except ImportError:
        return None
    cand = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    return str(cand) if cand.exists() else None


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not found")
def test_compiles_sm90a_sparse_hgmma_and_sm80_stub(tmp_path):
    obj = tmp_path / "sm90.o"
    cmd = ["nvcc", "-std=c++17", "-O3", "-c", "-o", str(obj), str(SRC),
           "-gencode", "arch=compute_90a,code=sm_90a", "-gencode", "arch=compute_80,code=sm_80",
           "-Xptxas", "-warn-spills", "-Xptxas", "-warn-lmem-usage"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    # Neither spills nor ptxas serializing the wgmmas (C7513/C7510) may come back silently.
    assert "spill" not in res.stderr and "serialized" not in res.stderr, res.stderr[-3000:]
    cuobjdump = _cuobjdump()
    if cuobjdump is None:
        pytest.skip("cuobjdump not found")
    sass = subprocess.run([cuobjdump, "-sass", str(obj)], capture_output=True, text=True,
                          timeout=120).stdout
    # SASS spells sparse wgmma "HGMMA.SP": 4 per k-tile in every kernel (2 m64 x 2 k32) ...
    assert sass.count("HGMMA.SP.64x128x32.F32.BF16") == 4 * 2, sass[:2000]
    assert sass.count("HGMMA.SP.64x128x32.F32 ") == 4 * 2
    # ... and the ARMOR epilogue's 2 x 8 dense k16 wgmmas.
    assert sass.count("HGMMA.64x128x16.F32.BF16") == 16
    # The sm_80 image exists (stub bodies: no HGMMA there, checked by arch section).
    assert "arch = sm_80" in sass and "arch = sm_90a" in sass


# ---- GPU numerics (H100) ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def sm90_lib(tmp_path_factory):
    """The kernel through factorkern._C when the build has it (sm_90a among the targets), else
    a shared library compiled here and loaded with ctypes."""
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("needs an sm_90 GPU")
    try:
        from factorkern import _C
        if hasattr(_C, "sm90_sparse_gemm") and _C.sm90_sparse_available():
            return _C.__file__
    except ImportError:
        pass
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc not found")
    so = tmp_path_factory.mktemp("sm90") / "libfk_sm90.so"
    cmd = ["nvcc", "-std=c++17", "-O3", "-shared", "-Xcompiler", "-fPIC", "-o", str(so),
           str(SRC), str(ROOT / "csrc" / "common" / "runtime.cu"),
           "-gencode", "arch=compute_90a,code=sm_90a"]
    subprocess.run(cmd, check=True, timeout=600)
    sm90.load_library(str(so))
    return so


def _rel(y, r):
    return float((y.double() - r.double()).norm() / r.double().norm())


def _x(n, k, dtype, noncontig):
    x = torch.randn(n, k + (8 if noncontig else 0), device="cuda", dtype=dtype)
    return x[:, :k] if noncontig else x


@pytest.mark.gpu
@pytest.mark.parametrize("n,m,k", [(1, 8, 8), (127, 200, 72), (128, 256, 512), (333, 1024, 4096),
                                   (2049, 384, 1000)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("with_bias", [False, True])
def test_gpu_sparse_mm(sm90_lib, n, m, k, dtype, with_bias):
    S = _sparse(m, k, dtype).to("cuda")
    x = _x(n, k, dtype, noncontig=(n % 2 == 1))
    bias = torch.randn(m, device="cuda", dtype=dtype) if with_bias else None
    out = torch.full((n, m), float("nan"), device="cuda", dtype=dtype)
    y = sm90.sparse_mm(x, S.values, S.meta, k, bias, layout=S.prepare("cuda_sm90"), out=out)
    r = ref.dense_sparse_mm(x, torch.eye(m, device="cuda", dtype=dtype), S.values, S.meta, bias)
    assert _rel(y, r) < 1e-2


@pytest.mark.gpu
@pytest.mark.parametrize("n", [1, 129, 1000])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_armor(sm90_lib, n, dtype):
    out_f, in_f = 384, 512
    S = _sparse(out_f, in_f, dtype).to("cuda")
    A = (torch.randn(out_f // 128, 128, 128, device="cuda") / 11).to(dtype)
    B = (torch.randn(in_f // 128, 128, 128, device="cuda") / 11).to(dtype)
    bias = torch.randn(out_f, device="cuda", dtype=dtype)
    x = torch.randn(n, in_f, device="cuda", dtype=dtype)
    y = sm90.armor_mm(x, A, S.values, S.meta, B, bias, layout=S.prepare("cuda_sm90"))
    r = ref.armor_mm(x, A, S.values, S.meta, B, bias)
    assert _rel(y, r) < 1e-2


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_chained(sm90_lib, dtype):
    n, out_f, k, in_f = 257, 512, 256, 512
    x = torch.randn(n, in_f, device="cuda", dtype=dtype)
    D1 = (torch.randn(k, in_f, device="cuda") / 20).to(dtype)
    S1 = _sparse(out_f, k, dtype).to("cuda")
    y = sm90.sparse_dense_mm(x, S1.values, S1.meta, D1)
    assert _rel(y, ref.sparse_dense_mm(x, S1.values, S1.meta, D1)) < 1e-2
    S2 = _sparse(k, in_f, dtype).to("cuda")
    D2 = (torch.randn(out_f, k, device="cuda") / 20).to(dtype)
    y = sm90.dense_sparse_mm(x, D2, S2.values, S2.meta)
    assert _rel(y, ref.dense_sparse_mm(x, D2, S2.values, S2.meta)) < 1e-2


@pytest.mark.gpu
def test_gpu_fp16_intermediate_bound(sm90_lib):
    # The fused ARMOR epilogue rounds z = x @ B.T @ S.T to the operands' dtype (README:
    # "Intermediates in fp16"): in fp16, z below 65504 gives the right answer, z far above gives
    # inf/NaN; bf16 has the range for both.
    out_f, in_f, n = 256, 256, 64
    S = _sparse(out_f, in_f, torch.float32).to("cuda")
    A = torch.randn(out_f // 128, 128, 128, device="cuda") / 11
    B = torch.randn(in_f // 128, 128, 128, device="cuda") / 11
    x = torch.randn(n, in_f, device="cuda")
    z = (x.double() @ torch.block_diag(*B.double()).T) @ S.to_dense().double().T
    for target, dtype, finite in ((3e4, torch.float16, True), (1e6, torch.float16, False),
                                  (1e6, torch.bfloat16, True)):
        scale = target / float(z.abs().max())
        Bs = (B * scale).to(dtype)
        As = (A / scale).to(dtype)
        Sd = type(S)(S.values.to(dtype), S.meta, S.cols)
        y = sm90.armor_mm(x.to(dtype), As, Sd.values, Sd.meta, Bs, None,
                          layout=Sd.prepare("cuda_sm90"))
        assert bool(torch.isfinite(y).all()) == finite, (target, dtype)
        if finite:
            r = ref.armor_mm(x.to(dtype), As, Sd.values, Sd.meta, Bs, None)
            assert _rel(y, r) < 2e-2
