"""What every component model does the same way: read its manifest, pick its device, load weights, answer requests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .. import triton_io
from ..engines import torch_dtype
from ..loading import load_component, release_workspace
from ..manifest import Manifest


class ComponentModel:
    """Subclasses implement `setup()` (load) and `infer(request) -> response` (or `respond(requests)`); errors become
    error responses. The torch engine's cache is emptied after `setup` and, with the manifest's `release_workspace`,
    after each call that `releases_after` (loading.release_workspace)."""

    def initialize(self, args):
        self.logger = triton_io.pb_utils().Logger
        self.model_config = json.loads(args["model_config"])
        self.manifest = Manifest.from_model_config(self.model_config)
        self.name = self.manifest.model
        self.root = Path(args["model_repository"]) / args["model_version"]
        self.device = triton_io.torch_device(args)
        self.engine = self.manifest.engine
        self.dtype = torch_dtype(self.manifest.precision)
        self.setup()
        if self.engine == "torch":  # what loading left cached (e.g. the BF16 weights FP8 quantization replaced)
            before, after = release_workspace(self.name, self.device, "load")
            if before:
                self.logger.log_info(f"{self.name}: PyTorch cache after loading {before / 1e9:.2f} GB -> "
                                     f"{after / 1e9:.2f} GB reserved")
        self.logger.log_info(f"{self.name} ready: engine {self.engine}, precision {self.manifest.precision}, "
                             f"{self.device}{', low memory' if self.manifest.low_memory else ''}"
                             f"{', workspace released when idle' if self.manifest.release_workspace else ''}")

    def setup(self) -> None:
        raise NotImplementedError

    def infer(self, request):
        raise NotImplementedError

    def execute(self, requests):
        try:
            return self.respond(requests)
        finally:
            # the manifest's release_workspace (torch engine): an idle model's workspace back to the driver
            if self.manifest.release_workspace and self.engine == "torch" and self.releases_after(requests):
                self.release_workspace(len(requests))

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
        from .. import offload

        self.weights: offload.HostWeights | None = None
        if not self.manifest.low_memory:
            return self.load_torch(model_class, kind, folder)
        model, self.weights = offload.load_to_host(self, model_class, kind, folder)
        return model
