"""`transformer_high_noise` / `transformer_low_noise`: one expert, one contract (components.transformer_spec).

Engines: `torch` runs the diffusers module (optional config parameters `quantization` and `compile`, and the
benchmark seam `random_init_seed`: see fast_path); `onnx` runs the exported graph in onnxruntime. The `tensorrt`
engine is not a Python model at all: Triton's tensorrt_plan backend serves the plan under the same contract.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .. import fast_path, triton_io
from ..engines import OnnxRunner, torch_dtype

INPUTS = ("hidden_states", "timestep", "encoder_hidden_states")


class TritonPythonModel:
    def initialize(self, args):
        self.logger = triton_io.pb_utils().Logger
        config = json.loads(args["model_config"])
        params = triton_io.parameters(config)
        root = Path(args["model_repository"]) / args["model_version"]
        self.name = config["name"]
        self.device = triton_io.torch_device(args)
        self.engine = params["engine"]
        if self.engine == "torch":
            self.dtype = torch_dtype(params["precision"])
            if params.get("random_init_seed", ""):  # benchmark seam (fast_path): configs-only checkpoint
                model = fast_path.random_component(
                    "transformer", root / "transformer", int(params["random_init_seed"]), self.dtype, self.device
                )
            else:
                from diffusers import WanTransformer3DModel

                model = WanTransformer3DModel.from_pretrained(
                    root / "transformer", torch_dtype=self.dtype, use_safetensors=True
                )
            self.model = fast_path.optimize_transformer(
                model.to(self.device).eval(),
                compile=params.get("compile", "none") or "none",
                quantization=params.get("quantization", "none") or "none",
                log=self.logger.log_info,
            )
        elif self.engine == "onnx":
            self.runner = OnnxRunner(root / "model.onnx", self.device)
        else:
            raise ValueError(f"{self.name}: unknown engine {self.engine!r}")
        self.logger.log_info(f"{self.name} ready: engine {self.engine}, precision {params['precision']}, {self.device}")

    def execute(self, requests):
        return triton_io.execute_each(requests, self._denoise, self.logger)

    @torch.inference_mode()
    def _denoise(self, request):
        inputs = triton_io.request_inputs(request, INPUTS)
        if self.engine == "onnx":
            return triton_io.response(self.runner(inputs))
        t = {k: torch.from_numpy(v).to(self.device) for k, v in inputs.items()}
        noise = self.model(
            hidden_states=t["hidden_states"].to(self.dtype),
            timestep=t["timestep"],
            encoder_hidden_states=t["encoder_hidden_states"].to(self.dtype),
            return_dict=False,
        )[0]
        return triton_io.response({"noise_pred": noise.float().cpu().numpy()})
