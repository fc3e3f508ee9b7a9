"""What every component model does the same way: read its config, pick its device, load weights, answer requests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .. import fast_path, triton_io
from ..engines import torch_dtype


class ComponentModel:
    """Subclasses implement `setup()` (load) and `infer(request) -> response`; errors become error responses."""

    def initialize(self, args):
        self.logger = triton_io.pb_utils().Logger
        self.model_config = json.loads(args["model_config"])
        self.name = self.model_config["name"]
        self.params = triton_io.parameters(self.model_config)
        self.root = Path(args["model_repository"]) / args["model_version"]
        self.device = triton_io.torch_device(args)
        self.engine = self.params.get("engine", "torch")
        self.setup()
        precision = self.params.get("precision", "fp32")
        self.logger.log_info(f"{self.name} ready: engine {self.engine}, precision {precision}, {self.device}")

    def setup(self) -> None:
        raise NotImplementedError

    def infer(self, request):
        raise NotImplementedError

    def execute(self, requests):
        return triton_io.execute_each(requests, self.infer, self.logger)

    def load_torch(self, model_class: Any, kind: str, folder: str) -> torch.nn.Module:
        """A diffusers/transformers module from `1/<folder>` in the configured precision, on this instance's
        device; with the benchmark parameter `random_init_seed`, built from the config with random weights."""
        dtype = torch_dtype(self.params["precision"])
        seed = self.params.get("random_init_seed", "")
        if seed:
            return fast_path.random_component(kind, self.root / folder, int(seed), dtype, self.device)
        model = model_class.from_pretrained(self.root / folder, torch_dtype=dtype, use_safetensors=True)
        return model.to(self.device).eval()

    def load_weights(self, model_class: Any, kind: str, folder: str) -> torch.nn.Module:
        """`load_torch`, or in low-memory mode (`offload`) the module with its weights in host memory, kept as
        `self.weights` to load onto the GPU and release around work; `self.weights` is None otherwise."""
        from .. import offload

        self.weights: offload.HostWeights | None = None
        if offload.offload_mode(self.params) == "none":
            return self.load_torch(model_class, kind, folder)
        model, self.weights = offload.load_to_host(self, model_class, kind, folder)
        return model
