"""A configs-only diffusers checkpoint of Wan2.2-T2V-A14B: the real architecture, no weight files.

The GPU benchmark builds every component from these configs with random weights (`wan22_triton.engines.random_weights`, the
export's `random_weights_seed`), on the GPU, identically in the diffusers baseline and in each Triton model process.
Configs (from the published Wan-AI/Wan2.2-T2V-A14B-Diffusers checkpoint): two WanTransformer3DModel experts (dim
5120 = 40 heads x 128, FFN 13824, 40 layers, 16 in/out channels, text_dim 4096, patch 1x2x2, RMS qk-norm across
heads, cross-attention norm, freq_dim 256, RoPE max length 1024, eps 1e-6; about 14.3B parameters each), UMT5-XXL
encoder (d_model 4096, d_ff 10240, 24 layers, 64 heads x 64, vocab 256384, gated GELU), the Wan2.1 VAE (base_dim 96,
z_dim 16, dim_mult 1,2,4,4, 2 res blocks, temporal downsampling F,T,T) with the real latent statistics, UniPC flow
scheduler (shift 3), boundary_ratio 0.875. The tokenizer is the tiny checkpoint's (generated in code, ids < 1100,
all valid for the 256384-entry embedding).

    python -m perf.gpu_checkpoint --out /tmp/wan22-a14b-configs [--preset tiny] [--layers N]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from devtools import tiny_checkpoint as tiny

A14B_TRANSFORMER: dict[str, Any] = {
    "_class_name": "WanTransformer3DModel",
    "_diffusers_version": "0.35.0.dev0",
    "added_kv_proj_dim": None,
    "attention_head_dim": 128,
    "cross_attn_norm": True,
    "eps": 1e-06,
    "ffn_dim": 13824,
    "freq_dim": 256,
    "image_dim": None,
    "in_channels": 16,
    "num_attention_heads": 40,
    "num_layers": 40,
    "out_channels": 16,
    "patch_size": [1, 2, 2],
    "pos_embed_seq_len": None,
    "qk_norm": "rms_norm_across_heads",
    "rope_max_seq_len": 1024,
    "text_dim": 4096,
}
A14B_VAE: dict[str, Any] = {
    "_class_name": "AutoencoderKLWan",
    "_diffusers_version": "0.35.0.dev0",
    "attn_scales": [],
    "base_dim": 96,
    "dim_mult": [1, 2, 4, 4],
    "dropout": 0.0,
    "latents_mean": tiny.LATENTS_MEAN,
    "latents_std": tiny.LATENTS_STD,
    "num_res_blocks": 2,
    "temperal_downsample": [False, True, True],
    "z_dim": 16,
}
UMT5_XXL: dict[str, Any] = {
    "architectures": ["UMT5EncoderModel"],
    "classifier_dropout": 0.0,
    "d_ff": 10240,
    "d_kv": 64,
    "d_model": 4096,
    "decoder_start_token_id": 0,
    "dense_act_fn": "gelu_new",
    "dropout_rate": 0.1,
    "eos_token_id": 1,
    "feed_forward_proj": "gated-gelu",
    "initializer_factor": 1.0,
    "is_encoder_decoder": True,
    "is_gated_act": True,
    "layer_norm_epsilon": 1e-06,
    "model_type": "umt5",
    "num_decoder_layers": 24,
    "num_heads": 64,
    "num_layers": 24,
    "output_past": True,
    "pad_token_id": 0,
    "relative_attention_max_distance": 128,
    "relative_attention_num_buckets": 32,
    "scalable_attention": True,
    "tie_word_embeddings": False,
    "tokenizer_class": "T5Tokenizer",
    "use_cache": True,
    "vocab_size": 256384,
}
MODEL_INDEX: dict[str, Any] = {
    "_class_name": "WanPipeline",
    "_diffusers_version": "0.35.0.dev0",
    "boundary_ratio": tiny.BOUNDARY_RATIO,
    "expand_timesteps": False,
    "scheduler": ["diffusers", "UniPCMultistepScheduler"],
    "text_encoder": ["transformers", "UMT5EncoderModel"],
    "tokenizer": ["transformers", "T5TokenizerFast"],
    "transformer": ["diffusers", "WanTransformer3DModel"],
    "transformer_2": ["diffusers", "WanTransformer3DModel"],
    "vae": ["diffusers", "AutoencoderKLWan"],
}


def _tiny_configs() -> tuple[dict, dict, dict]:
    """The tiny checkpoint's architecture (CPU tests of the benchmark itself)."""
    tokenizer = tiny.build_tokenizer()
    transformer = json.loads(tiny.build_transformer(seed=0).to_json_string())
    vae = json.loads(tiny.build_vae().to_json_string())
    text = tiny.build_text_encoder(len(tokenizer)).config.to_dict()
    return transformer, vae, text


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=list) + "\n")


def write_configs_checkpoint(out: str | Path, preset: str = "a14b", layers: int | None = None) -> Path:
    """Write model_index.json + every component's config (no weights), tokenizer and scheduler files."""
    out = Path(out)
    if preset == "a14b":
        transformer, vae, text = dict(A14B_TRANSFORMER), dict(A14B_VAE), dict(UMT5_XXL)
    elif preset == "tiny":
        transformer, vae, text = _tiny_configs()
    else:
        raise ValueError(f"preset must be a14b or tiny, got {preset!r}")
    if layers:
        transformer["num_layers"] = int(layers)
    _write_json(out / "model_index.json", MODEL_INDEX)
    for folder in ("transformer", "transformer_2"):
        _write_json(out / folder / "config.json", transformer)
    _write_json(out / "vae" / "config.json", vae)
    _write_json(out / "text_encoder" / "config.json", text)
    tiny.build_tokenizer().save_pretrained(out / "tokenizer")
    tiny.build_scheduler().save_pretrained(out / "scheduler")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--preset", choices=("a14b", "tiny"), default="a14b")
    parser.add_argument("--layers", type=int, default=None, help="override the experts' num_layers (smoke tests)")
    args = parser.parse_args(argv)
    print(write_configs_checkpoint(args.out, args.preset, args.layers))


if __name__ == "__main__":
    main()
