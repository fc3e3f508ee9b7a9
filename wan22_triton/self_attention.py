"""The Wan blocks' self-attention with a chosen attention kernel, as a diffusers attention processor.

`SelfAttnProcessor(attention)` computes what diffusers' `WanAttnProcessor` computes for a block's self-attention
(`attn1`): fused or separate Q/K/V projections, RMS norms of Q and K, Wan's rotary embedding, attention, output
projection, with the attention itself handed to `attention(query, key, value)` on (B, S, H, D) tensors (Q and K
after RoPE in float32, V in the model's dtype). The kernels are torch custom ops (wan22_triton.fp8_attention,
wan22_triton.flash_attention), so `compile_repeated_blocks(fullgraph=True)` traces each block as one graph.
Cross-attention (512 text tokens, ~1% of a step's FLOPs at 480p) keeps diffusers' processor.
"""

from __future__ import annotations

from typing import Callable

import torch
from diffusers.models.transformers.transformer_wan import _get_qkv_projections

Attention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def rope(x: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor) -> torch.Tensor:
    """Wan's rotary embedding on interleaved channel pairs (same math as diffusers' WanAttnProcessor), float32."""
    x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = freqs_cos[..., 0::2], freqs_sin[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


class SelfAttnProcessor:
    """diffusers' WanAttnProcessor for unmasked self-attention, with `attention` as the kernel."""

    def __init__(self, attention: Attention):
        self.attention = attention

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        if encoder_hidden_states is not None or attention_mask is not None or attn.add_k_proj is not None:
            raise ValueError("SelfAttnProcessor serves unmasked self-attention only (the blocks' attn1)")
        query, key, value = _get_qkv_projections(attn, hidden_states, None)
        query = attn.norm_q(query).unflatten(2, (attn.heads, -1))
        key = attn.norm_k(key).unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))
        if rotary_emb is not None:
            query, key = rope(query, *rotary_emb), rope(key, *rotary_emb)
        out = self.attention(query, key, value).flatten(2, 3).type_as(hidden_states)
        return attn.to_out[1](attn.to_out[0](out))


def set_self_attention(model: torch.nn.Module, attention: Attention) -> int:
    """Put a SelfAttnProcessor with `attention` on every block's self-attention; returns how many."""
    processor = SelfAttnProcessor(attention)
    blocks = list(model.blocks)
    for block in blocks:
        block.attn1.set_processor(processor)
    return len(blocks)
