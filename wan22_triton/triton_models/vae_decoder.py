"""`vae_decoder`: de-normalised latents -> frames in [-1, 1], for every valid frame count.

`torch` runs diffusers' AutoencoderKLWan.decode. `onnx` and `tensorrt` loop over the latent frames calling the two
frame models over BLS (`vae_decoder_first_frame`, then `vae_decoder_step` per frame, the causal-conv caches passed
back each time), served by ONNX Runtime or as TensorRT plans: one pair of graphs serves any length.
"""

from __future__ import annotations


import numpy as np
import torch

from .. import triton_io
from ..engines import torch_dtype
from .base import ComponentModel


class TritonPythonModel(ComponentModel):
    def setup(self) -> None:
        if self.engine == "torch":
            from diffusers import AutoencoderKLWan

            self.vae = self.load_torch(AutoencoderKLWan, "vae", "vae")
            self.dtype = torch_dtype(self.params["precision"])
            if self.params.get("cudnn_benchmark", "") == "1":  # optional: autotuned cuDNN convolutions (this process)
                torch.backends.cudnn.benchmark = True
            self._host: torch.Tensor | None = None  # page-locked output buffer, reused while the shape holds
        elif self.engine in ("onnx", "tensorrt"):
            from ..checkpoint import CheckpointInfo
            from ..components import vae_decoder_frame_specs
            from ..vae_frames import load_cache_layout, named_runners

            info = CheckpointInfo.load(self.root)
            first, step = vae_decoder_frame_specs(info, load_cache_layout(self.root))
            self.run_first, self.run_step = named_runners(
                lambda feeds: triton_io.bls_infer(first.name, feeds, first.output_names),
                lambda feeds: triton_io.bls_infer(step.name, feeds, step.output_names),
                first,
                step,
            )
        else:
            raise ValueError(f"vae_decoder: unknown engine {self.engine!r}")

    @torch.inference_mode()
    def infer(self, request):
        latents = triton_io.request_inputs(request, ["latents"])["latents"]
        if self.engine == "torch":
            z = torch.from_numpy(latents).to(self.device, self.dtype)
            video = self._to_host(self.vae.decode(z, return_dict=False)[0])
        else:
            from ..vae_frames import decode_with_frame_graphs

            video = decode_with_frame_graphs(self.run_first, self.run_step, latents)
            video = torch.as_tensor(video).float().cpu().numpy()  # frames may come back on the GPU (TensorRT)
        return triton_io.response({"video": np.asarray(video, dtype=np.float32)})

    def _to_host(self, video: torch.Tensor) -> np.ndarray:
        """float32 frames on the CPU; from a GPU through a reused page-locked buffer (a 480p 81-frame video is
        388 MB: a pageable copy costs ~0.1 s more). The response copies it out before the next request."""
        if video.device.type != "cuda":
            return video.float().cpu().numpy()
        if self._host is None or self._host.shape != video.shape:
            self._host = None
            self._host = torch.empty(video.shape, dtype=torch.float32, pin_memory=True)
        self._host.copy_(video.float())
        return self._host.numpy()
