"""`vae_decoder`: de-normalised latents -> frames in [-1, 1], for every valid frame count.

`torch` runs diffusers' AutoencoderKLWan.decode. `onnx` runs the two frame graphs (first latent frame, then one
step per latent frame with the causal-conv caches as explicit tensors), so one pair of graphs serves any length.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .. import triton_io
from ..engines import OnnxRunner, torch_dtype


class TritonPythonModel:
    def initialize(self, args):
        self.logger = triton_io.pb_utils().Logger
        config = json.loads(args["model_config"])
        params = triton_io.parameters(config)
        root = Path(args["model_repository"]) / args["model_version"]
        self.device = triton_io.torch_device(args)
        self.engine = params["engine"]
        if self.engine == "torch":
            from diffusers import AutoencoderKLWan

            self.dtype = torch_dtype(params["precision"])
            vae = AutoencoderKLWan.from_pretrained(root / "vae", torch_dtype=self.dtype, use_safetensors=True)
            self.vae = vae.to(self.device).eval()
        elif self.engine == "onnx":
            self.first = OnnxRunner(root / "vae_decoder_first_frame.onnx", self.device)
            self.step = OnnxRunner(root / "vae_decoder_step.onnx", self.device)
        else:
            raise ValueError(f"vae_decoder: unknown engine {self.engine!r}")
        self.logger.log_info(f"vae_decoder ready: engine {self.engine}, precision {params['precision']}, {self.device}")

    def execute(self, requests):
        return triton_io.execute_each(requests, self._decode, self.logger)

    @torch.inference_mode()
    def _decode(self, request):
        latents = triton_io.request_inputs(request, ["latents"])["latents"]
        if self.engine == "onnx":
            from ..vae_frames import decode_with_frame_graphs

            video = decode_with_frame_graphs(self.first, self.step, latents)
        else:
            z = torch.from_numpy(latents).to(self.device, self.dtype)
            video = self.vae.decode(z, return_dict=False)[0].float().cpu().numpy()
        return triton_io.response({"video": np.asarray(video, dtype=np.float32)})
