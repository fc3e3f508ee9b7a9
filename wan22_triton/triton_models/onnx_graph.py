"""A Python-backend model that runs one ONNX graph in ONNX Runtime, its tensors named by its config.

Serves the VAE frame graphs (`vae_decoder_first_frame`, `vae_decoder_step`) for the `onnx` engine, so that
`vae_decoder` drives them over BLS exactly as it drives the TensorRT plans of the same names.
"""

from __future__ import annotations

import json
from pathlib import Path

from .. import triton_io
from ..engines import OnnxRunner


class TritonPythonModel:
    def initialize(self, args):
        self.logger = triton_io.pb_utils().Logger
        config = json.loads(args["model_config"])
        root = Path(args["model_repository"]) / args["model_version"]
        self.input_names = [i["name"] for i in config["input"]]
        self.runner = OnnxRunner(root / "model.onnx", triton_io.torch_device(args))
        self.logger.log_info(f"{config['name']} ready: {root / 'model.onnx'} in ONNX Runtime")

    def execute(self, requests):
        return triton_io.execute_each(
            requests, lambda r: triton_io.response(self.runner(triton_io.request_inputs(r, self.input_names))), self.logger
        )
