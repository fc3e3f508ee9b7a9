"""Low-memory serving (`export --low-memory`): weights that live in page-locked host memory between uses.

A model whose manifest says ``low_memory`` (both experts and the text encoder) keeps one
`HostWeights` copy of its parameters and buffers in host memory and has them on the GPU only while it works:

* the experts load on their first request and go back when the orchestrator tells them (optional input
  ``release``), which it does when the request moves on to the other expert (high -> low at the boundary) and
  after the last step (`ExpertSwitch`, the orchestrator's side): at most one expert is ever on the GPU;
* the text encoder loads at the start of each request and releases at its end.

Host side: one flat buffer per model, page-locked with ``cudaHostRegister`` (exact size: PyTorch's pinned-memory
allocator rounds every block up to a power of two, ~+40% for these weights), each tensor a typed view into it.
Loading is ONE host-to-device copy of that buffer into one device buffer (full PCIe bandwidth), after which every
parameter is re-pointed (``.data``) at its view there; releasing re-points them at the host views, drops the
device buffer and empties the CUDA caching allocator (the activations' pool goes too). Weights never change, so
nothing is copied back. Module objects, compiled graphs (same device, shapes and strides each time) and the
serving code are untouched.

On a CPU instance (tests) the "device" copy is a second host buffer: the same code path, nothing saved.

Two repository-wide locks (wan22_triton.operations.locks) serialise (a) building random-weight components on the GPU before
they go to host memory (benchmark seam: only one at a time on the GPU), and (b) the generations of all orchestrator
instances (both the unary and the streaming model), so that concurrent requests never hold both experts on the GPU.

Each load and release (and each release the orchestrator asks for) is logged for people and written as an event
(wan22_triton.operations.events) for tests and the GPU benchmark.
"""

from __future__ import annotations

import time
from typing import Callable

import torch

from wan22_triton.operations import events, locks

_ALIGN = 512  # bytes; every view starts aligned (dtype views, vectorised kernels, Inductor's alignment guard)


def _gb(n: float) -> float:
    return n / 1e9


def _register(buffer: torch.Tensor) -> bool:
    """Page-lock an existing host allocation in place (no power-of-two rounding); False if CUDA refuses."""
    try:
        cudart = torch.cuda.cudart()
        err = cudart.cudaHostRegister(buffer.data_ptr(), buffer.numel() * buffer.element_size(), 0)
        return int(getattr(err, "value", err)) == 0
    except Exception:
        return False


class HostWeights:
    """A module's parameters and buffers in one (page-locked) host buffer; `load()` / `release()` the device copy."""

    def __init__(self, module: torch.nn.Module, device: str | torch.device, name: str = "",
                 log: Callable[[str], None] = print):
        self.device = torch.device(device)
        self.name = name or type(module).__name__
        self.log = log
        t0 = time.perf_counter()
        seen: set[int] = set()
        tensors = []
        for t in [*module.parameters(), *module.buffers()]:
            if id(t) not in seen:
                seen.add(id(t))
                tensors.append(t)
        unsupported = [t for t in tensors if type(t.data) is not torch.Tensor or not t.is_contiguous()]
        if unsupported:
            raise ValueError(
                f"{self.name}: offload needs plain contiguous tensors ({len(unsupported)} are not, e.g. quantized "
                "tensor subclasses); offload is not supported together with quantization"
            )
        self.slots: list[tuple[torch.Tensor, int, int]] = []  # (tensor, byte offset, byte size)
        offset = 0
        for t in tensors:
            size = t.numel() * t.element_size()
            self.slots.append((t, offset, size))
            offset += -(-size // _ALIGN) * _ALIGN
        self.nbytes = offset
        self.host = torch.empty(self.nbytes, dtype=torch.uint8)
        self.pinned = self.device.type == "cuda" and _register(self.host)
        if self.device.type == "cuda" and not self.pinned:  # rare: fall back to PyTorch's (rounded) pinned memory
            self.host = torch.empty(self.nbytes, dtype=torch.uint8, pin_memory=True)
            self.pinned = True
        self.host_views = []
        with torch.no_grad():
            for t, off, size in self.slots:
                view = self._view(self.host, t, off, size)
                view.copy_(t.data)
                self.host_views.append(view)
            for (t, _, _), view in zip(self.slots, self.host_views):
                t.data = view
        self.device_buffer: torch.Tensor | None = None
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
        self.loads = self.releases = 0
        self.load_seconds: list[float] = []
        self.log(
            f"offload {self.name}: {len(self.slots)} tensors, {_gb(self.nbytes):.2f} GB in "
            f"{'page-locked ' if self.pinned else ''}host memory ({time.perf_counter() - t0:.1f}s)"
        )

    @staticmethod
    def _view(buffer: torch.Tensor, t: torch.Tensor, offset: int, size: int) -> torch.Tensor:
        return buffer[offset:offset + size].view(t.dtype).view(t.shape)

    @property
    def loaded(self) -> bool:
        return self.device_buffer is not None

    def load(self) -> None:
        """Weights onto the device (no-op when there): one copy of the whole buffer, then re-point the tensors."""
        if self.loaded:
            return
        t0 = time.perf_counter()
        if self.device.type == "cuda":
            self.device_buffer = self.host.to(self.device, non_blocking=True)
        else:
            self.device_buffer = self.host.clone()
        for t, off, size in self.slots:
            t.data = self._view(self.device_buffer, t, off, size)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - t0
        self.loads += 1
        self.load_seconds.append(seconds)
        events.emit("weights_loaded", model=self.name, gb=_gb(self.nbytes), seconds=seconds)
        self.log(
            f"offload {self.name}: load #{self.loads}: {_gb(self.nbytes):.2f} GB -> {self.device} in {seconds:.3f}s "
            f"({_gb(self.nbytes) / max(seconds, 1e-9):.1f} GB/s){self._memory()}"
        )

    def release(self) -> None:
        """Weights back to their host views, device buffer and cached blocks freed (no-op when not loaded)."""
        if not self.loaded:
            self.log(f"offload {self.name}: release: not loaded{self._memory()}")
            return
        t0 = time.perf_counter()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        for (t, _, _), view in zip(self.slots, self.host_views):
            t.data = view
        self.device_buffer = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        seconds = time.perf_counter() - t0
        self.releases += 1
        events.emit("weights_released", model=self.name, seconds=seconds)
        self.log(f"offload {self.name}: release #{self.releases} in {seconds:.3f}s{self._memory()}")

    def _memory(self) -> str:
        if self.device.type != "cuda":
            return ""
        return (f"; this process: {_gb(torch.cuda.memory_allocated(self.device)):.2f} GB allocated, "
                f"{_gb(torch.cuda.memory_reserved(self.device)):.2f} GB reserved, "
                f"peak {_gb(torch.cuda.max_memory_allocated(self.device)):.2f} GB")


class ExpertSwitch:
    """Low-memory mode, the orchestrator's side: at most one expert's weights on the GPU. One per request.

    The pipeline calls `before_step` before each expert call: when the step goes to another expert than the one
    that ran last, that one is told to release its weights first (high -> low at the boundary). `settle` runs after
    the last step, and must run when a request stops early (the orchestrator's `finally`): it releases the resident
    expert unless it is `keep`, the expert every request starts with. Between requests, therefore, at most `keep`
    is on the GPU (for A14B: neither, every request ends on the low-noise expert), and at the start of a request
    `keep` counts as possibly resident. `release(model)` does the call; `log(message)` reports each release.
    """

    def __init__(self, release: Callable[[str], None], keep: str | None = None,
                 log: Callable[[str], None] | None = None):
        self.release = release
        self.keep = keep
        self.log = log
        self.resident: str | None = keep
        self.step = 0  # steps done so far
        self.released: list[tuple[str, int]] = []  # (expert, steps done when it was released)
        self.release_seconds = 0.0

    def before_step(self, expert: str, step: int) -> None:
        self.step = step
        if self.resident is not None and self.resident != expert:
            self._release(self.resident, f"before step {step + 1} ({expert})")
        self.resident = expert

    def settle(self, when: str = "after the denoising") -> None:
        if self.resident is not None and self.resident != self.keep:
            self._release(self.resident, when)
            self.resident = None

    def after_step(self, step: int) -> None:
        self.step = step

    def _release(self, expert: str, when: str) -> None:
        t0 = time.perf_counter()
        self.release(expert)
        seconds = time.perf_counter() - t0
        self.release_seconds += seconds
        self.released.append((expert, self.step))
        events.emit("expert_released", expert=expert, after_step=self.step, when=when, seconds=seconds)
        if self.log is not None:
            self.log(f"low-memory: released {expert} after step {self.step}, {when}, in {seconds:.3f}s")


# --------------------------------------------------------------------------- loading


def load_to_host(component, model_class, kind: str, folder: str) -> tuple[torch.nn.Module, HostWeights]:
    """`component.load_torch(...)` for an offloaded model, its weights ending in host memory (see HostWeights).

    Checkpoint weights are read straight into host memory (the GPU is not touched). Random benchmark weights
    (`random_weights_seed`) are built on the instance's device, as in the normal mode (same CUDA generator, same
    values), one model at a time across the repository (lock), then moved to host memory.
    """
    if component.manifest.random_weights_seed is not None:
        with locks.InterProcessLock(locks.lock_path(component.root.parent, "gpu-staging")):
            module = component.load_torch(model_class, kind, folder)
            return module, HostWeights(module, component.device, component.name, component.logger.log_info)
    device, component.device = component.device, "cpu"
    try:
        module = component.load_torch(model_class, kind, folder)
    finally:
        component.device = device
    return module, HostWeights(module, device, component.name, component.logger.log_info)
