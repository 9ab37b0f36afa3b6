"""Compile launches for an NVIDIA GPU on a machine without one: the compile audit, PTX and SASS
checks.

``recording()`` makes ``_common.launch_kernel`` record every launch instead of running it. A
record holds what Triton's JIT would compile for that launch: the kernel, its signature with the
JIT's own specialization of the actual arguments (integers equal to 1 become constants, pointers
and integers divisible by 16 get the alignment attribute), the constexprs and the options
(num_warps, num_stages). ``compile_record`` then compiles it for sm_90a (``TARGET``) with Triton's
compiler and reads what the hardware would see: dynamic shared memory, registers, stack and spill
bytes (ptxas -v), the PTX and the SASS.

Needs the kernels imported as compiled functions (TRITON_INTERPRET unset), so tests run it in a
child process (``_audit``). Uses Triton internals (the JIT binder); ``available()`` says whether
this Triton has them.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass, field

from . import _common

# H100 (sm_90): 228 KB of shared memory per SM, of which one block may use at most 227 KB =
# 232,448 bytes of dynamic shared memory, with the opt-in attribute that Triton sets
# (cudaDevAttrMaxSharedMemoryPerBlockOptin); 1 KB per block is reserved by the system. Triton
# raises OutOfResources at launch when a kernel's shared memory exceeds this.
H100_MAX_SHARED = 232_448
# Registers: 64K 32-bit registers per SM, at most 255 per thread.
MAX_REGS_PER_THREAD = 255


def target():
    from triton.backends.compiler import GPUTarget

    return GPUTarget("cuda", 90, 32)  # sm_90a (Triton compiles capability 90 as sm_90a)


def available() -> str | None:
    """None if this Triton can compile for sm_90a here, else the reason it cannot."""
    if _common.interpreting():
        return "TRITON_INTERPRET=1: kernels are interpreted functions (use a child process)"
    try:
        import triton.backends.nvidia  # noqa: F401
        from triton.runtime.jit import create_function_from_signature  # noqa: F401
        from triton.compiler import make_backend  # noqa: F401
    except Exception as e:  # pragma: no cover - depends on the installed Triton
        return f"this Triton cannot compile for NVIDIA here ({type(e).__name__}: {e})"
    if not os.path.exists(bin_path("ptxas")):
        return "Triton's ptxas is missing"
    return None


def bin_path(tool: str) -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", tool)


@dataclass
class Launch:
    """What Triton's JIT would compile for one launch (picklable: no tensors)."""

    module: str
    kernel: str
    signature: dict
    constexprs: dict
    attrs: dict
    options: dict
    grid: tuple = ()

    def source_hash(self) -> str:
        """Hash of the kernel source (and of the jit functions it calls), the specialization and
        the options: the key of the compile audit's cache."""
        src = self.ast_source()
        opts = {k: self.options[k] for k in ("num_warps", "num_stages")}
        return hashlib.sha256(f"{src.hash()}-{sorted(opts.items())}".encode()).hexdigest()[:24]

    def jit_function(self):
        return getattr(importlib.import_module(self.module), self.kernel)

    def ast_source(self):
        from triton.compiler import ASTSource

        return ASTSource(self.jit_function(), self.signature, self.constexprs, self.attrs)

    def meta(self) -> dict:
        """The constexprs by name (what the config and the shape class fixed)."""
        names = self.jit_function().arg_names
        return {names[k[0]]: v for k, v in self.constexprs.items()}


def bind(kernel, grid, kwargs) -> Launch:
    """The JIT's own binding and specialization of ``kernel[grid](**kwargs)`` for sm_90a."""
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    backend = make_backend(target())
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, options = binder(**kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound,
                                                              specialization, options)
    opts = {k: getattr(options, k) for k in ("num_warps", "num_stages")}
    return Launch(kernel.fn.__module__, kernel.fn.__name__, dict(signature), dict(constexprs),
                  dict(attrs), opts, tuple(grid))


@contextlib.contextmanager
def recording():
    """Inside this block no kernel runs: every launch is bound (``bind``) and collected in the
    list this yields."""
    got: list = []
    old = _common._RECORDER
    _common._RECORDER = lambda kernel, grid, kwargs: got.append(bind(kernel, grid, kwargs))
    try:
        yield got
    finally:
        _common._RECORDER = old


@dataclass
class Result:
    """What one compiled launch costs on sm_90a."""

    shared: int            # dynamic shared memory, bytes (what Triton checks at launch)
    regs: int              # registers per thread
    stack: int             # stack frame, bytes (ptxas -v)
    spill_stores: int      # bytes (ptxas -v)
    spill_loads: int
    local: int             # local-memory bytes per thread (cuobjdump resource usage)
    ptx: str = field(default="", repr=False)
    sass: str = field(default="", repr=False)

    def fits(self, limit: int = H100_MAX_SHARED) -> bool:
        return self.shared <= limit


_PTXAS_REGS = re.compile(r"Used (\d+) registers")
_PTXAS_STACK = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill "
                          r"loads")


def _parse_ptxas(log: str):
    """(registers, stack, spill stores, spill loads) from ptxas -v, or None."""
    r, s = _PTXAS_REGS.search(log), _PTXAS_STACK.search(log)
    if r is None or s is None:
        return None
    return (int(r.group(1)),) + tuple(int(v) for v in s.groups())


def compile_launch(launch: Launch, with_text: bool = True) -> Result:
    """Compile ``launch`` for sm_90a with Triton's compiler and read its costs."""
    import triton
    from triton import knobs

    out = io.StringIO()
    old = knobs.nvidia.dump_ptxas_log
    knobs.nvidia.dump_ptxas_log = True  # Triton then prints ptxas -v, which it runs anyway
    try:
        with contextlib.redirect_stdout(out):
            k = triton.compile(launch.ast_source(), target=target(), options=dict(launch.options))
    finally:
        knobs.nvidia.dump_ptxas_log = old
    parsed = _parse_ptxas(out.getvalue())
    if parsed is None:
        # a compile served from Triton's cache prints no ptxas log: run ptxas -v ourselves
        parsed = _parse_ptxas(_ptxas_v(k.asm["ptx"]))
    regs, stack, st, ld = parsed
    usage = _resource_usage(k.asm["cubin"])
    sass = disassemble(k.asm["cubin"]) if with_text else ""
    return Result(shared=int(k.metadata.shared), regs=regs, stack=stack, spill_stores=st,
                  spill_loads=ld, local=usage.get("LOCAL", 0),
                  ptx=k.asm["ptx"] if with_text else "", sass=sass)


def _ptxas_v(ptx: str) -> str:
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        r = subprocess.run([bin_path("ptxas"), "-v", "--gpu-name=sm_90a", src, "-o",
                            os.path.join(d, "k.o")], capture_output=True, text=True, check=True)
        return r.stderr + r.stdout


def _with_cubin(cubin: bytes, args: list) -> str:
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        r = subprocess.run([bin_path("cuobjdump"), *args, path], capture_output=True, text=True,
                           check=True)
        return r.stdout


def _resource_usage(cubin: bytes) -> dict:
    text = _with_cubin(cubin, ["--dump-resource-usage"])
    return {k: int(v) for k, v in re.findall(r"\b([A-Z]+):(\d+)", text)}


def disassemble(cubin: bytes) -> str:
    return _with_cubin(cubin, ["-sass"])


# ---- reading SASS ---------------------------------------------------------------------------
_SASS_OP = re.compile(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_.]*)")


def sass_ops(sass: str) -> list[str]:
    """The opcodes (with modifiers, e.g. ``LDG.E.128``) of every SASS instruction, in order."""
    return _SASS_OP.findall(sass)


def global_load_widths(sass: str) -> dict:
    """{bits: count} of global loads (LDG), from the width modifier (none = 32 bits)."""
    out: dict = {}
    for op in sass_ops(sass):
        if not op.startswith("LDG"):
            continue
        bits = 32
        for part in op.split(".")[1:]:
            if part in ("64", "128"):
                bits = int(part)
            elif part in ("U8", "S8"):
                bits = 8
            elif part in ("U16", "S16"):
                bits = 16
        out[bits] = out.get(bits, 0) + 1
    return out


def local_memory_ops(sass: str) -> int:
    """Number of local-memory instructions (spills, stack arrays): LDL/STL."""
    return sum(1 for op in sass_ops(sass) if op.startswith(("LDL", "STL")))


def sass_with_lines(cubin: bytes) -> list[tuple[str, int, str]]:
    """(source file, line, SASS instruction) for every instruction, from nvdisasm's line info
    (Triton compiles with -lineinfo; an inlined function's lines are its own)."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        r = subprocess.run([bin_path("nvdisasm"), "--print-line-info", "-c", path],
                           capture_output=True, text=True, check=True)
    out, where = [], ("?", 0)
    for line in r.stdout.splitlines():
        m = re.search(r'File "([^"]+)", line (\d+)', line)
        if m:
            where = (os.path.basename(m.group(1)), int(m.group(2)))
            continue
        m = _SASS_OP.search(line)
        if m:
            out.append((where[0], where[1], m.group(1)))
    return out


# Source lines whose global loads must be vector loads carry the marker ``# sass: <bits>`` (the
# minimum width): the loads of weights, signs, metadata, activations and workspaces in the
# decode kernels (issue: scalar loads where vector loads belong cost bandwidth at decode).
# ``_audit.wide_load_report`` checks them on the SASS.
WIDE_MARK = re.compile(r"#\s*sass:\s*(\d+)")


def marked_lines(module_files: list[str]) -> dict[tuple[str, int], int]:
    """{(file name, line): minimum load width in bits} of every marked line of these files."""
    out = {}
    for path in module_files:
        with open(path) as f:
            for i, line in enumerate(f, 1):
                m = WIDE_MARK.search(line)
                if m:
                    out[(os.path.basename(path), i)] = int(m.group(1))
    return out


def global_loads(lines: list[tuple[str, int, str]]) -> list[tuple[str, int, str]]:
    """The global loads (LDG, and LDGSTS: cp.async global -> shared) among ``sass_with_lines``."""
    return [(f, n, op) for f, n, op in lines
            if op.startswith("LDG") and not op.startswith("LDGDEPBAR")]


def load_bits(op: str) -> int:
    """Width in bits of a global load opcode (``LDG.E.128``, ``LDGSTS.E.BYPASS.128``, ...)."""
    for part in op.split(".")[1:]:
        if part in ("64", "128"):
            return int(part)
        if part in ("U8", "S8"):
            return 8
        if part in ("U16", "S16"):
            return 16
    return 32
