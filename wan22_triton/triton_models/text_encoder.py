"""`text_encoder`: tokenizer + UMT5 encoder, prompt embeddings exactly as diffusers' WanPipeline makes them.

Low-memory mode (the manifest's `low_memory`; see wan22_triton.memory.offload): the encoder's weights live in page-locked host
memory and are on the GPU only while a request is encoded (loaded before, released after each request).
"""

from __future__ import annotations

import numpy as np
import torch

from wan22_triton.triton_models import triton_io
from wan22_triton.engines import runners
from wan22_triton.operations.limits import check_prompt_bytes
from wan22_triton.errors import RequestError
from wan22_triton.options import Engine
from wan22_triton.triton_models.base import ComponentModel
from wan22_triton.components.text_encoder import PROMPT_EMBEDS, TEXT, TOKENIZER_FOLDER, WEIGHTS_FOLDER


class TorchTextEncoder(runners.Runner):
    """The UMT5 encoder through diffusers' own prompt path (cleaning, padding, zeroing past the real length)."""

    torch_work = True

    def __init__(self, model: ComponentModel) -> None:
        from diffusers import WanPipeline
        from transformers import AutoTokenizer, UMT5EncoderModel

        self.text_len, self.device = model.manifest.checkpoint.text_len, torch.device(model.device)
        encoder = model.load_weights(UMT5EncoderModel, "text_encoder", WEIGHTS_FOLDER)
        self.weights = model.weights  # low-memory mode: loaded before each encode, released after
        tokenizer = AutoTokenizer.from_pretrained(model.root / TOKENIZER_FOLDER)
        self.pipe = WanPipeline(tokenizer=tokenizer, text_encoder=encoder, vae=None, scheduler=None)

    def __call__(self, prompts: list[str]) -> np.ndarray:
        if self.weights is not None:
            self.weights.load()
        try:
            embeds = self.pipe._get_t5_prompt_embeds(
                prompt=prompts, max_sequence_length=self.text_len, device=self.device, dtype=torch.float32
            )
            return embeds.cpu().numpy().astype(np.float32)
        finally:
            if self.weights is not None:
                self.weights.release()


# Every engine's repository serves the text encoder in PyTorch (the export copies its folders for each).
RUNNERS = dict.fromkeys(Engine, TorchTextEncoder)


class TritonPythonModel(ComponentModel):
    shape_input = TEXT

    def setup(self) -> None:
        self.runner = runners.pick(RUNNERS, self)

    @torch.inference_mode()
    def infer(self, request):
        text = triton_io.request_inputs(request, [TEXT])[TEXT].reshape(-1)
        for item in text:  # before any decoding or tokenizing: a direct caller may send megabytes
            check_prompt_bytes(TEXT, len(item) if isinstance(item, bytes) else len(str(item).encode()),
                               self.manifest.limits, self.manifest.checkpoint)
        try:
            prompts = [t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in text]
        except UnicodeDecodeError as e:
            raise RequestError(f"'{TEXT}' must be valid UTF-8: {e}") from None
        return triton_io.response({PROMPT_EMBEDS: self.runner(prompts)})
