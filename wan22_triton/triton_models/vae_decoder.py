"""`vae_decoder`: de-normalised latents -> frames in [-1, 1], for every valid frame count.

`torch` runs diffusers' AutoencoderKLWan.decode. `onnx` runs the two frame graphs (first latent frame, then one
step per latent frame with the causal-conv caches as explicit tensors), so one pair of graphs serves any length.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .. import fast_path, triton_io
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
            self.dtype = torch_dtype(params["precision"])
            if params.get("random_init_seed", ""):  # benchmark seam (fast_path): configs-only checkpoint
                seed = int(params["random_init_seed"])
                vae = fast_path.random_component("vae", root / "vae", seed, self.dtype, self.device)
            else:
                from diffusers import AutoencoderKLWan

                vae = AutoencoderKLWan.from_pretrained(root / "vae", torch_dtype=self.dtype, use_safetensors=True)
            self.vae = vae.to(self.device).eval()
        elif self.engine == "onnx":
            from ..checkpoint import CheckpointInfo
            from ..components import vae_decoder_frame_specs
            from ..vae_frames import load_cache_layout, named_runners

            info = CheckpointInfo.from_dict(json.loads((root / "checkpoint_info.json").read_text()))
            first_spec, step_spec = vae_decoder_frame_specs(info, load_cache_layout(root))
            first = OnnxRunner(root / f"{first_spec.name}.onnx", self.device)
            step = OnnxRunner(root / f"{step_spec.name}.onnx", self.device)
            self.run_first, self.run_step = named_runners(first, step, first_spec, step_spec)
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

            video = decode_with_frame_graphs(self.run_first, self.run_step, latents)
        else:
            z = torch.from_numpy(latents).to(self.device, self.dtype)
            video = self.vae.decode(z, return_dict=False)[0].float().cpu().numpy()
        return triton_io.response({"video": np.asarray(video, dtype=np.float32)})
