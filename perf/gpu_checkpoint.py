"""A configs-only diffusers checkpoint of Wan2.2-T2V-A14B (or `--preset i2v-a14b`: I2V-A14B; `--preset ti2v-5b`:
TI2V-5B): the real architecture, no weight files.

The GPU benchmark builds every component from these configs with random weights (`wan22_triton.engines.random_weights`, the
export's `random_weights_seed`), on the GPU, identically in the diffusers baseline and in each Triton model process.
Configs (from the published Wan-AI/Wan2.2-T2V-A14B-Diffusers checkpoint): two WanTransformer3DModel experts (dim
5120 = 40 heads x 128, FFN 13824, 40 layers, 16 in/out channels, text_dim 4096, patch 1x2x2, RMS qk-norm across
heads, cross-attention norm, freq_dim 256, RoPE max length 1024, eps 1e-6; about 14.3B parameters each), UMT5-XXL
encoder (d_model 4096, d_ff 10240, 24 layers, 64 heads x 64, vocab 256384, gated GELU), the Wan2.1 VAE (base_dim 96,
z_dim 16, dim_mult 1,2,4,4, 2 res blocks, temporal downsampling F,T,T) with the real latent statistics, UniPC flow
scheduler (shift 3), boundary_ratio 0.875. The tokenizer is the tiny checkpoint's (generated in code, ids < 1100,
all valid for the 256384-entry embedding).

    python -m perf.gpu_checkpoint --out /tmp/wan22-a14b-configs [--preset tiny|i2v-a14b|ti2v-5b] [--layers N]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from devtools import tiny_checkpoint as tiny
from wan22_triton.checkpoint import IMAGE_TO_VIDEO_PIPELINE

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
# Wan-AI/Wan2.2-I2V-A14B-Diffusers: a WanImageToVideoPipeline whose two experts take 36 channels (latents, the
# first-frame mask's 4, the condition's 16) and give 16, no image encoder, boundary 0.9, flow shift 5.
I2V_A14B_TRANSFORMER: dict[str, Any] = {**A14B_TRANSFORMER, "in_channels": 36}
I2V_A14B_INDEX: dict[str, Any] = {"_class_name": IMAGE_TO_VIDEO_PIPELINE, "boundary_ratio": tiny.I2V_BOUNDARY_RATIO,
                                  "image_encoder": [None, None], "image_processor": [None, None]}
# Wan-AI/Wan2.2-TI2V-5B-Diffusers: one transformer (dim 3072 = 24 heads x 128, FFN 14336, 30 layers, 48 in/out
# channels; the A14B's other settings), the Wan2.2 VAE, per-token timesteps, flow shift 5, no boundary.
TI2V_5B_TRANSFORMER: dict[str, Any] = {**A14B_TRANSFORMER, "in_channels": 48, "out_channels": 48, "num_layers": 30,
                                       "num_attention_heads": 24, "attention_head_dim": 128, "ffn_dim": 14336}
WAN22_VAE: dict[str, Any] = {
    **A14B_VAE, "base_dim": 160, "decoder_base_dim": 256, "z_dim": 48, "in_channels": 12, "out_channels": 12,
    "patch_size": 2, "scale_factor_spatial": 16, "scale_factor_temporal": 4, "is_residual": True,
    "latents_mean": [-0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557, -0.1382, 0.0542, 0.2813,
                     0.0891, 0.1570, -0.0098, 0.0375, -0.1825, -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108,
                     -0.2158, 0.2502, -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230, -0.0313,
                     -0.1649, 0.0117, 0.0723, -0.2839, -0.2083, -0.0520, 0.3748, 0.0152, 0.1957, 0.1433, -0.2944,
                     0.3573, -0.0548, -0.1681, -0.0667],
    "latents_std": [0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013, 0.8158, 1.0344, 0.5894, 1.0901,
                    0.6885, 0.6165, 0.8454, 0.4978, 0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
                    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093, 0.5709, 0.6065, 0.6415, 0.4944,
                    0.5726, 1.2042, 0.5458, 1.6887, 0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744],
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


PRESETS = ("a14b", "i2v-a14b", "ti2v-5b", "tiny")


def write_configs_checkpoint(out: str | Path, preset: str = "a14b", layers: int | None = None) -> Path:
    """Write model_index.json + every component's config (no weights), tokenizer and scheduler files."""
    out = Path(out)
    index, folders, flow_shift = dict(MODEL_INDEX), ("transformer", "transformer_2"), 3.0
    if preset == "a14b":
        transformer, vae, text = dict(A14B_TRANSFORMER), dict(A14B_VAE), dict(UMT5_XXL)
    elif preset == "i2v-a14b":
        transformer, vae, text = dict(I2V_A14B_TRANSFORMER), dict(A14B_VAE), dict(UMT5_XXL)
        index.update(I2V_A14B_INDEX)
        flow_shift = 5.0
    elif preset == "ti2v-5b":
        transformer, vae, text = dict(TI2V_5B_TRANSFORMER), dict(WAN22_VAE), dict(UMT5_XXL)
        index.update(boundary_ratio=None, expand_timesteps=True, transformer_2=[None, None])
        folders, flow_shift = ("transformer",), 5.0
    elif preset == "tiny":
        transformer, vae, text = _tiny_configs()
    else:
        raise ValueError(f"preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    if layers:
        transformer["num_layers"] = int(layers)
    _write_json(out / "model_index.json", index)
    for folder in folders:
        _write_json(out / folder / "config.json", transformer)
    _write_json(out / "vae" / "config.json", vae)
    _write_json(out / "text_encoder" / "config.json", text)
    tiny.build_tokenizer().save_pretrained(out / "tokenizer")
    tiny.build_scheduler(flow_shift).save_pretrained(out / "scheduler")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--preset", choices=PRESETS, default="a14b")
    parser.add_argument("--layers", type=int, default=None, help="override the experts' num_layers (smoke tests)")
    args = parser.parse_args(argv)
    print(write_configs_checkpoint(args.out, args.preset, args.layers))


if __name__ == "__main__":
    main()
