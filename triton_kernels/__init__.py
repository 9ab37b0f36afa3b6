"""Triton kernels, installed as ``factorkern.triton_kernels`` (never as a top-level
``triton_kernels``, which is a package Triton ships). Importing this package imports every family
module in it, and each registers its kernels with ``factorkern.dispatch``; it raises ImportError
when triton is missing (the dispatcher records why the backend is unavailable)."""

import importlib
import pkgutil

import triton  # noqa: F401

for _m in pkgutil.iter_modules(__path__):
    if not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")
