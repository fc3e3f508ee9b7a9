"""HTTP guard: a validating reverse proxy in front of Triton's HTTP port, and how to run it.

Triton 2.51 has no option that bounds what a JSON inference input may declare, and one request with
`"shape": [1099511627776]` aborts the server (inference_request.py has the why and the rules; proxy.py what the guard
does with each request). The guard listens where clients connect; Triton's HTTP port stays on loopback behind it:

    python -m server.http_guard --listen 0.0.0.0:8000 --upstream 127.0.0.1:18000 [--max-body-bytes N]
        [--max-json-bytes N] [--max-elements N] [--body-idle-seconds S] [--abandon-dir DIR] [--exit-with-pid PID]
        [--log-level INFO]

`HttpGuard` runs it on a thread of the calling process (process.HttpFront, which the launcher and TritonServer use);
the CLI runs it in the foreground in front of a tritonserver started some other way, `--exit-with-pid` tying its life
to that server's.
"""

from __future__ import annotations

import argparse
import logging
import asyncio
import os
import signal
import socket
import sys
import threading
from dataclasses import dataclass
from typing import Sequence

from aiohttp import web

from wan22_triton.operations import abandonment

from .inference_request import InferenceLimits
from .proxy import GuardSettings, HttpGuardApp

SHUTDOWN_GRACE_S = 10.0  # in-flight requests get this long at stop, as tritonserver's --exit-timeout-secs


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    host, sep, port = endpoint.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {endpoint!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def listening_socket(endpoint: str) -> socket.socket:
    host, port = parse_endpoint(endpoint)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


@dataclass
class RunningGuard:
    """A started guard: its handler (with the upstream pool) and the aiohttp runner serving it."""

    app: HttpGuardApp
    runner: web.ServerRunner
    sweeper: asyncio.Task | None

    async def stop(self) -> None:
        if self.sweeper is not None:
            self.sweeper.cancel()
        await self.runner.cleanup()
        await self.app.close()


async def _sweep_markers(directory: str) -> None:
    while True:
        abandonment.sweep(directory)
        await asyncio.sleep(60)


async def start_guard(sock: socket.socket, upstream: str, settings: GuardSettings) -> RunningGuard:
    """Serve on `sock`, forwarding to `upstream`, until `stop()`."""
    app = HttpGuardApp(upstream, settings)
    await app.open()
    # handler_cancellation: a client that disconnects cancels its handler, and with it the upstream request.
    # auto_decompress off: the guard inflates a copy to check it, and forwards the bytes that came.
    server = web.Server(app.handle, handler_cancellation=True, auto_decompress=False)
    runner = web.ServerRunner(server, shutdown_timeout=SHUTDOWN_GRACE_S)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    sweeper = None
    if settings.abandon_dir is not None:
        os.makedirs(settings.abandon_dir, exist_ok=True)
        sweeper = asyncio.create_task(_sweep_markers(settings.abandon_dir))
    return RunningGuard(app, runner, sweeper)


class HttpGuard:
    """The guard on a thread of this process: `HttpGuard("127.0.0.1:0", triton_http).start()`, then `url`."""

    def __init__(self, listen: str, upstream: str, settings: GuardSettings | None = None) -> None:
        self.upstream = upstream
        self.settings = settings or GuardSettings()
        self._sock = listening_socket(listen)
        self.host, self.port = self._sock.getsockname()[:2]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._running: RunningGuard | None = None

    @property
    def url(self) -> str:
        """host:port, as tritonclient takes it."""
        return f"{self.host}:{self.port}"

    def start(self) -> "HttpGuard":
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._running = loop.run_until_complete(start_guard(self._sock, self.upstream, self.settings))
            except BaseException as exc:  # reported to start()'s caller
                failure.append(exc)
                started.set()
                loop.close()
                return
            started.set()
            loop.run_forever()
            loop.run_until_complete(self._running.stop())
            loop.close()

        self._thread = threading.Thread(target=run, name=f"http-guard-{self.port}", daemon=True)
        self._thread.start()
        started.wait()
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        if self._thread is None or self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._thread = None
        self._sock.close()

    def __enter__(self) -> "HttpGuard":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


async def _serve_until_signalled(sock: socket.socket, upstream: str, settings: GuardSettings,
                                 exit_with_pid: int | None) -> None:
    running = await start_guard(sock, upstream, settings)
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)
    host, port = sock.getsockname()[:2]
    print(f"[http_guard] listening on {host}:{port}, forwarding to {upstream}", file=sys.stderr, flush=True)
    try:
        while not done.is_set():
            try:
                await asyncio.wait_for(done.wait(), timeout=1.0)
            except asyncio.TimeoutError:
                if exit_with_pid is not None and not _process_exists(exit_with_pid):
                    print(f"[http_guard] process {exit_with_pid} is gone: stopping", file=sys.stderr, flush=True)
                    break
    finally:
        await running.stop()


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def main(argv: Sequence[str] | None = None) -> None:
    defaults = GuardSettings()
    parser = argparse.ArgumentParser(prog="python -m server.http_guard", description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", required=True, help="HOST:PORT clients connect to")
    parser.add_argument("--upstream", required=True, help="Triton's HTTP HOST:PORT (keep it on loopback)")
    parser.add_argument("--max-body-bytes", type=int, default=defaults.max_body_bytes)
    parser.add_argument("--max-json-bytes", type=int, default=defaults.inference.max_json_bytes)
    parser.add_argument("--max-elements", type=int, default=defaults.inference.max_elements,
                        help="elements one input may declare")
    parser.add_argument("--body-idle-seconds", type=float, default=defaults.body_idle_s,
                        help="answer 408 to a client that sends no byte of its body for this long")
    parser.add_argument("--abandon-dir", default=None,
                        help="tell models when an HTTP client goes away: markers here "
                             "(wan22_triton/operations/abandonment.py)")
    parser.add_argument("--exit-with-pid", type=int, default=None, help="stop when this process is gone")
    parser.add_argument("--log-level", default="WARNING",
                        help="INFO: every request (access log), refusal and abandoned request too")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="[http_guard] %(message)s")
    settings = GuardSettings(
        max_body_bytes=args.max_body_bytes,
        inference=InferenceLimits(max_elements=args.max_elements, max_json_bytes=args.max_json_bytes),
        body_idle_s=args.body_idle_seconds,
        abandon_dir=args.abandon_dir,
    )
    asyncio.run(_serve_until_signalled(listening_socket(args.listen), args.upstream, settings, args.exit_with_pid))


if __name__ == "__main__":
    main()
