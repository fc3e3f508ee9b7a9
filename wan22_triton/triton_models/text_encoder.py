"""`text_encoder`: tokenizer + UMT5 encoder, prompt embeddings exactly as diffusers' WanPipeline makes them.

Low-memory mode (the manifest's `low_memory`; see wan22_triton.memory.offload): the encoder's weights live in page-locked host
memory and are on the GPU only while a request is encoded (loaded before, released after each request).
"""

from __future__ import annotations

import numpy as np
import torch

from wan22_triton.triton_models import triton_io
from wan22_triton.operations.limits import check_prompt_bytes
from wan22_triton.errors import RequestError
from wan22_triton.triton_models.base import ComponentModel


class TritonPythonModel(ComponentModel):
    shape_input = "text"

    def setup(self) -> None:
        from diffusers import WanPipeline
        from transformers import AutoTokenizer, UMT5EncoderModel

        self.text_len = self.manifest.checkpoint.text_len
        encoder = self.load_weights(UMT5EncoderModel, "text_encoder", "text_encoder")
        tokenizer = AutoTokenizer.from_pretrained(self.root / "tokenizer")
        # diffusers' own prompt path (cleaning, padding, zeroing past the real length), without the other modules.
        self.pipe = WanPipeline(tokenizer=tokenizer, text_encoder=encoder, vae=None, scheduler=None)

    @torch.inference_mode()
    def infer(self, request):
        text = triton_io.request_inputs(request, ["text"])["text"].reshape(-1)
        for item in text:  # before any decoding or tokenizing: a direct caller may send megabytes
            check_prompt_bytes("text", len(item) if isinstance(item, bytes) else len(str(item).encode()),
                               self.manifest.limits, self.manifest.checkpoint)
        try:
            prompts = [t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in text]
        except UnicodeDecodeError as e:
            raise RequestError(f"'text' must be valid UTF-8: {e}") from None
        if self.weights is not None:
            self.weights.load()
        try:
            embeds = self.pipe._get_t5_prompt_embeds(
                prompt=prompts, max_sequence_length=self.text_len, device=torch.device(self.device), dtype=torch.float32
            )
            embeds = embeds.cpu().numpy().astype(np.float32)
        finally:
            if self.weights is not None:
                self.weights.release()
        return triton_io.response({"prompt_embeds": embeds})
