"""The parent side of verification: spawned children, timeouts, crash accounting.

A child is a fresh interpreter (``python -m factorkern.verify.child FD``) talking over a socket
pair with ``multiprocessing``'s connection protocol. Unlike ``multiprocessing``'s spawn it never
re-imports the caller's main script, so ``fk.verify()`` can be called from any script, guarded
by ``if __name__ == "__main__"`` or not; it inherits the environment (``TRITON_INTERPRET``,
``FACTORKERN_PLUGINS``) and the caller's ``sys.path`` (so plugins import alike).

Each job is the cases of one kernel (op, backend, dtype). A child runs jobs one after another
and answers one message per case. When the child dies (a segfault, a CUDA fault, ``os._exit``)
the case in flight becomes "crash" (with the signal or exit code), when it stays silent past the
timeout it is killed and the case becomes "timeout"; either way the kernel's other cases are not
run ("skipped": a kernel that can take the process down is not used anywhere) and the next job
starts in a fresh child. The parent never runs a kernel.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from multiprocessing.connection import Connection


def exit_reason(code: Optional[int]) -> str:
    if code is None:
        return "no exit code"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class Worker:
    """One child process."""

    def __init__(self, startup_timeout: float):
        mine, theirs = socket.socketpair()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p or os.getcwd() for p in sys.path)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "factorkern.verify.child", str(theirs.fileno())],
            pass_fds=[theirs.fileno()], env=env, stdin=subprocess.DEVNULL)
        theirs.close()
        self.conn = Connection(mine.detach())
        if not self.conn.poll(startup_timeout):
            self.kill()
            raise RuntimeError(f"the verification child did not start in {startup_timeout:.0f} s")
        try:
            msg = self.conn.recv()
        except (EOFError, OSError):
            self.proc.wait(5)
            raise RuntimeError("the verification child died while starting: "
                               f"{exit_reason(self.proc.returncode)}") from None
        assert msg[0] == "ready", msg

    @property
    def exitcode(self) -> Optional[int]:
        return self.proc.poll()

    def kill(self) -> None:
        for stop in (self.proc.terminate, self.proc.kill):
            if self.proc.poll() is not None:
                break
            stop()
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                pass
        self.conn.close()

    def close(self) -> None:
        try:
            self.conn.send(None)
            self.proc.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self.kill()


@dataclass
class Outcome:
    rows: list = field(default_factory=list)
    ended: str = "done"          # "done" | "crash" | "timeout" | "restart"
    detail: str = ""


def run_job(worker: Worker, job: dict, timeout: float, on_row: Callable) -> Outcome:
    """Send a job, collect its rows; stops at the first crash or timeout."""
    out = Outcome()
    worker.conn.send(job)
    while True:
        if not worker.conn.poll(timeout):
            worker.kill()
            out.ended, out.detail = "timeout", f"no answer within {timeout:g} s (killed)"
            return out
        try:
            msg = worker.conn.recv()
        except (EOFError, OSError):
            try:
                worker.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
            out.ended, out.detail = "crash", f"the process died: {exit_reason(worker.exitcode)}"
            return out
        if msg[0] == "row":
            out.rows.append(msg[1])
            on_row(msg[1])
        else:
            out.ended = msg[0]
            return out


class Pool:
    """Runs jobs on a child, replacing it after a crash, a timeout or a lost CUDA context."""

    def __init__(self, startup_timeout: float = 300.0):
        self.startup_timeout = startup_timeout
        self.worker: Optional[Worker] = None
        self.spawned = 0

    def _worker(self) -> Worker:
        if self.worker is None:
            self.worker = Worker(self.startup_timeout)
            self.spawned += 1
        return self.worker

    def run(self, job: dict, cases: list, timeout: float, on_row: Callable) -> tuple:
        """(rows, ended, detail) for all the job's cases: rows the child did not answer are
        filled in here ("crash"/"timeout" for the case in flight, "skipped" after it)."""
        rows, todo = [], list(cases)
        base = {k: job[k] for k in ("op", "backend", "dtype")}
        while todo:
            try:
                w = self._worker()
            except RuntimeError as e:
                for out_f, in_f, m in todo:
                    rows.append(dict(base, out=out_f, **{"in": in_f}, m=m, status="error",
                                     detail=str(e)))
                return rows, "error", str(e)
            res = run_job(w, dict(job, todo=set(todo)), timeout, on_row)
            rows += res.rows
            done = {(r["out"], r["in"], r["m"]) for r in res.rows}
            todo = [c for c in todo if c not in done]
            if res.ended == "done":
                return rows, "done", ""
            self.worker = None
            w.kill()
            if res.ended == "restart":
                if res.rows:
                    continue  # the context was lost after an exception: go on in a new child
                res.ended, res.detail = "crash", "the child gave up without answering"
            if todo:
                out_f, in_f, m = todo[0]
                rows.append(dict(base, out=out_f, **{"in": in_f}, m=m, status=res.ended,
                                 detail=res.detail))
                on_row(rows[-1])
                why = ("not run: the kernel crashed its process at " if res.ended == "crash" else
                       "not run: the kernel timed out at ") + f"{out_f}x{in_f} M={m}"
                for o, i, mm in todo[1:]:
                    rows.append(dict(base, out=o, **{"in": i}, m=mm, status="skipped",
                                     detail=why))
                    on_row(rows[-1])
            return rows, res.ended, res.detail
        return rows, "done", ""

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()
            self.worker = None


def deadline(max_time: Optional[float]) -> Callable[[], bool]:
    """A function telling whether ``max_time`` seconds have passed since now."""
    t0 = time.monotonic()
    return lambda: max_time is not None and time.monotonic() - t0 > max_time
