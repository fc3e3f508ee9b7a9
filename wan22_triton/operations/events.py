"""Machine-readable events of the serving processes: one JSON object per line in the file `$WAN22_EVENTS_FILE`.

Log lines are for people; tests and the GPU benchmark read these instead. Nothing is written when the variable is
unset (normal serving). tritonserver passes its environment to the Python-backend stubs, so setting it for the
server (`server.triton_server.TritonServer(env=...)`) reaches every model process; each line carries the writer's pid
and the model its process serves.

Events (fields besides `event`, `time`, `pid`, `process`):

* ``weights_loaded``: model, gb, seconds (offload.HostWeights.load, low-memory mode)
* ``weights_released``: model, seconds (offload.HostWeights.release)
* ``expert_released``: expert, after_step, when, seconds (offload.ExpertSwitch in the orchestrator: the round trip
  of the release call)
* ``generation_lock_waited``: seconds (the orchestrator's low-memory generation lock, every request)
* ``generation_replica``: model, replica (with several replicas: the one a generation holds and calls,
  wan22_triton.parallel.plan.ReplicaSlots)
* ``expert_forward``: model, version, batch, first_block_only, started (each forward of a served expert)
* ``workspace_released``: model, device, after ("load", or "call" with the manifest's release_workspace),
  reserved_before, reserved_after (bytes the PyTorch cache held; 0 on a CPU), seconds; requests (a call's count) or
  rank (a sequence-parallel worker) (loading.release_workspace)
* ``component_died``: model, instance, stub_pid, exit_status; then ``component_restarted``: model, instance,
  seconds, stub_pids, or ``component_restart_failed``: model, instance, error (wan22_triton.operations.watchdog)
* ``compile_cache_loaded``: model, bytes, seconds, artifacts, points; ``compile_cache_mismatch``: model, differs
  ({field: [at export, here]}), reason; ``expert_compiled``: model, shape, seconds, graphs, cache_hits,
  cache_misses, cache_bypasses (a forward that compiled; wan22_triton.speed.compile_cache)
* ``export_component_written``: model, seconds; ``export_point_compiled``: model, point, seconds (the export's
  progress, export/repository.py and export/compile_artifacts.py)
* ``lora_loaded``: model, loras (names), seconds (an expert's adapters loaded at start, wan22_triton.request.lora)
* ``lora_selected``: model, lora (name, or null: the base model), scale, previous, seconds (an expert's switch of
  the active LoRA adapter, wan22_triton.request.lora.ExpertAdapters.select; only when the selection changes)
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

EVENTS_FILE_ENV = "WAN22_EVENTS_FILE"


def process_name(pid: int | str = "self") -> str:
    """What a process serves: a Python-backend stub's command line names its `<model>/1/model.py`, else the
    executable's name."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    for arg in args:
        parts = arg.decode(errors="replace").split("/")
        if len(parts) >= 3 and parts[-1] == "model.py":
            return parts[-3]
    return Path(args[0].decode(errors="replace")).name


_failing = False  # the last write failed: said once, until one succeeds


def emit(event: str, **fields: Any) -> None:
    """Append one event line to `$WAN22_EVENTS_FILE` (no-op when unset)."""
    path = os.environ.get(EVENTS_FILE_ENV)
    if not path:
        return
    record = {"event": event, **fields, "time": time.time(), "pid": os.getpid(), "process": process_name()}
    line = (json.dumps(record, default=str) + "\n").encode()
    # One write() of the whole line with O_APPEND: lines of concurrent processes never interleave. Events never fail
    # a request (a full disk, a removed folder): the first failure after a success says so where the server logs.
    global _failing
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
    except OSError as e:
        if not _failing:
            print(f"wan22_triton.operations.events: cannot write {path} ({e}); events are dropped until it can",
                  file=sys.stderr, flush=True)
        _failing = True
        return
    _failing = False


def end_offset(path: str | Path) -> int:
    """The file's current end (0 when it does not exist yet): pass it to `read_events` later for what came after."""
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def read_events(path: str | Path, since_offset: int = 0) -> list[dict[str, Any]]:
    """The events written at or after byte `since_offset`, oldest first (none when the file does not exist).

    Only whole lines: a line still being written (a reader may see part of another process's write) is left for
    the next read."""
    try:
        with open(path, "rb") as f:
            f.seek(since_offset)
            data = f.read()
    except FileNotFoundError:
        return []
    complete = data[:data.rfind(b"\n") + 1]
    return [json.loads(line) for line in complete.splitlines() if line.strip()]
