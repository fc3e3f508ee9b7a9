"""`vae_decoder`: de-normalised latents -> frames in [-1, 1], for every valid frame count.

`torch` runs diffusers' AutoencoderKLWan.decode. `onnx` and `tensorrt` loop over the latent frames calling the two
frame models over BLS (`vae_decoder_first_frame`, then `vae_decoder_step` per frame, the causal-conv caches passed
back each time), served by ONNX Runtime or as TensorRT plans: one pair of graphs serves any length.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .. import triton_io
from ..engines import torch_dtype


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
        elif self.engine in ("onnx", "tensorrt"):
            from ..checkpoint import CheckpointInfo
            from ..components import vae_decoder_frame_specs
            from ..vae_frames import load_cache_layout, named_runners

            info = CheckpointInfo.from_dict(json.loads((root / "checkpoint_info.json").read_text()))
            first, step = vae_decoder_frame_specs(info, load_cache_layout(root))
            self.run_first, self.run_step = named_runners(
                lambda feeds: triton_io.bls_infer(first.name, feeds, first.output_names),
                lambda feeds: triton_io.bls_infer(step.name, feeds, step.output_names),
                first,
                step,
            )
        else:
            raise ValueError(f"vae_decoder: unknown engine {self.engine!r}")
        self.logger.log_info(f"vae_decoder ready: engine {self.engine}, precision {params['precision']}, {self.device}")

    def execute(self, requests):
        return triton_io.execute_each(requests, self._decode, self.logger)

    @torch.inference_mode()
    def _decode(self, request):
        latents = triton_io.request_inputs(request, ["latents"])["latents"]
        if self.engine == "torch":
            z = torch.from_numpy(latents).to(self.device, self.dtype)
            video = self.vae.decode(z, return_dict=False)[0].float().cpu().numpy()
        else:
            from ..vae_frames import decode_with_frame_graphs

            video = decode_with_frame_graphs(self.run_first, self.run_step, latents)
            video = torch.as_tensor(video).float().cpu().numpy()  # frames may come back on the GPU (TensorRT)
        return triton_io.response({"video": np.asarray(video, dtype=np.float32)})
