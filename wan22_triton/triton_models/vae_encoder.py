"""`vae_encoder`: pixels in [-1, 1] -> the VAE's latent space (the latent distribution's mode), with diffusers'
AutoencoderKLWan.encode (components/vae_encoder.py)."""

from __future__ import annotations

import torch

from wan22_triton.components.vae_encoder import LATENTS, PIXELS, WEIGHTS_FOLDER
from wan22_triton.engines import runners
from wan22_triton.operations.limits import check_pixels
from wan22_triton.options import Engine
from wan22_triton.triton_models import triton_io
from wan22_triton.triton_models.base import ComponentModel


class TorchEncoder(runners.Runner):
    torch_work = True

    def __init__(self, model: ComponentModel) -> None:
        from diffusers import AutoencoderKLWan

        self.device, self.dtype = model.device, model.dtype
        self.vae = model.load_torch(AutoencoderKLWan, "vae", WEIGHTS_FOLDER)

    def __call__(self, pixels) -> torch.Tensor:
        x = torch.as_tensor(pixels).to(self.device, self.dtype)
        return self.vae.encode(x).latent_dist.mode()


RUNNERS = {Engine.TORCH: TorchEncoder}


class TritonPythonModel(ComponentModel):
    shape_input = PIXELS

    def setup(self) -> None:
        self.runner = runners.pick(RUNNERS, self)

    @torch.inference_mode()
    def infer(self, request):
        pixels = triton_io.request_inputs(request, [PIXELS])[PIXELS]
        check_pixels(PIXELS, pixels.shape, self.manifest.checkpoint, self.manifest.limits)
        return triton_io.response({LATENTS: self.runner(pixels).float().cpu().numpy()})
