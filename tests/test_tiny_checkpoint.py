"""The tiny Wan2.2-T2V-A14B checkpoint: diffusers layout, determinism, offline loading, CPU generation, tokenizer."""

import hashlib
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may be fetched: everything loads from the generated folder

import numpy as np
import pytest
import torch

from devtools.tiny_checkpoint import BOUNDARY_RATIO, LATENTS_MEAN, LATENTS_STD, main, write_checkpoint

COMPONENTS = {
    "scheduler": ("diffusers", "UniPCMultistepScheduler"),
    "text_encoder": ("transformers", "UMT5EncoderModel"),
    "tokenizer": ("transformers", "T5TokenizerFast"),
    "transformer": ("diffusers", "WanTransformer3DModel"),
    "transformer_2": ("diffusers", "WanTransformer3DModel"),
    "vae": ("diffusers", "AutoencoderKLWan"),
}
FILES = [
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "tokenizer/tokenizer.json",
    "tokenizer/tokenizer_config.json",
    "transformer/config.json",
    "transformer/diffusion_pytorch_model.safetensors",
    "transformer_2/config.json",
    "transformer_2/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny-wan2.2-t2v-a14b")


@pytest.fixture(scope="module")
def pipe(ckpt):
    from diffusers import WanPipeline

    # needs `accelerate`: without it diffusers 0.42.1 cannot load WanTransformer3DModel (_keep_in_fp32_modules)
    return WanPipeline.from_pretrained(ckpt)


def _sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _config(ckpt, name):
    return json.loads((ckpt / name).read_text())


def test_layout(ckpt):
    for name in FILES:
        assert (ckpt / name).is_file(), name
    assert not [p for p in ckpt.rglob("*") if p.suffix in {".bin", ".pt", ".pth", ".ckpt", ".pkl"}]
    assert sum(p.stat().st_size for p in ckpt.rglob("*") if p.is_file()) < 10e6

    index = _config(ckpt, "model_index.json")
    assert index["_class_name"] == "WanPipeline"
    assert index["boundary_ratio"] == BOUNDARY_RATIO == 0.875
    assert index["expand_timesteps"] is False
    assert {k: tuple(index[k]) for k in COMPONENTS} == COMPONENTS

    vae = _config(ckpt, "vae/config.json")
    assert vae["z_dim"] == 16 and vae["temperal_downsample"] == [False, True, True] and vae["attn_scales"] == []
    assert vae["latents_mean"] == LATENTS_MEAN and vae["latents_std"] == LATENTS_STD and len(LATENTS_MEAN) == 16
    sched = _config(ckpt, "scheduler/scheduler_config.json")
    assert sched["use_flow_sigmas"] and sched["prediction_type"] == "flow_prediction" and sched["flow_shift"] == 3.0
    text = _config(ckpt, "text_encoder/config.json")
    for name in ("transformer", "transformer_2"):
        cfg = _config(ckpt, f"{name}/config.json")
        assert cfg["in_channels"] == cfg["out_channels"] == 16 and cfg["patch_size"] == [1, 2, 2]
        assert cfg["qk_norm"] == "rms_norm_across_heads" and cfg["text_dim"] == text["d_model"]
    # the two experts are distinct random draws
    assert _sha256(ckpt / FILES[7]) != _sha256(ckpt / FILES[9])


def test_deterministic(ckpt, tmp_path):
    main(["--out", str(tmp_path / "again")])
    weights = sorted(p.relative_to(ckpt) for p in ckpt.rglob("*.safetensors"))
    assert len(weights) == 4
    for rel in weights:
        assert _sha256(ckpt / rel) == _sha256(tmp_path / "again" / rel), rel


def test_tokenizer_conventions(pipe):
    tok = pipe.tokenizer
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    assert (tok.pad_token, tok.eos_token, tok.unk_token) == ("<pad>", "</s>", "<unk>")
    assert tok.model_max_length == 512 and len(tok) == pipe.text_encoder.config.vocab_size
    enc = tok("a cat", padding="max_length", max_length=512, truncation=True, return_attention_mask=True)
    ids, n = enc["input_ids"], sum(enc["attention_mask"])
    assert len(ids) == 512 and ids[n - 1] == 1 and set(ids[n:]) == {0} and 2 not in ids[:n] and n == 3
    assert tok("")["input_ids"] == [1]
    odd = tok("日本語 🐱 ünïcødé")["input_ids"]  # any UTF-8 text encodes; unknown characters map to <unk>
    assert odd[-1] == 1 and 2 in odd
    long = tok("a cat " * 600, padding="max_length", max_length=512, truncation=True)["input_ids"]
    assert len(long) == 512 and long[-1] == 1


def _generate(pipe, prompt, steps=2):
    return pipe(
        prompt=prompt, num_frames=9, height=32, width=48, num_inference_steps=steps, guidance_scale=4.0,
        guidance_scale_2=3.0, generator=torch.Generator("cpu").manual_seed(0), output_type="np",
    ).frames


@pytest.mark.slow
def test_generation(pipe):
    calls = {"transformer": 0, "transformer_2": 0}
    hooks = [getattr(pipe, name).register_forward_hook(lambda *_, n=name: calls.__setitem__(n, calls[n] + 1))
             for name in calls]
    try:
        video = _generate(pipe, "a cat")
    finally:
        for hook in hooks:
            hook.remove()
    assert video.shape == (1, 9, 32, 48, 3)
    assert np.isfinite(video).all() and video.min() >= 0.0 and video.max() <= 1.0
    assert video.std() > 0.02 and np.abs(video[0, 0] - video[0, -1]).mean() > 0.01  # not constant, frames differ
    assert calls["transformer"] > 0 and calls["transformer_2"] > 0  # both MoE experts take part
    other = _generate(pipe, "a dog running on the beach")
    assert np.abs((video * 255).round() - (other * 255).round()).mean() > 1.0  # the prompt changes the uint8 video
