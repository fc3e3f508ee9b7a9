"""What every component model does the same way: read its manifest, pick its device, load weights, answer requests."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any

import torch

from wan22_triton.operations import events, locks

from wan22_triton.triton_models import heap_settled, triton_io
from wan22_triton.components.expert import expert_models
from wan22_triton.engines.loading import load_component, release_workspace, torch_dtype
from wan22_triton.engines.runners import Runner
from wan22_triton.manifest import Manifest
from wan22_triton.memory import budget
from wan22_triton.options import Device


class ComponentModel:
    """Subclasses implement `setup()` (load: sets `runner`, picked for the manifest's engine) and `infer(request) ->
    response` (or `respond(requests)`); errors become error responses. A runner's PyTorch cache (`torch_work`) is
    emptied after `setup` and, with the manifest's `release_workspace`, after each call that `releases_after` and
    after the first call at each shape (loading.release_workspace).

    First call at a shape (PyTorch runners; the shape of `shape_input`, the call's requests stacked on the batch axis):
    a warm-up sample, a compile, a new size. It holds the device's "first-call" lock (wan22_triton.operations.locks) from the
    forward to its release, so the models of a device warm up one at a time: Triton loads them in parallel, and two
    experts warming up at once stack their workspaces (A14B at 720p: 84 GB, where a request takes 61)."""

    shape_input = ""  # the input whose shape a call computes at; "" for models without torch work of their own
    runner: Runner  # what `setup` picked for the manifest's engine (runners.pick)

    def initialize(self, args):
        self.logger = triton_io.pb_utils().Logger
        self.model_config = json.loads(args["model_config"])
        self.manifest = Manifest.from_model_config(self.model_config)
        self.name = self.manifest.model
        self.version = int(args["model_version"])
        self.root = Path(args["model_repository"]) / args["model_version"]
        plan, expert = self.manifest.parallel, self.name in expert_models(self.manifest.checkpoint)
        self.device = triton_io.torch_device(args, lambda version: plan.replica_devices(version - 1, expert))
        self.manifest.check(Device.GPU if torch.device(self.device).type == "cuda" else Device.CPU)
        self.dtype = torch_dtype(self.manifest.precision)
        self.shapes_seen: set[tuple] = set()
        self.first_call_lock = locks.InterProcessLock(
            locks.lock_path(args["model_repository"], f"first-call-{self.device}"))
        budget.check_load(self.manifest.memory, self.manifest.checkpoint, self.manifest.video_sizes,
                          triton_io.card_bytes(self.device), self.name)  # before any weight is on the GPU
        self.setup()
        if self.runner.torch_work:  # what loading left cached (e.g. the BF16 weights FP8 quantization replaced)
            before, after = release_workspace(self.name, self.device, "load")
            if before:
                self.logger.log_info(f"{self.name}: PyTorch cache after loading {before / 1e9:.2f} GB -> "
                                     f"{after / 1e9:.2f} GB reserved")
        self.logger.log_info(f"{self.name} ready: engine {self.manifest.engine}, precision {self.manifest.precision}, "
                             f"{self.device}{', low memory' if self.manifest.low_memory else ''}"
                             f"{', workspace released when idle' if self.manifest.release_workspace else ''}")
        self.watchdog = triton_io.start_watchdog(args)  # the other models' processes: reloaded if they die
        heap_settled()

    def setup(self) -> None:
        raise NotImplementedError

    def finalize(self):
        if hasattr(self, "watchdog"):  # set once loaded
            self.watchdog.stop()
        if hasattr(self, "runner"):  # set unless setup failed
            self.runner.close()

    def infer(self, request):
        raise NotImplementedError

    def execute(self, requests):
        shape = self.call_shape(requests)
        first = shape is not None and shape not in self.shapes_seen
        with self._first_call(shape) if first else contextlib.nullcontext():
            try:
                return self.respond(requests)
            finally:
                if first:
                    self.shapes_seen.add(shape)
                # the manifest's release_workspace (torch engine): an idle model's workspace back to the driver
                if self.manifest.release_workspace and self.runner.torch_work and (
                        first or self.releases_after(requests)):
                    self.release_workspace(len(requests))

    def call_shape(self, requests) -> tuple | None:
        """The shape this call computes at: `shape_input` of its requests, stacked on the batch axis when they agree
        past it (execute_together's batch), else each one's; None without torch work."""
        if not self.runner.torch_work or not self.shape_input:
            return None
        shapes = [s for s in (triton_io.input_shape(r, self.shape_input) for r in requests) if s is not None]
        if not shapes:
            return None
        if len({s[1:] for s in shapes}) == 1:
            return (sum(s[0] for s in shapes), *shapes[0][1:])
        return tuple(shapes)

    @contextlib.contextmanager
    def _first_call(self, shape: tuple):
        """Holds the device's first-call lock around a call (and its release) at a shape not computed before."""
        waited = self.first_call_lock.acquire()
        started = time.time()
        if waited > 0.1:
            self.logger.log_info(f"{self.name}: first call at {shape} waited {waited:.1f}s for another model's "
                                 f"first call on {self.device}")
        try:
            yield
        finally:
            self.first_call_lock.release()
            events.emit("first_call", model=self.name, device=str(self.device), shape=list(shape), waited_s=waited,
                        started=started, ended=time.time())

    def releases_after(self, requests) -> bool:
        """Whether this call ends the model's work for now (its cache is released then): for the text encoder and
        the VAE, every call is once per generation."""
        return True

    def release_workspace(self, requests: int) -> None:
        release_workspace(self.name, self.device, "call", requests=requests)

    def respond(self, requests) -> list:
        """One response per request (`infer` each; errors become error responses)."""
        return triton_io.execute_each(requests, self.infer, self.logger)

    def load_torch(self, model_class: Any, kind: str, folder: str) -> torch.nn.Module:
        """`loading.load_component` of `1/<folder>` on this instance's device."""
        return load_component(self.manifest, self.root, model_class, kind, folder, self.device)

    def load_weights(self, model_class: Any, kind: str, folder: str) -> torch.nn.Module:
        """`load_torch`, or in low-memory mode the module with its weights in host memory, kept as `self.weights`
        to load onto the GPU and release around work; `self.weights` is None otherwise."""
        from wan22_triton.memory import offload

        self.weights: offload.HostWeights | None = None
        if not self.manifest.low_memory:
            return self.load_torch(model_class, kind, folder)
        model, self.weights = offload.load_to_host(self, model_class, kind, folder)
        return model
