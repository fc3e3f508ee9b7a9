"""The Wan blocks' attention as one diffusers attention processor, the attention kernel being a parameter.

`WanAttnProcessor(attention)` computes what diffusers' `WanAttnProcessor` computes for text-to-video (no image
K/V): fused or separate Q/K/V projections, RMS norms of Q and K, Wan's rotary embedding (`rope`), attention,
output projection, with the attention itself handed to `attention(query, key, value[, mask])` on (B, S, H, D)
tensors. Its two users:

* `SelfAttnProcessor`, the served experts' self-attention (`attn1`) on a faster kernel: unmasked, Q and K handed
  over in float32 after RoPE, V in the model's dtype. The kernels are torch custom ops
  (wan22_triton.speed.fp8_attention, wan22_triton.speed.flash_attention), so `compile_repeated_blocks(fullgraph=True)` traces
  each block as one graph. Cross-attention (512 text tokens, ~1% of a step's FLOPs at 480p) keeps diffusers'
  processor.
* the ONNX export (export.onnx_export), on every Wan attention with plain SDPA: Q and K rounded back to the
  model's dtype after RoPE, as diffusers does.
"""

from __future__ import annotations

from typing import Callable

import torch
from diffusers.models.transformers.transformer_wan import _get_qkv_projections

# (query, key, value) on (B, S, H, D) tensors -> (B, S, H, D); masked attention takes the mask as a 4th argument.
Attention = Callable[..., torch.Tensor]


def rope(x: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor) -> torch.Tensor:
    """Wan's rotary embedding on interleaved channel pairs, in float32 (or the tables' wider dtype), not rounded back.

    diffusers' `apply_rotary_emb` arithmetic (with float32 tables it also computes in float32 by type promotion),
    with the interleave as stack+flatten instead of two strided in-place writes, which export as ScatterND, a fusion
    barrier for TensorRT. Rounded to x's dtype, the result equals diffusers' bit for bit.
    """
    x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = freqs_cos[..., 0::2], freqs_sin[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


class WanAttnProcessor:
    """diffusers' WanAttnProcessor for text-to-video, with `attention` as the kernel.

    `rope_in_float32`: hand Q and K to `attention` as `rope` leaves them (float32) instead of rounded back to the
    projections' dtype as diffusers does. The output is in the projections' dtype either way.
    """

    def __init__(self, attention: Attention, rope_in_float32: bool = False):
        self.attention = attention
        self.rope_in_float32 = rope_in_float32

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        if attn.add_k_proj is not None:
            raise NotImplementedError("image-conditioned (I2V) attention is not supported; Wan2.2 T2V has none")
        query, key, value = _get_qkv_projections(attn, hidden_states, encoder_hidden_states)
        query = attn.norm_q(query).unflatten(2, (attn.heads, -1))
        key = attn.norm_k(key).unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))
        out = self.attend(query, key, value, rotary_emb, attention_mask)
        return attn.to_out[1](attn.to_out[0](out.flatten(2, 3)))

    def attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, rotary_emb=None,
               attention_mask=None) -> torch.Tensor:
        """RoPE on Q and K, then the kernel; (B, S, H, D) in, (B, S, H, D) out in the projections' dtype."""
        dtype = query.dtype
        if rotary_emb is not None:
            query, key = rope(query, *rotary_emb), rope(key, *rotary_emb)
            if not self.rope_in_float32:
                query, key = query.to(dtype), key.to(dtype)
        mask = () if attention_mask is None else (attention_mask,)  # the served kernels take no mask
        return self.attention(query, key, value, *mask).to(dtype)


class SelfAttnProcessor(WanAttnProcessor):
    """`WanAttnProcessor` for unmasked self-attention, Q and K in float32 after RoPE (the FP8 kernel quantizes
    from there; the BF16 one rounds them to the model's dtype itself, as diffusers does)."""

    def __init__(self, attention: Attention):
        super().__init__(attention, rope_in_float32=True)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        if encoder_hidden_states is not None or attention_mask is not None or attn.add_k_proj is not None:
            raise ValueError("SelfAttnProcessor serves unmasked self-attention only (the blocks' attn1)")
        return super().__call__(attn, hidden_states, rotary_emb=rotary_emb)


def set_self_attention(model: torch.nn.Module, attention: Attention) -> int:
    """Put a SelfAttnProcessor with `attention` on every block's self-attention; returns how many."""
    processor = SelfAttnProcessor(attention)
    blocks = list(model.blocks)
    for block in blocks:
        block.attn1.set_processor(processor)
    return len(blocks)
