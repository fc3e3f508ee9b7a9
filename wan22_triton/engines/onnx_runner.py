"""The ONNX Runtime engine: one exported graph in onnxruntime, as the component models and the frame models run it."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from wan22_triton.engines.runners import Runner

ONNX_GRAPH = "model.onnx"  # a served ONNX graph in its version folder (weights beside it: <name>.data)


class OnnxRunner(Runner):
    """One ONNX graph in onnxruntime: the same graph TensorRT consumes, run on the CPU (or CUDA where available)."""

    def __init__(self, path: str | Path, device: str = "cpu", threads: int = 0):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():  # torch's name
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.output_names = [o.name for o in self.session.get_outputs()]

    @classmethod
    def served(cls, model) -> OnnxRunner:
        """The graph of a component model's version folder, on its device."""
        return cls(model.root / ONNX_GRAPH, model.device)

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self.session.run(self.output_names, dict(inputs))))
