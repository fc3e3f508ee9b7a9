"""`vae_decoder`: de-normalised latents -> frames in [-1, 1] (`video`) and as uint8 (`frames`), any frame count.

Only the outputs a request asks for are made; `frames` is converted on the decoder's device (pipeline's
`frames_to_uint8`), so a GPU decoder hands over a quarter of the bytes.

`torch` runs diffusers' AutoencoderKLWan.decode. `onnx` and `tensorrt` loop over the latent frames calling the two
frame models over BLS (`vae_decoder_first_frame`, then `vae_decoder_step` per frame, the causal-conv caches passed
back each time), served by ONNX Runtime or as TensorRT plans: one pair of graphs serves any length.
"""

from __future__ import annotations

import numpy as np
import torch

from wan22_triton.triton_models import triton_io
from wan22_triton.engines import runners
from wan22_triton.operations.limits import check_latents
from wan22_triton.options import Engine
from wan22_triton.request.pipeline import frames_to_uint8
from wan22_triton.triton_models.base import ComponentModel
from wan22_triton.components.vae_decoder import FRAMES, LATENTS, OUTPUTS, VIDEO, WEIGHTS_FOLDER


class TorchDecoder(runners.Runner):
    """diffusers' AutoencoderKLWan.decode on the model's device."""

    torch_work = True

    def __init__(self, model: ComponentModel) -> None:
        from diffusers import AutoencoderKLWan

        self.device, self.dtype = model.device, model.dtype
        self.vae = model.load_torch(AutoencoderKLWan, "vae", WEIGHTS_FOLDER)
        if model.manifest.cudnn_benchmark:  # autotuned cuDNN convolutions (this process)
            torch.backends.cudnn.benchmark = True

    def __call__(self, latents) -> torch.Tensor:
        z = torch.as_tensor(latents).to(self.device, self.dtype)
        return self.vae.decode(z, return_dict=False)[0]


class FrameModelDecoder(runners.Runner):
    """The loop over the two frame models, called over BLS: ONNX Runtime's (`version`: this replica's, see
    export/registry.py) or TensorRT plans (one version, -1: the latest)."""

    def __init__(self, model: ComponentModel, version: int) -> None:
        from wan22_triton.components.vae_decoder import vae_decoder_frame_specs
        from wan22_triton.engines.vae_frames import load_cache_layout, named_runners

        first, step = vae_decoder_frame_specs(model.manifest.checkpoint, load_cache_layout(model.root))
        self.run_first, self.run_step = named_runners(
            lambda feeds: triton_io.bls_infer(first.name, feeds, first.output_names, model_version=version),
            lambda feeds: triton_io.bls_infer(step.name, feeds, step.output_names, model_version=version),
            first,
            step,
        )

    def __call__(self, latents) -> np.ndarray | torch.Tensor:
        from wan22_triton.engines.vae_frames import decode_with_frame_graphs

        latents = np.asarray(latents.cpu()) if isinstance(latents, torch.Tensor) else latents
        return decode_with_frame_graphs(self.run_first, self.run_step, latents)  # on the GPU with TensorRT


RUNNERS = {
    Engine.TORCH: TorchDecoder,
    Engine.ONNX: lambda model: FrameModelDecoder(model, model.version),
    Engine.TENSORRT: lambda model: FrameModelDecoder(model, -1),
}


class TritonPythonModel(ComponentModel):
    shape_input = LATENTS

    def setup(self) -> None:
        self._host: dict[str, torch.Tensor] = {}  # page-locked output buffers, reused while the shape holds
        self.runner = runners.pick(RUNNERS, self)

    @torch.inference_mode()
    def infer(self, request):
        latents = triton_io.request_inputs(request, [LATENTS])[LATENTS]
        check_latents(LATENTS, latents.shape, self.manifest.checkpoint, self.manifest.limits)
        wanted = set(request.requested_output_names()) or set(OUTPUTS)
        video = torch.as_tensor(self.runner(latents))
        outputs = {}
        if FRAMES in wanted:
            outputs[FRAMES] = self._to_host(FRAMES, frames_to_uint8(video))
        if VIDEO in wanted:
            outputs[VIDEO] = self._to_host(VIDEO, video.float())
        return triton_io.response(outputs)

    def _to_host(self, name: str, tensor: torch.Tensor) -> np.ndarray:
        """A CPU array; from a GPU through a reused page-locked buffer (a 480p 81-frame video is 388 MB as float32:
        a pageable copy costs ~0.1 s more). The response copies it out before the next request."""
        if tensor.device.type != "cuda":
            return tensor.numpy()
        host = self._host.get(name)
        if host is None or host.shape != tensor.shape or host.dtype != tensor.dtype:
            self._host.pop(name, None)
            host = self._host[name] = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        host.copy_(tensor)
        return host.numpy()
