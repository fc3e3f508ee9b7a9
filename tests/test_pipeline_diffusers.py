"""`Wan22T2VPipeline` on the tiny checkpoint's own diffusers modules against diffusers' `WanPipeline`, no server.

The pipeline's three components are the checkpoint's UMT5 encoder (through `WanPipeline.encode_prompt`), its two
`WanTransformer3DModel` experts and `AutoencoderKLWan.decode` + `frames_to_uint8`: what remains different from
diffusers is the pipeline itself (scheduler, noise, expert switch, CFG, de-normalisation), so a wrong CFG rule,
guidance scale or expert routing shows up as a different video (test_parity_catches_a_wrong_pipeline).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wan22_triton.checkpoint import read_checkpoint
from wan22_triton.components.expert import expert_models
from wan22_triton.manifest import Manifest
from wan22_triton.request.pipeline import Wan22T2VPipeline, frames_to_uint8
from wan22_triton.request.validation import validate_request

from .conftest import psnr, run_diffusers

# Small enough for seconds on CPU; 4 steps put 2 on each expert; CFG on, a different scale per expert.
REQUEST = dict(prompt="a red panda on a mossy branch", negative_prompt="blurry", num_frames=9, height=32, width=48,
               num_inference_steps=4, guidance_scale=5.0, guidance_scale_2=2.0, seed=11)
# Measured ~90 dB (cond and uncond batched here, two calls in diffusers). The tiny model reacts little to guidance:
# the high-noise steps at `guidance_scale_2` still reach ~46 dB, so 40 dB would not catch that mistake.
PARITY_DB = 60.0


@pytest.fixture(scope="module")
def manifest(tiny_checkpoint) -> Manifest:
    return Manifest(model="wan22_t2v", engine="torch", precision="fp32", checkpoint=read_checkpoint(tiny_checkpoint))


def diffusers_pipeline(pipe, manifest: Manifest, swap_experts: bool = False) -> tuple[Wan22T2VPipeline, list]:
    """The pipeline on `pipe`'s modules, and the list its expert callable appends (expert, timestep) to."""
    info = manifest.checkpoint
    modules = [getattr(pipe, folder) for folder in info.expert_folders]  # high-noise first, as expert_models
    experts = dict(zip(expert_models(info), modules[::-1] if swap_experts else modules))
    calls: list[tuple[str, float]] = []

    def text_encoder(prompts: list[str]) -> torch.Tensor:
        return pipe.encode_prompt(prompts, do_classifier_free_guidance=False, max_sequence_length=info.text_len,
                                  device=torch.device("cpu"))[0]

    def expert(name: str, latents: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
        calls.append((name, float(t[0])))
        return experts[name](hidden_states=latents, timestep=t, encoder_hidden_states=embeds, return_dict=False)[0]

    def vae_decoder(latents: torch.Tensor) -> torch.Tensor:
        return frames_to_uint8(pipe.vae.decode(latents, return_dict=False)[0])

    return Wan22T2VPipeline(manifest, text_encoder, expert, vae_decoder), calls


def inputs(request: dict) -> dict[str, np.ndarray]:
    """A request as Triton hands it over: one-element arrays, text as bytes."""
    return {k: np.array([v.encode() if isinstance(v, str) else v]) for k, v in request.items()}


def run_diffusers_with_routing(pipe, manifest: Manifest, request: dict) -> tuple[np.ndarray, list[tuple[str, float]]]:
    """diffusers' video for `request` and (expert, timestep) of each of its steps (two transformer calls a step
    with CFG: cond, then uncond)."""
    info = manifest.checkpoint
    calls: list[tuple[str, float]] = []
    hooks = [getattr(pipe, folder).register_forward_pre_hook(
        lambda _m, _a, kw, name=name: calls.append((name, float(kw["timestep"][0]))), with_kwargs=True)
        for name, folder in zip(expert_models(info), info.expert_folders)]
    try:
        video = run_diffusers(pipe, request)
    finally:
        for hook in hooks:
            hook.remove()
    assert calls[0::2] == calls[1::2]  # cond and uncond on the same expert and timestep
    return video, calls[0::2]


@pytest.fixture(scope="module")
def reference(diffusers_pipe, manifest) -> tuple[np.ndarray, list[tuple[str, float]]]:
    return run_diffusers_with_routing(diffusers_pipe, manifest, REQUEST)


@torch.no_grad()
def test_pipeline_on_diffusers_modules_matches_wan_pipeline(diffusers_pipe, manifest, reference):
    expected_video, expected_steps = reference
    pipeline, calls = diffusers_pipeline(diffusers_pipe, manifest)
    result = pipeline(validate_request(inputs(REQUEST), manifest))

    steps = list(zip(result.experts, result.timesteps))
    assert steps == calls == expected_steps
    boundary = manifest.checkpoint.boundary_ratio * manifest.checkpoint.num_train_timesteps
    high, low = expert_models(manifest.checkpoint)
    assert result.experts == [high if t >= boundary else low for t in result.timesteps]
    assert result.experts == [high, high, low, low]  # both experts, switched once at the boundary
    assert result.video.shape == expected_video.shape == (9, 32, 48, 3) and result.video.dtype == np.uint8
    assert psnr(result.video, expected_video) >= PARITY_DB


@torch.no_grad()
@pytest.mark.parametrize("mistake", ["experts_swapped", "guidance_scale_throughout", "guidance_scale_2_throughout",
                                     "cfg_off"])
def test_parity_catches_a_wrong_pipeline(diffusers_pipe, manifest, reference, mistake):
    """What a broken expert switch or CFG would produce scores below PARITY_DB against the same reference."""
    wrong = {"guidance_scale_throughout": {"guidance_scale_2": REQUEST["guidance_scale"]},
             "guidance_scale_2_throughout": {"guidance_scale": REQUEST["guidance_scale_2"]},
             "cfg_off": {"guidance_scale": 1.0}}.get(mistake, {})
    pipeline, _ = diffusers_pipeline(diffusers_pipe, manifest, swap_experts=mistake == "experts_swapped")
    result = pipeline(validate_request(inputs({**REQUEST, **wrong}), manifest))
    assert psnr(result.video, reference[0]) < PARITY_DB
