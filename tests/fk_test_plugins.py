"""Test backends for verification and dispatch, loaded through FACTORKERN_PLUGINS (so spawned
verification children see them too): lowrank_mm kernels that are right, wrong, leave part of
their output unwritten, exit, segfault or hang. Only verify's children ever call the bad ones."""

import os
import signal
import time

import torch

from factorkern import dispatch

CALLS = {"good": 0}


def _right(x, U, V, bias):
    return dispatch.ORACLE["lowrank_mm"](x, U, V, bias)


def good(x, U, V, bias, extra):
    CALLS["good"] += 1
    return _right(x, U, V, bias)


def wrong(x, U, V, bias, extra):
    y = _right(x, U, V, bias)
    if x.shape[0] > 1:          # right at M = 1, wrong in its last row otherwise
        y[-1] = 0
    return y


def unwritten(x, U, V, bias, extra, out=None):
    # Writes every row but the last of the buffer it is given: poisoning must catch it.
    out = torch.zeros(x.shape[0], U.shape[0], dtype=x.dtype) if out is None else out
    out[:-1] = _right(x, U, V, bias)[:-1]
    return out


def exits(x, U, V, bias, extra):
    os._exit(3)


def segfaults(x, U, V, bias, extra):
    os.kill(os.getpid(), signal.SIGSEGV)
    time.sleep(60)


def hangs(x, U, V, bias, extra):
    time.sleep(3600)


KERNELS = {"test_good": good, "test_wrong": wrong, "test_unwritten": unwritten,
           "test_exit": exits, "test_segv": segfaults, "test_hang": hangs}

def _supports(x, U, V, *_):
    return None if U.shape[1] <= 64 else "test kernels take r <= 64"


def register():
    """Register the test backends (in verification children, and by the `plugins` fixture into
    copies of dispatch's tables)."""
    for name, fn in KERNELS.items():
        dispatch.register_backend(name, available=lambda: (True, "test backend"))
        dispatch.register_kernel("lowrank_mm", name, fn, supports=_supports)


# Register at import only where FACTORKERN_PLUGINS names this module (the spawned verification
# children). Test files import it for the fixture; registering there would leave kernels that
# exit or hang in the pytest process for every later test that walks the backends.
if __name__ in {m.strip() for m in os.environ.get(dispatch.PLUGINS_ENV, "").split(",")}:
    register()


try:
    import pytest

    @pytest.fixture
    def plugins(monkeypatch):
        """The test backends registered in copies of dispatch's tables (restored afterwards)."""
        import sys

        monkeypatch.setattr(dispatch, "_BACKENDS", dict(dispatch._BACKENDS))
        monkeypatch.setattr(dispatch, "_KERNELS", dict(dispatch._KERNELS))
        register()
        return sys.modules[__name__]
except ImportError:  # a verification child without pytest
    pass
