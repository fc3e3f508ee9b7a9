"""The two ways Triton 2.51's Python backend fails to start the model processes of a busy machine; a fresh start
succeeds after either (triton-inference-server/server#8882, open upstream).

* Abort: tritonserver dies of SIGABRT with ``ABORT_MESSAGE`` in its output.
* Hang: the backend gives up on a stub whose health flag it did not see set in time (``StubLauncher::
  ReceiveMessageFromStub``, 5 s), then waits, without limit, for that stub to exit (``WaitForStubProcess``); the stub
  finishes loading its model and waits for messages that never come. Nothing is logged and the server never gets
  ready. ``HangWatch`` sees it from /proc: a tritonserver thread blocked in ``wait4`` on a live stub.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from wan22_triton.operations.procfs import read_stat

ABORT_MESSAGE = "boost::interprocess::lock_exception"
# tritonserver waits on a stub's exit only after it ended it or it failed to start, and that stub exits at once
HANG_AFTER_S = 10.0
HANG_AFTER_ENV = "WAN22_HANG_AFTER_SECONDS"  # another threshold (the tests' hung starts)


class StartupFault(Exception):
    """tritonserver met one of the Python backend's startup faults: a new start is the cure."""


def aborted(returncode: int | None, output_tail: str) -> bool:
    return returncode == -signal.SIGABRT and ABORT_MESSAGE in output_tail


def _live(pid: int) -> bool:
    stat = read_stat(pid)
    return stat is not None and stat.live


def waited_stubs(server_pid: int) -> set[int]:
    """The live processes a thread of `server_pid` is blocked waiting to exit (wait4: the kernel's do_wait, the
    pid its first argument)."""
    waited = set()
    for task in Path(f"/proc/{server_pid}/task").glob("*"):
        try:
            if (task / "wchan").read_text() != "do_wait":
                continue
            pid = int((task / "syscall").read_text().split()[1], 16)
        except (OSError, IndexError, ValueError):  # the thread ended; not readable; running
            continue
        if pid > 0 and _live(pid):
            waited.add(pid)
    return waited


class HangWatch:
    """`check()` during a start raises StartupFault once tritonserver has waited HANG_AFTER_S for one live stub."""

    def __init__(self, server_pid: int, hang_after_s: float | None = None) -> None:
        hang_after_s = hang_after_s or float(os.environ.get(HANG_AFTER_ENV) or HANG_AFTER_S)
        self.server_pid, self.hang_after_s = server_pid, hang_after_s
        self._since: dict[int, float] = {}

    def check(self) -> None:
        now, waited = time.monotonic(), waited_stubs(self.server_pid)
        self._since = {pid: self._since.get(pid, now) for pid in waited}
        for pid, since in self._since.items():
            if now - since >= self.hang_after_s:
                raise StartupFault(f"tritonserver hung starting a model process (pid {pid}: the Python backend "
                                   f"gave up on it and waits for its exit; triton-inference-server/server#8882)")
