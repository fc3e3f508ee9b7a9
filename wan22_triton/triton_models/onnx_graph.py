"""A Python-backend model that runs one ONNX graph in ONNX Runtime, its tensors named by its config.

Serves the VAE frame graphs (`vae_decoder_first_frame`, `vae_decoder_step`) for the `onnx` engine, so that
`vae_decoder` drives them over BLS exactly as it drives the TensorRT plans of the same names.
"""

from __future__ import annotations

from wan22_triton.triton_models import triton_io
from wan22_triton.engines import runners
from wan22_triton.engines.onnx_runner import OnnxRunner
from wan22_triton.options import Engine
from wan22_triton.triton_models.base import ComponentModel

RUNNERS = {Engine.ONNX: OnnxRunner.served}  # TensorRT's frame plans: Triton's tensorrt backend


class TritonPythonModel(ComponentModel):
    def setup(self) -> None:
        self.input_names = [i["name"] for i in self.model_config["input"]]
        self.runner = runners.pick(RUNNERS, self)

    def infer(self, request):
        return triton_io.response(self.runner(triton_io.request_inputs(request, self.input_names)))
