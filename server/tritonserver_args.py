"""What tritonserver is started with: the command line the launcher builds (``build_command``).

* every model must load, configs used as written, models loaded at start, readiness strict;
* listening on 127.0.0.1 only, unless ``listen_address`` says otherwise (``0.0.0.0``: every interface);
* Triton's admin APIs (``ADMIN_APIS``: shared memory, model repository, statistics, trace, logging) restricted to
  requests with the header ``clients.admin.ADMIN_HEADER`` set to the admin key (``resolve_admin_key``); inference,
  health and metadata stay open;
* ``--exit-timeout-secs`` 15 (Triton's default is 30);
* without an NVIDIA GPU, no pinned-memory pool and no GPU metrics (their start-up attempts only log errors).
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path
from typing import Sequence

from clients.admin import ADMIN_HEADER, ADMIN_KEY_ENV, admin_key_from_env

from .tritonserver_install import TritonInstall, TritonLaunchError

DEFAULT_PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}
PORT_ENV_VARS = {"http": "HTTP_PORT", "grpc": "GRPC_PORT", "metrics": "METRICS_PORT"}

LOOPBACK = "127.0.0.1"
EVERY_INTERFACE = ("0.0.0.0", "::")
# Triton 2.51's admin APIs (`tritonserver --help`: --grpc-restricted-protocol, --http-restricted-api); the others,
# health, metadata, model-config and inference, stay open.
ADMIN_APIS = ("shared-memory", "model-repository", "statistics", "trace", "logging")
# Characters that survive Triton's `<apis>:<key>=<value>` flag and perf_analyzer's `-H Header:Value`.
_ADMIN_KEY_FORMAT = re.compile(r"[A-Za-z0-9._~-]{16,}")
# After SIGTERM tritonserver waits this long, all together, for open HTTP connections (a keep-alive client holds it
# to the end), in-flight requests and the models' unload, then exits anyway: Triton's default, 30 s, is the 32-s
# stop. The tiny export's six Python models unload in 4-10 s on 2 busy CPU cores; unloaded in time, the exit is 0.
EXIT_TIMEOUT_S = 15



# --------------------------------------------------------------------------- #
# What a start needs besides the binary: exported models, address, admin key, no leftovers
# --------------------------------------------------------------------------- #


def default_port(kind: str) -> int:
    """Port for ``kind`` (http/grpc/metrics) from $HTTP_PORT/$GRPC_PORT/$METRICS_PORT, else 8000/8001/8002."""
    return int(os.environ.get(PORT_ENV_VARS[kind]) or DEFAULT_PORTS[kind])


def check_repository(model_repository: Path | str) -> Path:
    """The repository as an absolute path once it holds an exported model; otherwise an error saying to export."""
    repo = Path(model_repository).absolute()
    export_first = (f"export one first: `make export REPOSITORY={repo}` (the tiny checkpoint by default) or "
                    f"`python -m export --checkpoint DIR --repository {repo}`")
    if not repo.is_dir():
        raise TritonLaunchError(f"model repository not found: {repo}; {export_first}")
    if not any(repo.glob("*/config.pbtxt")):
        raise TritonLaunchError(f"model repository {repo} holds no exported model (no <model>/config.pbtxt); "
                                f"{export_first}")
    return repo


def resolve_admin_key(key: str | None = None) -> tuple[str, str]:
    """(admin key, where it came from): ``key``, else $WAN22_ADMIN_KEY, else a new random one ("generated")."""
    if key:
        source = "--admin-key"
    elif admin_key_from_env():
        key, source = admin_key_from_env(), f"${ADMIN_KEY_ENV}"
    else:
        return secrets.token_urlsafe(24), "generated"
    if not _ADMIN_KEY_FORMAT.fullmatch(key):
        raise TritonLaunchError(f"the admin key ({source}) must be at least 16 characters of A-Z a-z 0-9 . _ ~ -, "
                                "e.g. `openssl rand -hex 16`")
    return key, source


def restricted_api_args(admin_key: str) -> list[str]:
    """Triton's own gate on its admin APIs: requests without the header (value ``admin_key``) are refused."""
    apis = ",".join(ADMIN_APIS)
    return [f"--grpc-restricted-protocol={apis}:{ADMIN_HEADER}={admin_key}",
            f"--http-restricted-api={apis}:{ADMIN_HEADER}={admin_key}"]


def has_nvidia_gpu() -> bool:
    return any(Path("/dev").glob("nvidia[0-9]*"))


def no_gpu_args() -> list[str]:
    """Without an NVIDIA GPU, no pinned-memory pool and no GPU metrics: their start-up attempts only log CUDA, NVML
    and DCGM errors."""
    return [] if has_nvidia_gpu() else ["--pinned-memory-pool-byte-size=0", "--allow-gpu-metrics=false"]


def build_command(
    install: TritonInstall,
    model_repository: Path | str,
    *,
    http_port: int,
    grpc_port: int,
    metrics_port: int,
    admin_key: str,
    listen_address: str = LOOPBACK,
    http_address: str | None = None,
    exit_timeout_s: int = EXIT_TIMEOUT_S,
    log_verbose: int = 0,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """Full ``tritonserver`` argv.

    Every model in the repository must load (``--exit-on-error=true``), configs are
    used as written (``--disable-auto-complete-config``, the successor of
    ``--strict-model-config=true``), models are loaded at startup
    (``--model-control-mode=explicit`` with ``--load-model=*`` unless ``extra_args`` name the models: explicit mode
    lets the orchestrators' watchdog reload a component whose process died, wan22_triton/operations/watchdog.py;
    its load and unload API is an admin API, behind the key). gRPC and metrics listen on ``listen_address``, HTTP on
    ``http_address`` (default the same; the launcher's HTTP guard puts Triton's behind it on loopback);
    the admin APIs need ``admin_key`` (``restricted_api_args``). ``extra_args`` come last
    and so override. The Python backend's region prefix is ``process.ServerProcess``'s (it needs the pid).
    """
    repo = check_repository(model_repository)
    cmd = [
        str(install.binary),
        f"--model-repository={repo}",
        "--model-control-mode=explicit",
        *([] if any(arg.startswith("--load-model") for arg in extra_args) else ["--load-model=*"]),
        "--exit-on-error=true",
        "--strict-readiness=true",
        "--disable-auto-complete-config",
        f"--http-address={http_address or listen_address}",
        *(f"--{kind}-address={listen_address}" for kind in ("grpc", "metrics")),
        f"--http-port={http_port}",
        f"--grpc-port={grpc_port}",
        f"--metrics-port={metrics_port}",
        *restricted_api_args(admin_key),
        f"--exit-timeout-secs={exit_timeout_s}",
        *no_gpu_args(),
        f"--log-verbose={log_verbose}",
        *install.args,
    ]
    cmd.extend(extra_args)
    return cmd


def printable_command(cmd: Sequence[str], admin_key: str | None) -> str:
    """The command for a log line or a results file, the admin key masked."""
    line = " ".join(cmd)
    return line.replace(admin_key, "***") if admin_key else line
