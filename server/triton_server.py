"""``TritonServer``: tritonserver in the background, ready when ``start()`` returns (tests, demo, benchmarks).

    with TritonServer("model_repository") as server:   # free ports picked; admin key: $WAN22_ADMIN_KEY or a fresh one
        client = tritonclient.http.InferenceServerClient(server.http_url)
        client.get_inference_statistics(headers=server.admin_headers("http"))

The same server as ``python -m server.launcher`` runs (process.py: the HTTP guard in front, regions, bounded stop),
with its output in a log file instead of the terminal.
"""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Mapping, Sequence

from clients.admin import admin_headers

from .process import STOP_GRACE_S, HttpFront, ServerProcess, free_ports, is_ready
from .shm_regions import remove_stale_regions
from .startup_faults import HangWatch, StartupFault, aborted
from .tritonserver_args import EVERY_INTERFACE, EXIT_TIMEOUT_S, LOOPBACK, resolve_admin_key
from .tritonserver_install import TritonInstall, TritonLaunchError, find_tritonserver, prepend_path

_SPAWNER = ThreadPoolExecutor(1, thread_name_prefix="tritonserver-spawner")  # its thread lives as long as the process
STARTUP_ATTEMPTS = 2
METRICS_OFF = "--allow-metrics=false"  # an extra argument that leaves the metrics port closed
PORT_TAKEN = "already in use"  # tritonserver's line when a port it was given is bound by another process


class PortTaken(StartupFault):
    """A picked port taken meanwhile: the next attempt picks new ones."""


class TritonServer:
    """tritonserver as a subprocess, for tests and demos.

    ``start()`` (or ``with``) launches it on the given ports (free ones when None),
    with stdout/stderr in ``log_file`` (a temporary file by default), and returns
    once ``/v2/health/ready`` answers 200; it raises with the log tail if the
    process exits first or ``startup_timeout`` passes. ``stop()`` sends SIGTERM,
    waits ``stop_timeout`` (default: ``exit_timeout_s``, tritonserver's own bound,
    plus ``STOP_GRACE_S``), then SIGKILLs the process group (the Python-backend stubs
    included), removes the server's /dev/shm regions and returns the exit code.

    It listens on ``listen_address`` (127.0.0.1 by default; ``host``, where clients connect,
    follows it, 127.0.0.1 when it is every interface). ``admin_key`` (default
    $WAN22_ADMIN_KEY, else generated) opens the admin APIs: ``admin_headers(protocol)``
    are the headers a client sends with them.

    ``env`` adds to (or overrides) the server's environment, which its model processes inherit (e.g.
    ``events.EVENTS_FILE_ENV``); ``path_first`` directories go first on its ``PATH``, before this interpreter's
    (a ``bin/`` whose ``python3`` the Python-backend stubs should run in). ``install.env`` is the result.

    ``http_url``/``grpc_url`` are ``host:port`` as tritonclient expects (no scheme);
    ``metrics_url`` is the full ``http://host:port/metrics`` URL.
    """

    def __init__(
        self,
        model_repository: Path | str,
        *,
        http_port: int | None = None,
        grpc_port: int | None = None,
        metrics_port: int | None = None,
        log_verbose: int = 0,
        log_file: Path | str | None = None,
        extra_args: Sequence[str] = (),
        startup_timeout: float = 120.0,
        stop_timeout: float | None = None,
        tritonserver: str | None = None,
        listen_address: str = LOOPBACK,
        host: str | None = None,
        admin_key: str | None = None,
        exit_timeout_s: int = EXIT_TIMEOUT_S,
        env: Mapping[str, str] | None = None,
        path_first: Sequence[str] = (),
    ) -> None:
        self.model_repository = Path(model_repository)
        self._given_ports = (http_port, grpc_port, metrics_port)
        self._pick_ports()
        self.log_verbose = log_verbose
        self.log_file = Path(log_file) if log_file else None
        self.extra_args = list(extra_args)
        self.startup_timeout = startup_timeout
        self.exit_timeout_s = exit_timeout_s
        self.stop_timeout = stop_timeout if stop_timeout is not None else exit_timeout_s + STOP_GRACE_S
        self.tritonserver = tritonserver
        self.listen_address = listen_address
        self.host = host or (LOOPBACK if listen_address in EVERY_INTERFACE else listen_address)
        self.admin_key, _ = resolve_admin_key(admin_key)
        self.env = dict(env or {})
        self.path_first = [str(p) for p in path_first]
        self.install: TritonInstall | None = None
        self.command: list[str] | None = None
        self.startup_seconds: float | None = None
        self.returncode: int | None = None
        self.shm_prefix: str | None = None  # server_region_prefix(pid), known once started
        self.startup_faults: list[str] = []  # starts lost to the Python backend's startup faults (start())
        self._server: ServerProcess | None = None
        self._front: HttpFront | None = None

    def _pick_ports(self) -> None:
        """Free ports for those not given (picked and released: another process may bind one before Triton does)."""
        picked = iter(free_ports(3))
        self.http_port, self.grpc_port, self.metrics_port = (port or next(picked) for port in self._given_ports)

    @property
    def http_url(self) -> str:
        """The public HTTP port: the HTTP guard in front of Triton's."""
        return f"{self.host}:{self.http_port}"

    @property
    def triton_http_url(self) -> str | None:
        """Triton's own HTTP port (loopback), behind the guard; None before start."""
        return f"{LOOPBACK}:{self._front.triton_port}" if self._front else None

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    def admin_headers(self, protocol: str) -> dict[str, str]:
        """Headers that open the admin APIs (shared memory, statistics, ...) over ``protocol`` (grpc/http)."""
        return admin_headers(self.admin_key, protocol)

    @property
    def pid(self) -> int | None:
        return self._server.proc.pid if self._server else None

    def is_running(self) -> bool:
        return self._server is not None and self._server.proc.poll() is None

    def log_tail(self, lines: int = 60) -> str:
        if not self.log_file or not self.log_file.exists():
            return "<no log>"
        return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])

    def start(self) -> "TritonServer":
        """Launch and wait for READY. A start lost to one of the Python backend's startup faults (startup_faults.py:
        an abort, a hang) is tried again, up to STARTUP_ATTEMPTS in all, each noted in ``startup_faults`` and on
        stderr; the log keeps every attempt."""
        if self.is_running():
            return self
        for attempt in range(1, STARTUP_ATTEMPTS + 1):
            try:
                return self._start(append_log=attempt > 1)
            except StartupFault as fault:
                if attempt == STARTUP_ATTEMPTS:
                    raise TritonLaunchError(f"{fault}, {STARTUP_ATTEMPTS} times; log {self.log_file}") from None
                if isinstance(fault, PortTaken):
                    self._pick_ports()
                self.startup_faults.append(str(fault))
                print(f"{fault}; starting it again (attempt {attempt + 1} of {STARTUP_ATTEMPTS}); log {self.log_file}",
                      file=sys.stderr)
        raise AssertionError("unreachable")

    def _start(self, append_log: bool) -> "TritonServer":
        install = find_tritonserver(self.tritonserver)
        front = self._front = HttpFront(self.listen_address, self.http_port, taken=(self.grpc_port, self.metrics_port))
        env = {**install.env, **front.env, **self.env}
        prepend_path("PATH", self.path_first, env)
        self.install = replace(install, env=env)
        self.command = front.command(self.install, self.model_repository, self.extra_args, grpc_port=self.grpc_port,
                                     metrics_port=self.metrics_port, admin_key=self.admin_key,
                                     listen_address=self.listen_address, exit_timeout_s=self.exit_timeout_s,
                                     log_verbose=self.log_verbose)
        front.start()
        remove_stale_regions()
        if self.log_file is None:
            fd, name = tempfile.mkstemp(prefix="tritonserver-", suffix=".log")
            os.close(fd)
            self.log_file = Path(name)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.returncode = None
        t0 = time.monotonic()
        with open(self.log_file, "ab" if append_log else "wb") as log:
            # Started from one long-lived thread, with the parent-death signal: a process that dies (a killed test
            # worker, an out-of-memory kill) takes its servers along; the signal follows the starting thread's end.
            self._server = _SPAWNER.submit(ServerProcess, self.command, self.install.env, stdout=log,
                                           die_with_parent=True).result()
        self.command, self.shm_prefix = self._server.command, self._server.shm_prefix
        atexit.register(self.stop)
        try:
            self._wait_ready(self._server.proc, t0)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - t0
        return self

    def _wait_ready(self, proc: subprocess.Popen, t0: float) -> None:
        # Triton opens its metrics port last, after READY: a start is done once that answers too (a port lost there
        # ends tritonserver after READY)
        urls = [f"http://{self.host}:{self.http_port}/v2/health/ready"]
        if METRICS_OFF not in self.extra_args:
            urls.append(self.metrics_url)
        hang = HangWatch(proc.pid)
        while True:
            code = proc.poll()
            if code is not None:
                tail = self.log_tail(400)
                if aborted(code, tail):
                    raise StartupFault(f"tritonserver aborted during startup (code {code}, a Python-backend fault)")
                if PORT_TAKEN in tail and None in self._given_ports:
                    raise PortTaken("a port picked for tritonserver was bound by another process before tritonserver "
                                    "bound it")
                raise TritonLaunchError(
                    f"tritonserver exited with code {code} during startup; log {self.log_file}:\n{self.log_tail()}"
                )
            if all(is_ready(url, timeout=2) for url in urls):
                return
            hang.check()
            if time.monotonic() - t0 > self.startup_timeout:
                raise TritonLaunchError(
                    f"tritonserver not ready after {self.startup_timeout:.0f}s; log {self.log_file}:\n{self.log_tail()}"
                )
            time.sleep(0.25)

    def stop(self) -> int | None:
        """Stop the server; returns its exit code (None if it was never started)."""
        atexit.unregister(self.stop)
        server, self._server = self._server, None
        front, self._front = self._front, None
        if front is not None:
            front.stop()  # first: its keep-alive connections to Triton would hold Triton's exit to its timeout
        if server is not None:
            self.returncode = server.stop(self.stop_timeout)
        return self.returncode

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
