"""The orchestrator's plain-Python parts, without a server: request validation and the expert switch."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from export.model_config import read_manifest
from export.repository import ExportOptions, export_repository
from wan22_triton.errors import RequestError
from wan22_triton.pipeline import expert_for_timestep, validate_request


@pytest.fixture(scope="module")
def config(tiny_checkpoint, tmp_path_factory):
    """The orchestrator's manifest as the export writes it and the served model reads it back."""
    repo = tmp_path_factory.mktemp("repo-manifest")
    export_repository(tiny_checkpoint, repo, ExportOptions(), log=lambda _: None)
    return read_manifest(repo / "wan22_t2v")


def request(**values):
    return {k: np.array([v.encode() if isinstance(v, str) else v]) for k, v in {"prompt": "x", **values}.items()}


def test_defaults_come_from_the_checkpoint(config, tiny_checkpoint):
    req = validate_request(request(), config)
    assert (req.num_frames, req.height, req.width) == (81, 480, 832)  # diffusers' WanPipeline defaults
    assert (req.num_inference_steps, req.guidance_scale, req.guidance_scale_2) == (40, 4.0, 3.0)  # A14B family
    scheduler = json.loads((tiny_checkpoint / "scheduler" / "scheduler_config.json").read_text())
    assert req.flow_shift == scheduler["flow_shift"] and req.negative_prompt == ""
    info = config.checkpoint
    assert info.in_channels == 16 and info.vae_scale_factor_temporal == 4 and info.spatial_multiple == 16


def test_boundary_switches_experts_at_boundary_ratio_times_train_steps(config):
    boundary = config.checkpoint.boundary_ratio * config.checkpoint.scheduler_config["num_train_timesteps"]  # 875
    assert expert_for_timestep(boundary, config) == ("transformer_high_noise", "guidance_scale")
    assert expert_for_timestep(boundary - 1, config) == ("transformer_low_noise", "guidance_scale_2")
    single = dataclasses.replace(config, checkpoint=dataclasses.replace(config.checkpoint, boundary_ratio=None))
    assert expert_for_timestep(0, single)[0] == "transformer_high_noise"


def test_tensorrt_repositories_reject_sizes_without_a_profile(config):
    trt = dataclasses.replace(config, video_sizes=((17, 32, 48),))
    assert validate_request(request(num_frames=17, height=32, width=48), trt).num_frames == 17
    with pytest.raises(RequestError, match="not a size this repository was built for"):
        validate_request(request(num_frames=9, height=32, width=48), trt)


@pytest.mark.parametrize("frames", [1, 5, 161])
def test_valid_frame_counts(config, frames):
    assert validate_request(request(num_frames=frames, height=32, width=32), config).num_frames == frames
