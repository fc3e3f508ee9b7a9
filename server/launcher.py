"""Run NVIDIA Triton Inference Server on a model repository: ``make serve`` (``serve``) and ``TritonServer`` (tests,
demo, benchmarks).

The binary: tritonserver_install.py (PATH or the nvidia-pytriton wheel). Its command line: tritonserver_args.py
(loopback by default, admin APIs behind a key, bounded exit timeout). What this module adds around the process:

* Triton's HTTP on a loopback port of its own, and on the public HTTP port the HTTP guard (gateway/), which checks
  every inference request before Triton's JSON parser and tells the orchestrator when an HTTP client went away
  (``HttpFront``);
* the Python backend's /dev/shm regions named after the server's pid (shm_regions.py), those of servers that are
  gone removed at start;
* a bounded stop: SIGTERM, then ``STOP_GRACE_S`` past Triton's exit timeout SIGKILL of its process group
  (``ServerProcess.stop``).

CLI (foreground, tritonserver as its child with its output on the terminal; SIGINT, SIGTERM and SIGHUP stop it within
``--exit-timeout-secs`` + ``STOP_GRACE_S``; used by ``make serve``)::

    python -m server.launcher --model-repository model_repository \\
        [--http-port 8000 --grpc-port 8001 --metrics-port 8002] [--listen-address 127.0.0.1] \\
        [--admin-key KEY] [--exit-timeout-secs 15] [--log-verbose N] [any other tritonserver flag, passed through]

Python API (tests, demos)::

    with TritonServer("model_repository") as server:   # free ports picked; admin key: $WAN22_ADMIN_KEY or a fresh one
        client = tritonclient.http.InferenceServerClient(server.http_url)
        client.get_inference_statistics(headers=server.admin_headers("http"))
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Iterable, Mapping, NoReturn, Sequence

from clients.admin import ADMIN_HEADER, ADMIN_KEY_ENV, GRPC_HEADER_PREFIX, admin_headers
from server.http_guard import HttpGuard
from server.proxy import GuardSettings
from wan22_triton.operations import abandonment

from server.tritonserver_args import (ADMIN_APIS, EVERY_INTERFACE, EXIT_TIMEOUT_S, LOOPBACK, build_command, default_port,
                          has_nvidia_gpu, printable_command, resolve_admin_key)
from .shm_regions import SHM_DIR, region_prefix_arg, remove_stale_regions, server_region_prefix, sets_region_prefix
from .tritonserver_install import TritonInstall, TritonLaunchError, find_tritonserver, prepend_path

# Past its exit timeout tritonserver still waits, without limit, for gRPC calls whose model is executing (its gRPC
# shutdown has no deadline): this long more, then SIGKILL.
STOP_GRACE_S = 5


def start_notes(listen_address: str, ports: Mapping[str, int], admin_key: str, key_source: str,
                exit_timeout_s: int, removed: Sequence[Path]) -> list[str]:
    """What a person starting the server should know: who can reach it, the admin key, how it stops."""
    where = f"HTTP {ports['http']}, gRPC {ports['grpc']}, metrics {ports['metrics']}"
    if listen_address in EVERY_INTERFACE:
        reach = (f"listening on {listen_address}, EVERY interface ({where}): other machines can reach it; "
                 "inference, health, metadata and metrics need no key")
    elif listen_address.startswith("127.") or listen_address == "::1":
        reach = (f"listening on {listen_address} only ({where}): clients on this machine; to expose it: "
                 "--listen-address 0.0.0.0 (make serve LISTEN_ADDRESS=0.0.0.0)")
    else:
        reach = f"listening on {listen_address} only ({where})"
    key = (f"generated for this start: {admin_key} (choose one with ${ADMIN_KEY_ENV} or --admin-key)"
           if key_source == "generated" else f"from {key_source}")
    notes = [
        reach,
        f"admin APIs ({', '.join(ADMIN_APIS)}) need header {ADMIN_HEADER} (gRPC: {GRPC_HEADER_PREFIX}{ADMIN_HEADER}) "
        f"= the admin key, {key}; clients: --admin-key or ${ADMIN_KEY_ENV}",
        f"Ctrl-C / SIGTERM stops it within {exit_timeout_s + STOP_GRACE_S} s (--exit-timeout-secs {exit_timeout_s}, "
        f"then SIGKILL {STOP_GRACE_S} s later); a generation in flight ends with an error at its next step",
    ]
    if removed:
        notes.append(f"removed {len(removed)} /dev/shm regions of tritonservers that are gone: "
                     + ", ".join(sorted({r.name.rsplit('_', 1)[0] + '_*' for r in removed})))
    if not has_nvidia_gpu():
        notes.append("no NVIDIA GPU: pinned memory and GPU metrics off; the one log line "
                     "'CudaDriverHelper has not been initialized.' is harmless (Triton's GPU build without a driver)")
    return notes


# --------------------------------------------------------------------------- #
# A running tritonserver: its own process group, a bounded stop, its regions removed
# --------------------------------------------------------------------------- #


class HttpFront:
    """The public HTTP port: the HTTP guard there, Triton's own HTTP on a free loopback port behind it.

    The guard marks requests whose client went away in ``abandon_dir``; the models find it through their
    environment (``env``) and the token header Triton forwards to them (``command``).
    """

    def __init__(self, listen_address: str, public_port: int, taken: Iterable[int] = ()):
        # free now, and none of the server's other ports: those were picked free earlier and released, so the
        # kernel may hand one out again (CI once got Triton's HTTP port equal to its gRPC port)
        self.triton_port = _free_port_except({public_port, *taken})
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


def _die_with_parent() -> None:
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
            preexec_fn=_die_with_parent if die_with_parent else None,
        )
        if argv is not self.command:
            self.shm_prefix = server_region_prefix(self.proc.pid)
            self.command.append(region_prefix_arg(self.shm_prefix))

    def stop(self, timeout: float) -> int:
        """SIGTERM, SIGKILL of the process group (stubs included) if it still runs after ``timeout`` s, then its
        regions removed (a SIGKILL or a crash leaves them); returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                # Not reaped yet, so the group id is still this server's.
                os.killpg(self.proc.pid, signal.SIGKILL)
        code = self.proc.wait()
        for leftover in SHM_DIR.glob(f"{self.shm_prefix}*") if self.shm_prefix else ():
            leftover.unlink(missing_ok=True)
        return code


def serve(
    model_repository: Path | str,
    *,
    http_port: int | None = None,
    grpc_port: int | None = None,
    metrics_port: int | None = None,
    listen_address: str = LOOPBACK,
    admin_key: str | None = None,
    exit_timeout_s: int = EXIT_TIMEOUT_S,
    log_verbose: int = 0,
    extra_args: Sequence[str] = (),
    tritonserver: str | None = None,
) -> int:
    """Run tritonserver in the foreground, its output on this terminal, until it exits or SIGINT, SIGTERM or SIGHUP
    asks it to stop (within ``exit_timeout_s`` + STOP_GRACE_S); returns its exit code (128 + signal if killed)."""
    install = find_tritonserver(tritonserver)
    key, key_source = resolve_admin_key(admin_key)
    given = {"http": http_port, "grpc": grpc_port, "metrics": metrics_port}
    ports = {kind: port if port is not None else default_port(kind) for kind, port in given.items()}
    front = HttpFront(listen_address, ports["http"], taken=(ports["grpc"], ports["metrics"]))
    cmd = front.command(install, model_repository, extra_args, grpc_port=ports["grpc"], metrics_port=ports["metrics"],
                        admin_key=key, listen_address=listen_address, exit_timeout_s=exit_timeout_s,
                        log_verbose=log_verbose)
    removed = remove_stale_regions()
    print(f"[server.launcher] tritonserver from {install.source}: {printable_command(cmd, key)}", file=sys.stderr)
    notes = start_notes(listen_address, ports, key, key_source, exit_timeout_s, removed)
    notes.append(f"HTTP through the HTTP guard (gateway/, checks inference requests before Triton's parser); "
                 f"Triton's own HTTP on {LOOPBACK}:{front.triton_port}")
    for note in notes:
        print(f"[server.launcher] {note}", file=sys.stderr)
    sys.stderr.flush()
    stop_asked = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda *_: stop_asked.set())
    front.start()
    server = ServerProcess(cmd, {**install.env, **front.env}, die_with_parent=True)
    while server.proc.poll() is None and not stop_asked.wait(0.5):
        pass
    front.stop()  # first: its keep-alive connections to Triton would hold Triton's exit to its timeout
    code = server.stop(exit_timeout_s + STOP_GRACE_S)
    return code if code >= 0 else 128 - code


# --------------------------------------------------------------------------- #
# Background server for tests and demos
# --------------------------------------------------------------------------- #


def _free_port_except(taken: set[int]) -> int:
    while True:
        [port] = _free_ports(1)
        if port not in taken:
            return port


def _free_ports(count: int) -> list[int]:
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


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
        picked = iter(_free_ports(3))
        self.http_port = http_port or next(picked)
        self.grpc_port = grpc_port or next(picked)
        self.metrics_port = metrics_port or next(picked)
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
        self._server: ServerProcess | None = None
        self._front: HttpFront | None = None

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
        if self.is_running():
            return self
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
        with open(self.log_file, "wb") as log:
            self._server = ServerProcess(self.command, self.install.env, stdout=log)
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
        url = f"http://{self.host}:{self.http_port}/v2/health/ready"
        while True:
            code = proc.poll()
            if code is not None:
                raise TritonLaunchError(
                    f"tritonserver exited with code {code} during startup; log {self.log_file}:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
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


# --------------------------------------------------------------------------- #
# CLI
# --------------------------------------------------------------------------- #


def main(argv: Sequence[str] | None = None) -> NoReturn:
    parser = argparse.ArgumentParser(
        prog="python -m server.launcher",
        description="Run tritonserver in the foreground. Unrecognised flags are passed to tritonserver.",
        allow_abbrev=False,
    )
    parser.add_argument("--model-repository", required=True, type=Path)
    parser.add_argument("--http-port", type=int, default=None, help="default $HTTP_PORT or 8000")
    parser.add_argument("--grpc-port", type=int, default=None, help="default $GRPC_PORT or 8001")
    parser.add_argument("--metrics-port", type=int, default=None, help="default $METRICS_PORT or 8002")
    parser.add_argument("--listen-address", default=LOOPBACK,
                        help=f"address HTTP, gRPC and metrics listen on (default {LOOPBACK}: this machine only; "
                             "0.0.0.0: every interface)")
    parser.add_argument("--admin-key", default=None,
                        help=f"key the admin APIs ({', '.join(ADMIN_APIS)}) require in header {ADMIN_HEADER} "
                             f"(default ${ADMIN_KEY_ENV}, else generated and printed)")
    parser.add_argument("--exit-timeout-secs", type=int, default=EXIT_TIMEOUT_S,
                        help="after SIGTERM, seconds tritonserver waits for in-flight requests and model unloads")
    parser.add_argument("--log-verbose", type=int, default=0)
    parser.add_argument("--tritonserver", default=None, help="binary to use (default: PATH, else nvidia-pytriton)")
    args, extra = parser.parse_known_args(argv)
    if extra and extra[0] == "--":
        extra = extra[1:]
    try:
        code = serve(
            args.model_repository,
            http_port=args.http_port,
            grpc_port=args.grpc_port,
            metrics_port=args.metrics_port,
            listen_address=args.listen_address,
            admin_key=args.admin_key,
            exit_timeout_s=args.exit_timeout_secs,
            log_verbose=args.log_verbose,
            extra_args=extra,
            tritonserver=args.tritonserver,
        )
    except TritonLaunchError as exc:
        parser.exit(2, f"error: {exc}\n")
    sys.exit(code)


if __name__ == "__main__":
    main()
