"""One tritonserver process as the launcher and ``TritonServer`` run it, and the HTTP guard in front of its HTTP port.

* ``ServerProcess``: tritonserver in its own session (its Python-backend stubs in its process group), its /dev/shm
  regions named after its pid (shm_regions.py), a bounded stop: SIGTERM, then SIGKILL of the group, regions removed.
* ``HttpFront``: the HTTP guard (http_guard.py) on the public HTTP port, Triton's own HTTP on a free loopback port
  behind it, and the side channel that tells the models when an HTTP client went away.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import urllib.request
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from wan22_triton.operations import abandonment

from .http_guard import HttpGuard
from .proxy import GuardSettings
from .shm_regions import SHM_DIR, region_prefix_arg, server_region_prefix, sets_region_prefix
from .tritonserver_args import LOOPBACK, build_command
from .tritonserver_install import TritonInstall

# Past its exit timeout tritonserver still waits, without limit, for gRPC calls whose model is executing (its gRPC
# shutdown has no deadline): this long more, then SIGKILL.
STOP_GRACE_S = 5


def is_ready(url: str, timeout: float = 1.0) -> bool:
    """Whether `url` (/v2/health/ready, /metrics) answers 200; not listening yet, or not ready (an HTTP error is an
    OSError too): False."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except OSError:
        return False


def ports_in_use(address: str, ports: Mapping[str, int]) -> list[str]:
    """Of `ports` ({kind: port}), "<port> (<kind>)" for each one something already listens on at `address`: checked
    before the start, so a clash fails at once, not after every model has loaded."""
    taken = []
    for kind, port in ports.items():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind: TIME_WAIT is no clash
            try:
                s.bind((address, port))
            except OSError:
                taken.append(f"{port} ({kind})")
    return taken


EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
FIRST_UNPRIVILEGED_PORT = 1024


def _pickable_ports() -> range:
    """Ports below the kernel's ephemeral range: a picked port is released until tritonserver binds it (after its
    models load), and every outgoing connection takes an ephemeral port, so one from that range can be gone by then."""
    try:
        first_ephemeral = int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        first_ephemeral = 32768  # Linux's default
    return range(FIRST_UNPRIVILEGED_PORT, first_ephemeral)


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports free now, picked at random below the ephemeral range (_pickable_ports)."""
    pickable, picked = _pickable_ports(), []
    while len(picked) < count:
        port = random.choice(pickable)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((LOOPBACK, port))
            except OSError:
                continue
        if port not in picked:
            picked.append(port)
    return picked


def free_port_except(taken: set[int]) -> int:
    while True:
        [port] = free_ports(1)
        if port not in taken:
            return port


class HttpFront:
    """The public HTTP port: the HTTP guard there, Triton's own HTTP on a free loopback port behind it.

    The guard marks requests whose client went away in ``abandon_dir``; the models find it through their
    environment (``env``) and the token header Triton forwards to them (``command``).
    """

    def __init__(self, listen_address: str, public_port: int, taken: Iterable[int] = ()):
        # none of the server's other ports either: those were picked free and released, so the kernel may hand
        # one out again
        self.triton_port = free_port_except({public_port, *taken})
        self.abandon_dir = tempfile.mkdtemp(prefix="wan22-abandoned-")
        self.guard = HttpGuard(f"{listen_address}:{public_port}", f"{LOOPBACK}:{self.triton_port}",
                               GuardSettings(abandon_dir=self.abandon_dir))

    @property
    def env(self) -> dict[str, str]:
        return {abandonment.DIR_ENV: self.abandon_dir}

    def command(self, install: TritonInstall, model_repository: Path | str, extra_args: Sequence[str],
                **settings) -> list[str]:
        """tritonserver's command (tritonserver_args.build_command) with its HTTP on loopback behind the guard, and the
        abandon token forwarded to the models."""
        forward = f"--http-header-forward-pattern={abandonment.FORWARD_PATTERN}"
        return build_command(install, model_repository, http_port=self.triton_port, http_address=LOOPBACK,
                             extra_args=[forward, *extra_args], **settings)

    def start(self) -> None:
        self.guard.start()

    def stop(self) -> None:
        self.guard.stop()
        shutil.rmtree(self.abandon_dir, ignore_errors=True)


def parent_death_signal() -> None:
    """In the child, before exec: SIGTERM when the launcher dies (PR_SET_PDEATHSIG), as if it were the server."""
    import ctypes  # noqa: PLC0415 - in the forked child only

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


class ServerProcess:
    """tritonserver started in its own session, so that its Python-backend stubs share its process group.

    Unless ``command`` names a region prefix itself, it runs through a shell that execs it: the prefix names the
    server's pid (``server_region_prefix``), known only once it runs, and the shell keeps its own ($$).
    ``command`` is the argv as run, ``shm_prefix`` that prefix. ``stdout`` None: the launcher's own.
    """

    def __init__(self, command: Sequence[str], env: Mapping[str, str], stdout=None, die_with_parent: bool = False):
        self.command, self.shm_prefix = list(command), None
        self._terminated = False
        self.killed = False  # by stop(), past its timeout
        argv = self.command
        if not sets_region_prefix(command):
            script = f'exec "$@" "{region_prefix_arg(server_region_prefix("$$"))}"'
            argv = ["/bin/sh", "-c", script, "sh", *self.command]
        self.proc = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=None if stdout is None else subprocess.STDOUT,
            start_new_session=True,  # own process group: stubs can be killed with it
            preexec_fn=parent_death_signal if die_with_parent else None,
        )
        if argv is not self.command:
            self.shm_prefix = server_region_prefix(self.proc.pid)
            self.command.append(region_prefix_arg(self.shm_prefix))

    def terminate(self) -> None:
        """SIGTERM, once: tritonserver stops taking requests and finishes those in flight (its exit timeout)."""
        if self.proc.poll() is None and not self._terminated:
            self._terminated = True
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float) -> int:
        """SIGTERM (unless `terminate` sent it), SIGKILL of the process group (stubs included) if it still runs after
        ``timeout`` s, then its regions removed (a SIGKILL or a crash leaves them); returns the exit code."""
        if self.proc.poll() is None:
            self.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                # Not reaped yet, so the group id is still this server's.
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.killed = True
        code = self.proc.wait()
        try:  # what a crashed server leaves: its stubs (the group outlives its leader while they run)
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        for leftover in SHM_DIR.glob(f"{self.shm_prefix}*") if self.shm_prefix else ():
            leftover.unlink(missing_ok=True)
        return code
