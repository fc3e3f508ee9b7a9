"""Write a tiny, random-weight stand-in for ``Wan-AI/Wan2.2-T2V-A14B-Diffusers`` (or ``--family wan2.2-ti2v-5b``:
``Wan-AI/Wan2.2-TI2V-5B-Diffusers``; ``--family wan2.2-i2v-a14b``: ``Wan-AI/Wan2.2-I2V-A14B-Diffusers``).

The real checkpoint is ~120 GB and needs a large GPU; tests, CI and local development of the Triton serving stack
need something that exercises exactly the same code paths offline, on CPU, in seconds. This module writes a
checkpoint with the *same* diffusers layout (``model_index.json`` + ``transformer/``, ``transformer_2/``, ``vae/``,
``text_encoder/``, ``tokenizer/``, ``scheduler/``), the same component classes and the same semantics as the real
one (two MoE experts switched at ``boundary_ratio`` 0.875, UMT5 text encoder and tokenizer conventions, Wan2.1 VAE
with 4x temporal / 8x spatial compression and the real latent statistics, the real UniPC flow scheduler config),
only shrunk to a few MB. Weights are random from fixed seeds, saved as safetensors only, and byte-identical
across runs. Nothing is downloaded: the tokenizer vocabulary is generated in code. The TI2V-5B stand-in has that
release's layout: one transformer on 48 latent channels, per-token timesteps (`expand_timesteps`), the Wan2.2 VAE
(residual, 2x2 patchified frames, 4x temporal / 16x spatial compression; seeded latent statistics) and its flow shift.
The I2V-A14B stand-in is a WanImageToVideoPipeline: two experts taking 36 channels (the latents, the first-frame
mask's 4 and the condition's 16) and giving 16, switched at that release's boundary 0.9, no image encoder, shift 5.

    python -m devtools.tiny_checkpoint --out checkpoints/tiny-wan2.2-t2v-a14b
    python -m devtools.tiny_checkpoint --family wan2.2-ti2v-5b --out checkpoints/tiny-wan2.2-ti2v-5b
    python -m devtools.tiny_checkpoint --family wan2.2-i2v-a14b --out checkpoints/tiny-wan2.2-i2v-a14b
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from wan22_triton.checkpoint import Family

# Real Wan2.1/2.2-A14B VAE latent statistics (per latent channel).
LATENTS_MEAN = [-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921]
LATENTS_STD = [2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
               3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.916]
BOUNDARY_RATIO = 0.875
I2V_BOUNDARY_RATIO = 0.9  # Wan2.2-I2V-A14B's
TINY_FAMILIES = (Family.T2V_A14B, Family.I2V_A14B, Family.TI2V_5B)
TEXT_DIM = 32  # d_model of the tiny UMT5 encoder == text_dim of both experts

_WORDS = """a an the of in on at to and with for from by is are was be it its this that as or not no
very over under into out up down near far behind front top side left right through across around
cat dog bird fish horse cow sheep lion tiger bear fox wolf rabbit mouse duck owl whale panda monkey
man woman boy girl child person people baby friend family crowd
car bike train boat ship plane city street road bridge house room window door wall table chair bed
tree trees flower flowers grass forest mountain mountains river lake sea ocean beach sky cloud clouds
sun moon star stars rain snow fire water wind light shadow night day morning evening sunset sunrise
red green blue yellow orange purple pink white black gray brown golden silver bright dark colorful
big small tall short long old young new beautiful cute happy sad slow fast soft warm cold calm
walk walks walking run runs running jump jumps play plays playing sit sits sitting fly flies flying
swim swims swimming dance dances dancing look looks looking ride riding eat eating hold holding
camera shot view close wide slow motion scene video film cinematic style realistic detailed high
quality lighting background foreground view aerial pan zoom
ing ed er est ly s es tion ness ment""".split()


def build_tokenizer():
    """UMT5-convention Unigram tokenizer: <pad>=0, </s>=1, <unk>=2, Metaspace, '</s>' appended, max length 512."""
    from transformers import T5TokenizerFast  # in transformers 5 this is an alias of T5Tokenizer (tokenizers backend)

    chars = [chr(c) for c in range(33, 127)] + [chr(c) for c in range(0xA1, 0x180)]
    pieces, seen = [], set()
    for piece in ["▁"] + [f"▁{w}" for w in _WORDS] + sorted(set(_WORDS)) + chars + [f"▁{c}" for c in chars]:
        if piece not in seen:
            seen.add(piece)
            pieces.append(piece)
    # Longer pieces score higher so that known words win over character splits; characters are the fallback.
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [(p, -1.0 if p == "▁" else -12.0 if len(p.lstrip("▁")) == 1 else -8.0 + 0.1 * len(p)) for p in pieces]
    return T5TokenizerFast(vocab=vocab, extra_ids=0, model_max_length=512)


def build_text_encoder(vocab_size: int, seed: int = 1):
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    config = UMT5Config(
        vocab_size=vocab_size, d_model=TEXT_DIM, d_kv=16, d_ff=64, num_layers=2, num_heads=2,
        relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
        dropout_rate=0.1, layer_norm_epsilon=1e-6, is_encoder_decoder=True,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )
    return UMT5EncoderModel(config).eval()


def build_transformer(seed: int, channels: int = 16, in_channels: int | None = None):
    from diffusers.models.transformers.transformer_wan import WanTransformer3DModel  # top-level name: a stub to mypy

    torch.manual_seed(seed)
    # 8 heads: sequence parallelism (Ulysses) splits heads, and the CPU tests run it over 2, 4 and 8 ranks
    model = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=8, attention_head_dim=12, in_channels=in_channels or channels,
        out_channels=channels, text_dim=TEXT_DIM, freq_dim=256, ffn_dim=48, num_layers=2, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=None, added_kv_proj_dim=None, rope_max_seq_len=1024,
    )
    # The pipeline zero-pads prompt embeddings to 512 tokens and cross-attention attends to all of them, so with
    # untrained (near-uniform) attention the few real tokens barely matter and different prompts decode to the same
    # uint8 video. Sharpen cross-attention (q/k RMSNorm gains 1 -> 4) so that the prompt visibly changes the output.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".attn2.norm_q." in name or ".attn2.norm_k." in name:
                param.fill_(4.0)
    return model  # diffusers models have no dropout here (rates are 0): train/eval mode is irrelevant


def build_vae(seed: int = 4):
    from diffusers import AutoencoderKLWan

    torch.manual_seed(seed)
    return AutoencoderKLWan(
        base_dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1, attn_scales=[],
        temperal_downsample=[False, True, True], dropout=0.0, latents_mean=LATENTS_MEAN, latents_std=LATENTS_STD,
    )


def build_wan22_vae(seed: int = 5):
    """The Wan2.2 VAE's layout (TI2V-5B): 48 latent channels, residual blocks, frames patchified 2x2 into 12
    channels, 16x spatial compression."""
    from diffusers import AutoencoderKLWan

    z_dim = 48
    stats = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    return AutoencoderKLWan(
        base_dim=8, decoder_base_dim=16, z_dim=z_dim, dim_mult=[1, 2, 4, 4], num_res_blocks=1, attn_scales=[],
        temperal_downsample=[False, True, True], dropout=0.0, is_residual=True, in_channels=12, out_channels=12,
        patch_size=2, scale_factor_temporal=4, scale_factor_spatial=16,
        latents_mean=[round(v, 4) for v in (torch.randn(z_dim, generator=stats) * 0.5).tolist()],
        latents_std=[round(v, 4) for v in (torch.rand(z_dim, generator=stats) + 0.5).tolist()],
    )


def build_scheduler(flow_shift: float = 3.0):
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(
        num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear", solver_order=2,
        prediction_type="flow_prediction", predict_x0=True, solver_type="bh2", lower_order_final=True,
        use_flow_sigmas=True, flow_shift=flow_shift, timestep_spacing="linspace", final_sigmas_type="zero",
    )


def build_pipeline(family: Family = Family.T2V_A14B):
    from diffusers import WanPipeline

    tokenizer = build_tokenizer()
    text_encoder = build_text_encoder(len(tokenizer))
    if family == Family.TI2V_5B:
        return WanPipeline(
            tokenizer=tokenizer, text_encoder=text_encoder, vae=build_wan22_vae(), scheduler=build_scheduler(5.0),
            transformer=build_transformer(seed=6, channels=48), transformer_2=None, boundary_ratio=None,
            expand_timesteps=True,
        )
    if family == Family.I2V_A14B:
        from diffusers import WanImageToVideoPipeline

        vae = build_vae()
        in_channels = 2 * vae.config.z_dim + vae.config.scale_factor_temporal  # latents, mask, condition
        return WanImageToVideoPipeline(
            tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=build_scheduler(5.0),
            transformer=build_transformer(seed=7, in_channels=in_channels),
            transformer_2=build_transformer(seed=8, in_channels=in_channels), boundary_ratio=I2V_BOUNDARY_RATIO,
        )
    if family != Family.T2V_A14B:
        raise ValueError(f"no tiny checkpoint of family {family}; choose one of {list(TINY_FAMILIES)}")
    return WanPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=build_vae(),
        scheduler=build_scheduler(), transformer=build_transformer(seed=2), transformer_2=build_transformer(seed=3),
        boundary_ratio=BOUNDARY_RATIO, expand_timesteps=False,
    )


def write_checkpoint(out: str | Path, family: Family = Family.T2V_A14B) -> Path:
    """Build the tiny pipeline of `family` and save it in the diffusers layout of its release."""
    out = Path(out)
    build_pipeline(family).save_pretrained(out, safe_serialization=True)
    # transformers 5 saves the tokenizer class as "T5Tokenizer"; the real checkpoint (and transformers 4, where
    # T5Tokenizer needs a sentencepiece model) uses "T5TokenizerFast", which transformers 5 aliases. Keep the real name.
    index_path = out / "model_index.json"
    index = json.loads(index_path.read_text())
    index["tokenizer"] = ["transformers", "T5TokenizerFast"]
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    for path in out.rglob("*"):  # weights are written via mkstemp (mode 0600): make them readable to other users
        path.chmod(0o755 if path.is_dir() else 0o644)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="checkpoints/tiny-wan2.2-t2v-a14b", help="output directory")
    parser.add_argument("--family", type=Family, choices=TINY_FAMILIES, default=Family.T2V_A14B)
    args = parser.parse_args(argv)
    out = write_checkpoint(args.out, args.family)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote {out} ({size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
