"""Build script.

`FACTORKERN_BUILD_CUDA=0|1|auto` (default auto): build the CUDA extension `factorkern._C` from
csrc/ (1: always, failing if nvcc is missing; auto: only when nvcc is found; 0: never). Without it
the install is pure Python. `FACTORKERN_CUDA_ARCH` picks the targets (default "90a;80").

The repository folder `triton_kernels/` installs as `factorkern.triton_kernels`, never as a
top-level `triton_kernels` (Triton ships a package of that name that vLLM imports).
"""

import os
import shutil

from setuptools import find_packages, setup

packages = find_packages(include=["factorkern", "factorkern.*"])
packages.append("factorkern.triton_kernels")
package_dir = {"factorkern.triton_kernels": "triton_kernels"}


def _want_cuda():
    mode = os.environ.get("FACTORKERN_BUILD_CUDA", "auto").strip().lower()
    if mode not in ("0", "1", "auto"):
        raise SystemExit(f"FACTORKERN_BUILD_CUDA must be 0, 1 or auto, got {mode!r}")
    if mode == "0":
        return False
    have_nvcc = shutil.which("nvcc") is not None or os.path.exists(
        os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc"))
    if mode == "1" and not have_nvcc:
        raise SystemExit("FACTORKERN_BUILD_CUDA=1 but nvcc was not found (PATH or CUDA_HOME)")
    return have_nvcc and _has_cuda_sources()


def _has_cuda_sources():
    here = os.path.dirname(os.path.abspath(__file__))
    csrc = os.path.join(here, "csrc")
    return any(f.endswith(".cu") for _, _, fs in os.walk(csrc) for f in fs)


ext_modules, cmdclass = [], {}
if _want_cuda():
    import sys

    # PEP 517 backends do not put the project folder on sys.path; build_cuda.py lives there.
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from build_cuda import cuda_extension  # noqa: E402  (kept beside setup.py)

    ext, cmd = cuda_extension()
    ext_modules.append(ext)
    cmdclass.update(cmd)

setup(
    packages=packages,
    package_dir=package_dir,
    # Verification records made on GPUs we had at hand (docs/dispatch.md).
    package_data={"factorkern.records": ["*.json"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
