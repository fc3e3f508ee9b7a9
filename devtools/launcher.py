"""Launch NVIDIA Triton Inference Server on a model repository.

Two ways to get a ``tritonserver`` binary are supported:

* ``tritonserver`` on ``PATH`` (the NGC ``tritonserver`` container): used as is,
  with its default ``--backend-directory`` (``/opt/tritonserver/backends``).
* the binary shipped in the ``nvidia-pytriton`` wheel. It needs its bundled
  shared libraries (``site-packages/nvidia_pytriton.libs``) on
  ``LD_LIBRARY_PATH`` and a backend directory whose ``python/`` folder holds
  ``libtriton_python.so``, ``triton_python_backend_utils.py`` and the
  ``triton_python_backend_stub`` built for *this* interpreter's version. The
  wheel ships one stub per Python version, so that folder is assembled once
  into a cache directory (``<sys.prefix>/triton-backends/...``).

In both cases the directory of ``sys.executable`` is put first on ``PATH``: the
Python-backend stub ignores ``PYTHONPATH`` and runs the models with the Python
environment found first on ``PATH``, so that environment (which needs
``numpy<2``) must be the one this module runs in, or one put before it with
``TritonServer(path_first=[...])``.

CLI (foreground, replaces the current process; used by ``make serve``)::

    python -m devtools.launcher --model-repository model_repository \\
        [--http-port 8000 --grpc-port 8001 --metrics-port 8002] [--log-verbose N] \\
        [any other tritonserver flag, passed through]

Python API (tests, demos)::

    with TritonServer("model_repository") as server:   # free ports picked
        client = tritonclient.http.InferenceServerClient(server.http_url)
"""

from __future__ import annotations

import argparse
import atexit
import importlib.metadata
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping, NoReturn, Sequence

DEFAULT_PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}
PORT_ENV_VARS = {"http": "HTTP_PORT", "grpc": "GRPC_PORT", "metrics": "METRICS_PORT"}
BACKEND_CACHE_ENV_VAR = "WAN22_TRITON_BACKEND_CACHE"

PYTHON_BACKEND_FILES = ("libtriton_python.so", "triton_python_backend_utils.py", "triton_python_backend_stub")
_SYSTEM_LIB_DIRS = {"/lib", "/lib64", "/usr/lib", "/usr/lib64", "/usr/local/lib"}


class TritonLaunchError(RuntimeError):
    """tritonserver could not be found, prepared or started."""


# --------------------------------------------------------------------------- #
# Locating the binary and preparing its environment
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class TritonInstall:
    """A ``tritonserver`` binary with the environment and arguments it needs."""

    binary: Path
    source: str  # "PATH" or "nvidia-pytriton"
    env: dict[str, str] = field(repr=False)
    args: tuple[str, ...] = ()  # install-specific flags (--backend-directory, ...)


def _prepend_path(var: str, entries: Sequence[str], env: dict[str, str]) -> None:
    old = [p for p in env.get(var, "").split(os.pathsep) if p]
    env[var] = os.pathsep.join(list(entries) + [p for p in old if p not in entries])


def _pytriton_root() -> Path:
    try:
        import pytriton  # noqa: PLC0415 - optional dependency, only for the wheel case
    except ImportError as exc:
        raise TritonLaunchError(
            "tritonserver is not on PATH and the nvidia-pytriton wheel is not installed; "
            "install nvidia-pytriton or run inside the NGC tritonserver container"
        ) from exc
    return Path(pytriton.__file__).resolve().parent


def _default_cache_dir() -> Path:
    if os.environ.get(BACKEND_CACHE_ENV_VAR):
        return Path(os.environ[BACKEND_CACHE_ENV_VAR])
    prefix_cache = Path(sys.prefix) / "triton-backends"
    if os.access(prefix_cache if prefix_cache.exists() else sys.prefix, os.W_OK):
        return prefix_cache
    return Path(tempfile.gettempdir()) / f"wan22-triton-backends-{os.getuid()}"


def prepare_wheel_backends(cache_dir: Path | str | None = None, python_version: str | None = None) -> Path:
    """Return a backend directory for the wheel's tritonserver, building it once.

    The result contains ``python/{libtriton_python.so, triton_python_backend_utils.py,
    triton_python_backend_stub}``, the stub for ``python_version`` (default: this
    interpreter's ``major.minor``; the stub must match the interpreter). It is keyed
    by the pytriton and Python versions, built in a temporary folder and renamed into
    place, so concurrent callers and repeated calls are safe.
    """
    root = _pytriton_root() / "tritonserver"
    py_version = python_version or f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / py_version / "triton_python_backend_stub"
    if not stub.is_file():
        available = sorted(
            (p.name for p in (root / "python_backend_stubs").iterdir() if p.is_dir()),
            key=lambda v: tuple(int(x) for x in v.split(".") if x.isdigit()),
        )
        raise TritonLaunchError(
            f"nvidia-pytriton ships no Python-backend stub for Python {py_version} "
            f"(available: {', '.join(available) or 'none'}); use one of those interpreters"
        )
    sources = {
        "libtriton_python.so": root / "backends" / "python" / "libtriton_python.so",
        "triton_python_backend_utils.py": root / "backends" / "python" / "triton_python_backend_utils.py",
        "triton_python_backend_stub": stub,
    }
    missing = [str(p) for p in sources.values() if not p.is_file()]
    if missing:
        raise TritonLaunchError(f"nvidia-pytriton wheel is incomplete, missing: {', '.join(missing)}")

    cache = Path(cache_dir) if cache_dir is not None else _default_cache_dir()
    key = f"pytriton-{importlib.metadata.version('nvidia-pytriton')}-py{py_version}"
    backends = cache / key
    if all((backends / "python" / name).is_file() for name in PYTHON_BACKEND_FILES):
        return backends

    cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=cache))
    try:
        staging.chmod(0o755)  # mkdtemp makes it 0700
        (staging / "python").mkdir()
        for name, src in sources.items():
            shutil.copy2(src, staging / "python" / name)
        if backends.exists():  # incomplete leftover of an interrupted build
            shutil.rmtree(backends, ignore_errors=True)
        try:
            staging.rename(backends)
        except OSError:
            if not all((backends / "python" / n).is_file() for n in PYTHON_BACKEND_FILES):
                raise  # not a lost race with a concurrent builder
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return backends


def _interpreter_lib_dir() -> str | None:
    """Directory of this interpreter's libpython, when outside the system lib dirs.

    The stub links ``libpython3.X.so.1.0``; without this, a pyenv/conda interpreter
    would get the distribution's libpython of the same minor version instead.
    """
    libdir, soname = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME")
    if not libdir or not soname or not (Path(libdir) / soname).is_file():
        return None
    resolved = os.path.realpath(libdir)
    if resolved in _SYSTEM_LIB_DIRS or resolved.startswith("/usr/lib/"):
        return None
    return libdir


def _check_numpy() -> None:
    try:
        numpy_version = importlib.metadata.version("numpy")
    except importlib.metadata.PackageNotFoundError:
        print(f"warning: numpy is not installed in {sys.prefix}; the Python backend needs it", file=sys.stderr)
        return
    if int(numpy_version.split(".")[0]) >= 2:
        print(
            f"warning: numpy {numpy_version} in {sys.prefix}; the Python-backend stub needs numpy<2",
            file=sys.stderr,
        )


def find_tritonserver(tritonserver: str | os.PathLike | None = None, cache_dir: Path | str | None = None) -> TritonInstall:
    """Locate ``tritonserver`` and build the environment to run it with.

    ``tritonserver``: explicit binary (used like a PATH one); default: ``PATH``, else the wheel.
    """
    env = dict(os.environ)
    _prepend_path("PATH", [str(Path(sys.executable).parent)], env)
    _check_numpy()

    explicit = tritonserver or shutil.which("tritonserver")
    if explicit:
        binary = Path(explicit)
        if not binary.is_file():
            raise TritonLaunchError(f"tritonserver binary not found: {binary}")
        return TritonInstall(binary=binary.absolute(), source="PATH", env=env)

    root = _pytriton_root()
    binary = root / "tritonserver" / "bin" / "tritonserver"
    libs = root.parent / "nvidia_pytriton.libs"
    if not binary.is_file() or not libs.is_dir():
        raise TritonLaunchError(f"nvidia-pytriton wheel has no usable tritonserver ({binary}, {libs})")
    backends = prepare_wheel_backends(cache_dir)
    lib_dirs = [d for d in (_interpreter_lib_dir(), str(libs)) if d]
    _prepend_path("LD_LIBRARY_PATH", lib_dirs, env)
    args = (
        f"--backend-directory={backends}",
        f"--cache-directory={root / 'tritonserver' / 'caches'}",
    )
    return TritonInstall(binary=binary, source="nvidia-pytriton", env=env, args=args)


# --------------------------------------------------------------------------- #
# Command line
# --------------------------------------------------------------------------- #


def default_port(kind: str) -> int:
    """Port for ``kind`` (http/grpc/metrics) from $HTTP_PORT/$GRPC_PORT/$METRICS_PORT, else 8000/8001/8002."""
    return int(os.environ.get(PORT_ENV_VARS[kind]) or DEFAULT_PORTS[kind])


def build_command(
    install: TritonInstall,
    model_repository: Path | str,
    *,
    http_port: int,
    grpc_port: int,
    metrics_port: int,
    log_verbose: int = 0,
    shm_prefix: str | None = None,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """Full ``tritonserver`` argv.

    Every model in the repository must load (``--exit-on-error=true``), configs are
    used as written (``--disable-auto-complete-config``, the successor of
    ``--strict-model-config=true``), models are loaded at startup
    (``--model-control-mode=none``). ``extra_args`` come last and so override.
    ``shm_prefix`` prefixes the Python backend's /dev/shm region names (the backend
    appends a uuid), so a server's regions can be told apart and cleaned up.
    """
    repo = Path(model_repository).absolute()
    if not repo.is_dir():
        raise TritonLaunchError(f"model repository not found: {repo}")
    cmd = [
        str(install.binary),
        f"--model-repository={repo}",
        "--model-control-mode=none",
        "--exit-on-error=true",
        "--strict-readiness=true",
        "--disable-auto-complete-config",
        f"--http-port={http_port}",
        f"--grpc-port={grpc_port}",
        f"--metrics-port={metrics_port}",
        f"--log-verbose={log_verbose}",
        *install.args,
    ]
    if shm_prefix and not any("shm-region-prefix-name" in a for a in extra_args):
        cmd.append(f"--backend-config=python,shm-region-prefix-name={shm_prefix}")
    cmd.extend(extra_args)
    return cmd


def serve(
    model_repository: Path | str,
    *,
    http_port: int | None = None,
    grpc_port: int | None = None,
    metrics_port: int | None = None,
    log_verbose: int = 0,
    extra_args: Sequence[str] = (),
    tritonserver: str | None = None,
) -> NoReturn:
    """Replace the current process with tritonserver (foreground; signals go straight to it)."""
    install = find_tritonserver(tritonserver)
    cmd = build_command(
        install,
        model_repository,
        http_port=http_port if http_port is not None else default_port("http"),
        grpc_port=grpc_port if grpc_port is not None else default_port("grpc"),
        metrics_port=metrics_port if metrics_port is not None else default_port("metrics"),
        log_verbose=log_verbose,
        shm_prefix=f"wan22_{os.getpid()}_",  # exec keeps the pid
        extra_args=extra_args,
    )
    print(f"[devtools.launcher] tritonserver from {install.source}: {' '.join(cmd)}", file=sys.stderr, flush=True)
    os.execve(cmd[0], cmd, install.env)


# --------------------------------------------------------------------------- #
# Background server for tests and demos
# --------------------------------------------------------------------------- #


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
    waits ``stop_timeout``, then SIGKILLs the process group (the Python-backend
    stubs included) and returns the exit code.

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
        stop_timeout: float = 30.0,
        tritonserver: str | None = None,
        host: str = "127.0.0.1",
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
        self.stop_timeout = stop_timeout
        self.tritonserver = tritonserver
        self.host = host
        self.env = dict(env or {})
        self.path_first = [str(p) for p in path_first]
        self.install: TritonInstall | None = None
        self.command: list[str] | None = None
        self.startup_seconds: float | None = None
        self.returncode: int | None = None
        self._proc: subprocess.Popen | None = None
        self._shm_prefix = f"wan22_{uuid.uuid4().hex[:12]}_"

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 60) -> str:
        if not self.log_file or not self.log_file.exists():
            return "<no log>"
        return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])

    def start(self) -> "TritonServer":
        if self.is_running():
            return self
        install = find_tritonserver(self.tritonserver)
        env = {**install.env, **self.env}
        _prepend_path("PATH", self.path_first, env)
        self.install = replace(install, env=env)
        self.command = build_command(
            self.install,
            self.model_repository,
            http_port=self.http_port,
            grpc_port=self.grpc_port,
            metrics_port=self.metrics_port,
            log_verbose=self.log_verbose,
            shm_prefix=self._shm_prefix,
            extra_args=self.extra_args,
        )
        if self.log_file is None:
            fd, name = tempfile.mkstemp(prefix="tritonserver-", suffix=".log")
            os.close(fd)
            self.log_file = Path(name)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.returncode = None
        t0 = time.monotonic()
        with open(self.log_file, "wb") as log:
            self._proc = subprocess.Popen(
                self.command,
                env=self.install.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: stubs can be killed with it
            )
        atexit.register(self.stop)
        try:
            self._wait_ready(self._proc, t0)
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
        proc, self._proc = self._proc, None
        if proc is None:
            return self.returncode
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                # Not reaped yet, so the group id is still this server's: SIGKILL it with its stubs.
                os.killpg(proc.pid, signal.SIGKILL)
        self.returncode = proc.wait()
        for leftover in Path("/dev/shm").glob(f"{self._shm_prefix}*"):  # only left after a SIGKILL
            leftover.unlink(missing_ok=True)
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
        prog="python -m devtools.launcher",
        description="Run tritonserver in the foreground. Unrecognised flags are passed to tritonserver.",
        allow_abbrev=False,
    )
    parser.add_argument("--model-repository", required=True, type=Path)
    parser.add_argument("--http-port", type=int, default=None, help="default $HTTP_PORT or 8000")
    parser.add_argument("--grpc-port", type=int, default=None, help="default $GRPC_PORT or 8001")
    parser.add_argument("--metrics-port", type=int, default=None, help="default $METRICS_PORT or 8002")
    parser.add_argument("--log-verbose", type=int, default=0)
    parser.add_argument("--tritonserver", default=None, help="binary to use (default: PATH, else nvidia-pytriton)")
    args, extra = parser.parse_known_args(argv)
    if extra and extra[0] == "--":
        extra = extra[1:]
    try:
        serve(
            args.model_repository,
            http_port=args.http_port,
            grpc_port=args.grpc_port,
            metrics_port=args.metrics_port,
            log_verbose=args.log_verbose,
            extra_args=extra,
            tritonserver=args.tritonserver,
        )
    except TritonLaunchError as exc:
        parser.exit(2, f"error: {exc}\n")


if __name__ == "__main__":
    main()
