"""Triton kernels, installed as ``factorkern.triton_kernels`` (never as a top-level
``triton_kernels``, which is a package Triton ships). Importing this package registers each
family's kernels with ``factorkern.dispatch``; it raises ImportError when triton is missing."""

import triton  # noqa: F401  (availability check: the dispatcher records the ImportError)
