"""`transformer_high_noise` / `transformer_low_noise`: one expert, one contract (components.transformer_spec).

Engines: `torch` runs the diffusers module (optional config parameters `quantization` and `compile`, and the
benchmark seam `random_init_seed`: see fast_path); `onnx` runs the exported graph in onnxruntime. The `tensorrt`
engine is not a Python model at all: Triton's tensorrt_plan backend serves the plan under the same contract.
"""

from __future__ import annotations

import torch

from .. import fast_path, triton_io
from ..engines import OnnxRunner, torch_dtype
from .base import ComponentModel

INPUTS = ("hidden_states", "timestep", "encoder_hidden_states")


class TritonPythonModel(ComponentModel):
    def setup(self) -> None:
        if self.engine == "torch":
            from diffusers import WanTransformer3DModel

            self.model = fast_path.optimize_transformer(
                self.load_torch(WanTransformer3DModel, "transformer", "transformer"),
                compile=self.params.get("compile", "none") or "none",
                quantization=self.params.get("quantization", "none") or "none",
                log=self.logger.log_info,
            )
            self.dtype = torch_dtype(self.params["precision"])
        elif self.engine == "onnx":
            self.runner = OnnxRunner(self.root / "model.onnx", self.device)
        else:
            raise ValueError(f"{self.name}: unknown engine {self.engine!r}")

    @torch.inference_mode()
    def infer(self, request):
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
