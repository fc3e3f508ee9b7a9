"""The Python-backend process's IPC region without a name: once the model's process runs, nothing can open it again.

Triton's system shared-memory API registers any /dev/shm name as a buffer for inputs and outputs (for whoever holds
the admin key); an output written into the region through which tritonserver and a model's process exchange their
messages corrupts them and aborts tritonserver. The Python backend (23.x-24.x: StubLauncher::Setup, Stub::Instantiate)
opens a region by name only to create it and once in the model's process, before the model's module is imported; it
grows the region through the descriptors both hold. So the generated model.py removes the name first thing: the
memory stays mapped in both processes and is freed with the last of them, a killed server leaves nothing in /dev/shm,
and no registration can reach it, whatever key it carries.
"""

from __future__ import annotations

from pathlib import Path

SHM_DIR = Path("/dev/shm")
STUB = "triton_python_backend_stub"  # argv: stub, model path, region name, ...


def unlink_own_region(cmdline: Path = Path("/proc/self/cmdline"), shm_dir: Path = SHM_DIR) -> str | None:
    """Remove the name of this Python-backend process's region; returns it, or None outside a stub (an import from
    a test or a tool) or when the name is gone already."""
    argv = cmdline.read_bytes().split(b"\0")
    if len(argv) < 3 or Path(argv[0].decode(errors="replace")).name != STUB:
        return None
    name = argv[2].decode(errors="replace")
    if not name or "/" in name:
        return None
    try:
        (shm_dir / name).unlink()
    except FileNotFoundError:
        return None
    return name
