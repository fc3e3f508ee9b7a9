"""Matmul FLOP counts of the Wan transformer, the arithmetic behind the benchmarks' TFLOP/s figures.

`transformer_step_flops` is one expert forward (perf.gpu_benchmark's `transformer_step_pflop`); `block_flops` is
one block, split into GEMM and attention work (perf.block_profile). Both take the transformer's diffusers config.
"""

from __future__ import annotations


def block_flops(config: dict, tokens: int, text_len: int) -> dict[str, int]:
    """Matmul FLOPs of one transformer block for one batch item: `gemm` (projections, feed-forward) and
    `attention` (the scores and weighted sums of self- and cross-attention)."""
    d, ffn = int(config["num_attention_heads"]) * int(config["attention_head_dim"]), int(config["ffn_dim"])
    return {
        "gemm": (
            4 * 2 * tokens * d * d  # self-attention q, k, v, o
            + 2 * 2 * tokens * d * d  # cross-attention q, o
            + 2 * 2 * text_len * d * d  # cross-attention k, v
            + 2 * 2 * tokens * d * ffn  # feed-forward
        ),
        "attention": 2 * 2 * tokens * tokens * d + 2 * 2 * tokens * text_len * d,
    }


def transformer_step_flops(config: dict, latent_shape: tuple[int, int, int], text_len: int, batch: int = 2) -> float:
    """Matmul FLOPs of one WanTransformer3DModel forward (projections, attention, FFN) over `batch` items.

    latent_shape: (frames, height, width) of the latents; tokens = their product over the patch size. Elementwise
    work (norms, RoPE, modulation) is left out: it is well under 1% of the total at video sizes.
    """
    d = int(config["num_attention_heads"]) * int(config["attention_head_dim"])
    pt, ph, pw = (int(p) for p in config["patch_size"])
    f, h, w = latent_shape
    tokens = (f // pt) * (h // ph) * (w // pw)
    layers, text_dim = int(config["num_layers"]), int(config["text_dim"])
    per_layer = sum(block_flops(config, tokens, text_len).values())
    embed = 2 * tokens * (int(config["in_channels"]) * pt * ph * pw) * d + 2 * text_len * (text_dim * d + d * d)
    head = 2 * tokens * d * int(config["out_channels"]) * pt * ph * pw
    return float(batch * (layers * per_layer + embed + head))
