"""The orchestrator's plain-Python parts, without a server: request validation and the expert switch."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from export.model_config import read_manifest
from export.repository import ExportOptions, export_repository
from wan22_triton.errors import RequestError
from wan22_triton.request.pipeline import expert_for_timestep
from wan22_triton.request.validation import validate_request


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


@pytest.mark.slow
def test_warm_up_loads_every_sampler_the_orchestrator_serves(tmp_path, tiny_checkpoint):
    """The orchestrator's initialize warms its pipeline, so a first request does not import the schedulers (~2 s):
    in a fresh process, warm_up loads UniPC and, for the presets' `euler`, the flow-match scheduler."""
    import subprocess
    import sys

    repo = tmp_path / "repo"
    export_repository(tiny_checkpoint, repo, ExportOptions(), log=lambda _: None)
    assert {p.sampler for p in read_manifest(repo / "wan22_t2v").presets} == {"euler"}  # lightning_4step
    code = (
        "import sys\n"
        "from export.model_config import read_manifest\n"
        "from wan22_triton.request.pipeline import Wan22T2VPipeline\n"
        f"manifest = read_manifest({str(repo / 'wan22_t2v')!r})\n"
        "modules = ('diffusers.schedulers.scheduling_unipc_multistep',\n"
        "           'diffusers.schedulers.scheduling_flow_match_euler_discrete')\n"
        "before = [m in sys.modules for m in modules]\n"
        "unused = lambda *a, **k: None\n"
        "seconds = Wan22T2VPipeline(manifest, unused, unused, unused).warm_up()\n"
        "print(before, [m in sys.modules for m in modules], seconds > 0)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout.strip().splitlines()[-1]
    assert out == "[False, False] [True, True] True"
