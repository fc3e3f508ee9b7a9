"""`text_encoder`: tokenizer + UMT5 encoder, prompt embeddings exactly as diffusers' WanPipeline makes them."""

from __future__ import annotations

import numpy as np
import torch

from .. import triton_io
from ..pipeline import RequestError
from .base import ComponentModel


class TritonPythonModel(ComponentModel):
    def setup(self) -> None:
        from diffusers import WanPipeline
        from transformers import AutoTokenizer, UMT5EncoderModel

        self.text_len = int(self.params["text_len"])
        encoder = self.load_torch(UMT5EncoderModel, "text_encoder", "text_encoder")
        tokenizer = AutoTokenizer.from_pretrained(self.root / "tokenizer")
        # diffusers' own prompt path (cleaning, padding, zeroing past the real length), without the other modules.
        self.pipe = WanPipeline(tokenizer=tokenizer, text_encoder=encoder, vae=None, scheduler=None)

    @torch.inference_mode()
    def infer(self, request):
        text = triton_io.request_inputs(request, ["text"])["text"].reshape(-1)
        try:
            prompts = [t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in text]
        except UnicodeDecodeError as e:
            raise RequestError(f"'text' must be valid UTF-8: {e}") from None
        embeds = self.pipe._get_t5_prompt_embeds(
            prompt=prompts, max_sequence_length=self.text_len, device=torch.device(self.device), dtype=torch.float32
        )
        return triton_io.response({"prompt_embeds": embeds.cpu().numpy().astype(np.float32)})
