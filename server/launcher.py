"""``python -m server.launcher``: NVIDIA Triton Inference Server in the foreground on a model repository (``make
serve``, the serve image's CMD).

tritonserver runs as its child with its output on the terminal: the binary from tritonserver_install.py, its command
line from tritonserver_args.py (loopback by default, admin APIs behind a key, bounded exit timeout), the process and
the HTTP guard in front of its HTTP port from process.py. Before it starts, the /dev/shm regions of tritonservers that
are gone are removed (shm_regions.py). SIGINT, SIGTERM and SIGHUP stop it within ``--exit-timeout-secs`` +
``process.STOP_GRACE_S``::

    python -m server.launcher --model-repository model_repository \\
        [--http-port 8000 --grpc-port 8001 --metrics-port 8002] [--listen-address 127.0.0.1] \\
        [--admin-key KEY] [--exit-timeout-secs 15] [--log-verbose N] [any other tritonserver flag, passed through] \\
        [--video-api-port 8080 [--video-api-database URL] [--video-api-results DIR]]

With ``--video-api-port`` the OpenAI-compatible video jobs API (``python -m video_api serve``, docs/video-api.md)
runs as a second child once Triton is READY, on the same listen address, against Triton's gRPC port; started again
if it exits, and stopped first (before tritonserver) when the launcher stops.

The same server in the background, for tests, the demo and benchmarks: triton_server.TritonServer.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Mapping, NoReturn, Sequence

from clients.admin import ADMIN_HEADER, ADMIN_KEY_ENV, GRPC_HEADER_PREFIX
from video_api import API_KEY_ENV as VIDEO_API_KEY_ENV, DATABASE_ENV as VIDEO_API_DATABASE_ENV
from video_api import DEFAULT_DATABASE, DEFAULT_RESULTS, RESULTS_ENV as VIDEO_API_RESULTS_ENV, absolute_sqlite, shown_url

from .process import STOP_GRACE_S, HttpFront, ServerProcess, is_ready, parent_death_signal, ports_in_use
from .shm_regions import remove_stale_regions
from .startup_faults import HangWatch, StartupFault
from .tritonserver_args import (ADMIN_APIS, EVERY_INTERFACE, EXIT_TIMEOUT_S, LOOPBACK, default_port, has_nvidia_gpu,
                                printable_command, resolve_admin_key)
from .tritonserver_install import TritonLaunchError, find_tritonserver


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
    video_api_port: int | None = None,
    video_api_database: str = "",
    video_api_results: Path | str = "",
) -> int:
    """Run tritonserver in the foreground, its output on this terminal, until it exits or SIGINT, SIGTERM or SIGHUP
    asks it to stop (within ``exit_timeout_s`` + STOP_GRACE_S); returns its exit code (128 + signal if killed)."""
    install = find_tritonserver(tritonserver)
    key, key_source = resolve_admin_key(admin_key)
    given = {"http": http_port, "grpc": grpc_port, "metrics": metrics_port}
    ports = {kind: port if port is not None else default_port(kind) for kind, port in given.items()}
    if taken := ports_in_use(listen_address, {**ports, **({"video-api": video_api_port} if video_api_port else {})}):
        raise TritonLaunchError(f"port {', '.join(taken)} on {listen_address} is in use: stop what listens there "
                                f"or pass --{{http,grpc,metrics,video-api}}-port (or $HTTP_PORT, $GRPC_PORT, "
                                f"$METRICS_PORT, ${VIDEO_API_PORT_ENV})")
    front = HttpFront(listen_address, ports["http"], taken=(ports["grpc"], ports["metrics"]))
    cmd = front.command(install, model_repository, extra_args, grpc_port=ports["grpc"], metrics_port=ports["metrics"],
                        admin_key=key, listen_address=listen_address, exit_timeout_s=exit_timeout_s,
                        log_verbose=log_verbose)
    removed = remove_stale_regions()
    print(f"[server.launcher] tritonserver from {install.source}: {printable_command(cmd, key)}", file=sys.stderr)
    notes = start_notes(listen_address, ports, key, key_source, exit_timeout_s, removed)
    notes.append(f"HTTP through the HTTP guard (server.http_guard, checks inference requests before Triton's parser); "
                 f"Triton's own HTTP on {LOOPBACK}:{front.triton_port}")
    for note in notes:
        print(f"[server.launcher] {note}", file=sys.stderr)
    sys.stderr.flush()
    stop_asked = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda *_: stop_asked.set())
    front.start()
    started = time.monotonic()
    server = ServerProcess(cmd, {**install.env, **front.env}, die_with_parent=True)
    ready_url, ready_said = f"http://{LOOPBACK}:{front.triton_port}/v2/health/ready", False
    hang, fault, video_api, video_api_again = HangWatch(server.proc.pid), None, None, None

    def start_api() -> subprocess.Popen:
        return start_video_api(ports["grpc"], listen_address, video_api_port, video_api_database or DEFAULT_DATABASE,
                               Path(video_api_results or DEFAULT_RESULTS))

    while server.proc.poll() is None and not stop_asked.wait(0.5 if ready_said else 0.1):
        if video_api is not None and video_api.poll() is not None:  # it exited on its own: start it again
            if video_api_again is None:
                video_api_again = time.monotonic() + VIDEO_API_RESTART_S
                print(f"[server.launcher] the video jobs API exited with code {video_api.returncode}; starting it "
                      f"again in {VIDEO_API_RESTART_S:g} s", file=sys.stderr, flush=True)
            elif time.monotonic() >= video_api_again:
                video_api, video_api_again = start_api(), None
        if not ready_said and is_ready(ready_url):
            ready_said = True
            models = sorted(p.parent.name for p in Path(model_repository).glob("*/config.pbtxt"))
            print(f"[server.launcher] READY in {time.monotonic() - started:.1f}s: {', '.join(models)}; serving on "
                  f"{listen_address}, HTTP {ports['http']}, gRPC {ports['grpc']}, metrics {ports['metrics']}",
                  file=sys.stderr, flush=True)
            if video_api_port:
                video_api = start_api()
        elif not ready_said:
            try:
                hang.check()
            except StartupFault as found:
                fault = found
                break
    bound = exit_timeout_s + STOP_GRACE_S
    if stop_asked.is_set():
        print(f"[server.launcher] stopping: requests in flight get {exit_timeout_s} s, the server is killed "
              f"{STOP_GRACE_S} s later if it still runs", file=sys.stderr, flush=True)
    if video_api is not None:  # first: its running jobs fail, saying the service stopped, before Triton goes
        stop_child(video_api, STOP_GRACE_S)
    server.terminate()  # at once: Triton stops taking requests while the guard lets its in-flight ones finish
    front.stop()  # then its keep-alive connections to Triton close, which would hold Triton's exit to its timeout
    code = server.stop(bound)
    if server.killed:
        print(f"[server.launcher] stopped: tritonserver still ran {bound} s after SIGTERM (a request still "
              "executing), so it was killed with its model processes", file=sys.stderr, flush=True)
    if fault is not None:
        raise TritonLaunchError(f"{fault}: start the server again")
    return code if code >= 0 else 128 - code


VIDEO_API_PORT_ENV = "VIDEO_API_PORT"  # the serve image's switch (docker run -e VIDEO_API_PORT=8080)
VIDEO_API_RESTART_S = 5.0


def start_video_api(grpc_port: int, listen_address: str, port: int, database: str = DEFAULT_DATABASE,
                    results: Path = Path(DEFAULT_RESULTS)) -> subprocess.Popen:
    """`python -m video_api serve` against this tritonserver, in its own session (Ctrl-C reaches the launcher only,
    which stops it before tritonserver), SIGTERM if the launcher dies. The database URL goes through the
    environment, not the command line, where `ps` would show a password in it."""
    database, results = absolute_sqlite(database), results.resolve()
    command = [sys.executable, "-m", "video_api", "serve", "--triton-url", f"{LOOPBACK}:{grpc_port}", "--host",
               listen_address, "--port", str(port), "--results", str(results)]
    key = (f"key from ${VIDEO_API_KEY_ENV}" if os.environ.get(VIDEO_API_KEY_ENV) else
           f"keys in the job store (a new one prints a generated key once; set ${VIDEO_API_KEY_ENV} to choose it)")
    print(f"[server.launcher] video jobs API (OpenAI /v1/videos) on http://{listen_address}:{port}/v1: jobs in "
          f"{shown_url(database)}, results in {results}, {key}; docs/video-api.md",
          file=sys.stderr, flush=True)
    return subprocess.Popen(command, stdin=subprocess.DEVNULL, env={**os.environ, VIDEO_API_DATABASE_ENV: database},
                            start_new_session=True, preexec_fn=parent_death_signal)


def stop_child(proc: subprocess.Popen, timeout_s: float) -> None:
    proc.terminate()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


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
    parser.add_argument("--video-api-port", type=int, default=int(os.environ.get(VIDEO_API_PORT_ENV) or 0) or None,
                        help="also serve the OpenAI-compatible video jobs API (python -m video_api) on this port once "
                             f"Triton is READY (default ${VIDEO_API_PORT_ENV}, else off)")
    parser.add_argument("--video-api-database", default=os.environ.get(VIDEO_API_DATABASE_ENV) or DEFAULT_DATABASE,
                        help="the video API's job store: sqlite:///FILE or postgresql+psycopg://USER:PASSWORD@HOST/DB "
                             f"(default ${VIDEO_API_DATABASE_ENV}, else {DEFAULT_DATABASE} in the working folder)")
    parser.add_argument("--video-api-results", type=Path,
                        default=Path(os.environ.get(VIDEO_API_RESULTS_ENV) or DEFAULT_RESULTS),
                        help=f"the video API's MP4 results (default ${VIDEO_API_RESULTS_ENV}, else {DEFAULT_RESULTS} "
                             "in the working folder)")
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
            video_api_port=args.video_api_port,
            video_api_database=args.video_api_database,
            video_api_results=args.video_api_results,
        )
    except TritonLaunchError as exc:
        parser.exit(2, f"error: {exc}\n")
    sys.exit(code)


if __name__ == "__main__":
    main()
