"""GPU facts and memory in use, read from the driver (NVML, else nvidia-smi): no CUDA context in this process,
so the benchmark's own process never holds GPU memory the servers and the baseline need."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time

from wan22_triton.operations.events import process_name


def monitored_gpu() -> str:
    """The GPU this process's CUDA device 0 is (the first of CUDA_VISIBLE_DEVICES: an index or a UUID), so that two
    benchmarks pinned to two GPUs of one host each watch their own; NVML itself ignores CUDA_VISIBLE_DEVICES."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    return visible or "0"


def nvidia_smi(query: str) -> list[str]:
    """The monitored GPU's values for an nvidia-smi --query-gpu list; [] without nvidia-smi."""
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "-i", monitored_gpu(), f"--query-gpu={query}", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout
    except (subprocess.SubprocessError, OSError):
        return []
    return [v.strip() for v in out.splitlines()[0].split(",")] if out.strip() else []


def gpu_used_gb() -> float | None:
    values = nvidia_smi("memory.used")
    return float(values[0]) / 1024 if values else None


class GpuMemoryPeak:
    """Peak memory in use on the monitored GPU (all processes) while the block runs: NVML polling, else nvidia-smi."""

    def __init__(self, interval: float = 0.25):
        self.interval = interval
        self.peak_gb: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._read = None
        self._processes = None
        self.processes_at_peak: dict[str, float] = {}  # "model (pid)" where known -> GB, at the peak
        try:
            import pynvml

            pynvml.nvmlInit()
            gpu = monitored_gpu()
            handle = (pynvml.nvmlDeviceGetHandleByIndex(int(gpu)) if gpu.isdigit()
                      else pynvml.nvmlDeviceGetHandleByUUID(gpu))
            self._read = lambda: pynvml.nvmlDeviceGetMemoryInfo(handle).used / 2**30
            self._processes = lambda: {
                p.pid: (p.usedGpuMemory or 0) / 2**30 for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
            }
        except Exception:  # no NVML: nvidia-smi (slower), or nothing on a CPU host
            if shutil.which("nvidia-smi"):
                self._read = gpu_used_gb

    def _run(self) -> None:
        while not self._stop.is_set():
            value = self._read()
            if value is not None and value > (self.peak_gb or 0.0):
                self.peak_gb = value
                if self._processes is not None:
                    try:
                        self.processes_at_peak = {
                            f"{process_name(pid)} ({pid})": gb for pid, gb in self._processes().items()
                        }
                    except Exception:
                        pass
            self._stop.wait(self.interval)

    def __enter__(self) -> "GpuMemoryPeak":
        if self._read is not None:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()


def wait_gpu_free(limit_gb: float = 2.0, timeout: float = 120.0) -> float | None:
    """Wait until the previous process's memory is released; returns the memory in use then."""
    deadline = time.monotonic() + timeout
    used = gpu_used_gb()
    while used is not None and used > limit_gb and time.monotonic() < deadline:
        time.sleep(1)
        used = gpu_used_gb()
    return used
