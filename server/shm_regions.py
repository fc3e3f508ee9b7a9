"""The Python backend's /dev/shm regions of launcher-started servers: named after the server, cleaned when it is gone.

The backend names its IPC regions with a prefix (``--backend-config=python,shm-region-prefix-name=...``); the
launcher makes it ``wan22_server_<tritonserver's pid>_``, so that the regions a crashed or killed server left are
recognised and removed at the next start while those of running servers are kept.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from wan22_triton.operations.procfs import read_stat

SHM_DIR = Path("/dev/shm")
SERVER_REGION_PREFIX = "wan22_server_"  # + "<tritonserver's pid>_": the Python backend's regions of one server


def server_region_prefix(pid: int | str) -> str:
    """Prefix of the Python backend's /dev/shm regions of the tritonserver with process id ``pid`` (the backend
    appends a uuid)."""
    return f"{SERVER_REGION_PREFIX}{pid}_"


def region_prefix_arg(prefix: str) -> str:
    return f"--backend-config=python,shm-region-prefix-name={prefix}"


def sets_region_prefix(args: Sequence[str]) -> bool:
    return any("shm-region-prefix-name" in a for a in args)


def _is_live_tritonserver(pid: int) -> bool:
    """Whether ``pid`` is a running tritonserver (not gone, not a zombie, not a new process that reuses the id)."""
    stat = read_stat(pid)
    return stat is not None and stat.name == "tritonserver" and stat.live


def remove_stale_regions(shm_dir: Path = SHM_DIR) -> list[Path]:
    """Delete the Python-backend regions of launcher-started tritonservers that are gone (a crash or SIGKILL leaves
    them); their names carry the server's pid, and a live server's are kept."""
    removed = []
    for region in shm_dir.glob(f"{SERVER_REGION_PREFIX}*_*"):
        pid = region.name[len(SERVER_REGION_PREFIX):].split("_", 1)[0]
        if not pid.isdigit() or _is_live_tritonserver(int(pid)):
            continue
        try:
            region.unlink()
        except (FileNotFoundError, PermissionError):  # removed meanwhile; another user's (/dev/shm is sticky)
            continue
        removed.append(region)
    return removed
