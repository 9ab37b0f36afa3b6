"""Build of the CUDA extension ``factorkern._C`` and the C library ``libfactorkern`` (used by
setup.py; kept beside it so setup.py stays short).

What it does, in a custom ``build_ext``:
1. compiles every ``csrc/**/*.cu`` with nvcc into an object, in parallel (``FACTORKERN_NVCC_JOBS``,
   default: the number of CPUs), for the targets of ``FACTORKERN_CUDA_ARCH`` (default "90a;80";
   entries like "90a", "80", "89"; PTX of the lowest target is embedded for newer GPUs);
2. links them with the static CUDA runtime into ``factorkern/lib/libfactorkern.so`` (the C API of
   ``csrc/include/factorkern.h``, for other engines; the header is installed beside it);
3. compiles the pybind11 binding ``csrc/python/bindings.cpp`` (and ``testing.cpp``, the fake CUDA
   runtime the CPU tests use) with the host compiler and links them with the same objects into
   ``factorkern._C``.
No torch headers anywhere: the extension does not depend on torch's C++ ABI, and the build
environment needs only setuptools and pybind11.

``FACTORKERN_BUILD_CUDA=1`` makes a failed compile fail the install; ``auto`` (default) warns and
installs pure Python.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import sysconfig
from concurrent.futures import ThreadPoolExecutor

from setuptools import Extension
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(HERE, "csrc")
DEFAULT_ARCH = "90a;80"


def _mode() -> str:
    return os.environ.get("FACTORKERN_BUILD_CUDA", "auto").strip().lower()


def cuda_home() -> str:
    """The CUDA toolkit folder (the one with include/cuda_runtime_api.h)."""
    cands = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        cands.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    cands += ["/usr/local/cuda", "/opt/cuda"]
    for c in cands:
        if c and os.path.exists(os.path.join(c, "include", "cuda_runtime_api.h")):
            return c
    # nvcc may be a wrapper script: ask nvcc where its toolkit is.
    if nvcc:
        try:
            out = subprocess.run([nvcc, "--dryrun", "--version"], capture_output=True, text=True)
            for line in (out.stdout + out.stderr).splitlines():
                if "TOP=" in line:
                    top = os.path.normpath(line.split("TOP=", 1)[1].strip().strip('"'))
                    if os.path.exists(os.path.join(top, "include", "cuda_runtime_api.h")):
                        return top
        except OSError:
            pass
    raise RuntimeError("CUDA toolkit not found: set CUDA_HOME (the folder with bin/nvcc and "
                       "include/cuda_runtime_api.h)")


def nvcc_path(home: str) -> str:
    p = os.path.join(home, "bin", "nvcc")
    return p if os.path.exists(p) else (shutil.which("nvcc") or "nvcc")


def cudart_dir(home: str) -> str:
    pats = ["lib64", "lib", "targets/*/lib", "targets/*/lib64"]
    for pat in pats:
        for d in sorted(glob.glob(os.path.join(home, pat))):
            if os.path.exists(os.path.join(d, "libcudart_static.a")):
                return d
    raise RuntimeError(f"libcudart_static.a not found under {home}")


def arch_list() -> list[str]:
    raw = os.environ.get("FACTORKERN_CUDA_ARCH", DEFAULT_ARCH)
    archs = [a.strip().lower().replace("sm_", "").replace("compute_", "").replace(".", "")
             for a in raw.replace(",", ";").split(";") if a.strip()]
    if not archs:
        raise RuntimeError("FACTORKERN_CUDA_ARCH is empty")
    for a in archs:
        if not (a[:-1] if a.endswith("a") else a).isdigit():
            raise RuntimeError(f"FACTORKERN_CUDA_ARCH: bad target {a!r} (use e.g. '90a;80')")
    return archs


def gencode_flags(archs: list[str]) -> list[str]:
    flags = []
    for a in archs:
        flags += ["-gencode", f"arch=compute_{a},code=sm_{a}"]
    # PTX of the lowest portable target, so newer GPUs can JIT it ("a" targets have no PTX
    # forward compatibility).
    plain = sorted((a for a in archs if not a.endswith("a")), key=int)
    if plain:
        flags += ["-gencode", f"arch=compute_{plain[0]},code=compute_{plain[0]}"]
    return flags


def cuda_sources() -> list[str]:
    return sorted(glob.glob(os.path.join(CSRC, "**", "*.cu"), recursive=True))


def compile_objects(build_temp: str, verbose: bool = False) -> list[str]:
    """nvcc -c every csrc .cu file (in parallel); returns the object paths."""
    home = cuda_home()
    nvcc = nvcc_path(home)
    archs = arch_list()
    build_archs = " ".join(f"sm_{a}" for a in archs)
    flags = ["-std=c++17", "-O3", "-Xcompiler", "-fPIC", "-Xcompiler", "-fvisibility=hidden",
             f"-I{os.path.join(CSRC, 'include')}", f'-DFK_BUILD_ARCHS="{build_archs}"',
             "--expt-relaxed-constexpr"] + gencode_flags(archs)
    os.makedirs(build_temp, exist_ok=True)
    jobs = int(os.environ.get("FACTORKERN_NVCC_JOBS", "0") or 0) or (os.cpu_count() or 1)

    def one(src):
        rel = os.path.relpath(src, CSRC).replace(os.sep, "_")
        obj = os.path.join(build_temp, rel + ".o")
        if os.path.exists(obj) and os.path.getmtime(obj) >= _newest_input(src):
            return obj
        cmd = [nvcc, *flags, "-c", src, "-o", obj]
        if verbose:
            print(" ".join(cmd), flush=True)
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"nvcc failed on {src}:\n{r.stdout}{r.stderr}")
        return obj

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(one, cuda_sources()))


def _newest_input(src: str) -> float:
    headers = glob.glob(os.path.join(CSRC, "**", "*.cuh"), recursive=True) + \
        glob.glob(os.path.join(CSRC, "**", "*.h"), recursive=True)
    return max(os.path.getmtime(p) for p in [src, *headers, __file__])


def link_library(objects: list[str], out_path: str) -> None:
    """libfactorkern.so: the C API, static CUDA runtime, no Python."""
    home = cuda_home()
    cxx = os.environ.get("CXX") or sysconfig.get_config_var("CXX") or "c++"
    cmd = [*cxx.split(), "-shared", "-o", out_path, *objects, f"-L{cudart_dir(home)}",
           "-lcudart_static", "-ldl", "-lrt", "-lpthread", "-Wl,-soname,libfactorkern.so"]
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"linking libfactorkern failed:\n{' '.join(cmd)}\n{r.stdout}{r.stderr}")


class BuildCudaExt(build_ext):
    """build_ext that compiles csrc/ with nvcc first; with FACTORKERN_BUILD_CUDA=auto a failure
    warns and leaves a pure-Python install."""

    def run(self):
        try:
            self._build_cuda()
        except Exception as e:  # noqa: BLE001 - reported, then re-raised or skipped by mode
            if _mode() == "1":
                raise
            print(f"WARNING: factorkern: building the CUDA extension failed, installing pure "
                  f"Python (set FACTORKERN_BUILD_CUDA=1 to make this an error): {e}",
                  file=sys.stderr)
            self.extensions = [x for x in self.extensions if x.name != "factorkern._C"]
        super().run()

    def _build_cuda(self):
        ext = next(x for x in self.extensions if x.name == "factorkern._C")
        import pybind11

        home = cuda_home()
        objects = compile_objects(os.path.join(self.build_temp, "factorkern_cuda"),
                                  verbose=self.verbose > 1)
        ext.extra_objects = objects
        ext.include_dirs = [pybind11.get_include(), os.path.join(CSRC, "include"),
                            os.path.join(home, "include")]
        ext.library_dirs = [cudart_dir(home)]
        ext.libraries = ["cudart_static", "dl", "rt", "pthread"]
        ext.extra_compile_args = ["-std=c++17", "-O2", "-fvisibility=hidden"]
        # The C library and its header, inside the package (and in place for editable installs).
        # Editable installs put it in the source tree (ignored by git as *.so); the header then
        # stays in csrc/include.
        if self.inplace or getattr(self, "editable_mode", False):
            link_library(objects, os.path.join(HERE, "factorkern", "lib", "libfactorkern.so"))
        else:
            d = os.path.join(self.build_lib, "factorkern")
            link_library(objects, os.path.join(d, "lib", "libfactorkern.so"))
            os.makedirs(os.path.join(d, "include"), exist_ok=True)
            shutil.copy2(os.path.join(CSRC, "include", "factorkern.h"),
                         os.path.join(d, "include", "factorkern.h"))


def cuda_extension():
    """(Extension, cmdclass) for setup.py."""
    sources = [os.path.relpath(os.path.join(CSRC, "python", f), HERE)
               for f in ("bindings.cpp", "testing.cpp")]
    ext = Extension("factorkern._C", sources=sources, language="c++")
    return ext, {"build_ext": BuildCudaExt}
