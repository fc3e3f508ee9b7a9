"""`text_encoder`: tokenizer + UMT5 encoder, prompt embeddings exactly as diffusers' WanPipeline makes them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .. import fast_path, triton_io
from ..engines import torch_dtype


class TritonPythonModel:
    def initialize(self, args):
        from diffusers import WanPipeline
        from transformers import AutoTokenizer, UMT5EncoderModel

        self.logger = triton_io.pb_utils().Logger
        config = json.loads(args["model_config"])
        params = triton_io.parameters(config)
        root = Path(args["model_repository"]) / args["model_version"]
        self.device = triton_io.torch_device(args)
        self.text_len = int(params["text_len"])
        dtype = torch_dtype(params["precision"])
        if params.get("random_init_seed", ""):  # benchmark seam (fast_path): configs-only checkpoint
            seed = int(params["random_init_seed"])
            encoder = fast_path.random_component("text_encoder", root / "text_encoder", seed, dtype, self.device)
        else:
            encoder = UMT5EncoderModel.from_pretrained(root / "text_encoder", torch_dtype=dtype, use_safetensors=True)
        tokenizer = AutoTokenizer.from_pretrained(root / "tokenizer")
        # diffusers' own prompt path (cleaning, padding, zeroing past the real length), without the other modules.
        self.pipe = WanPipeline(tokenizer=tokenizer, text_encoder=encoder.to(self.device).eval(), vae=None, scheduler=None)
        self.logger.log_info(f"text_encoder ready on {self.device} ({params['precision']})")

    def execute(self, requests):
        return triton_io.execute_each(requests, self._encode, self.logger)

    @torch.inference_mode()
    def _encode(self, request):
        from ..pipeline import RequestError

        text = triton_io.request_inputs(request, ["text"])["text"].reshape(-1)
        try:
            prompts = [t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in text]
        except UnicodeDecodeError as e:
            raise RequestError(f"'text' must be valid UTF-8: {e}") from None
        embeds = self.pipe._get_t5_prompt_embeds(
            prompt=prompts, max_sequence_length=self.text_len, device=torch.device(self.device), dtype=torch.float32
        )
        return triton_io.response({"prompt_embeds": embeds.cpu().numpy().astype(np.float32)})
