"""Shared fixtures: the tiny checkpoint, exported repositories, real tritonservers and diffusers references."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from perf.gpu_benchmark.quality import psnr  # noqa: F401 (the tests import it from here)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """The embedded tiny checkpoint, generated fresh for the session."""
    from devtools.tiny_checkpoint import write_checkpoint

    out = tmp_path_factory.mktemp("ckpt") / "tiny-wan2.2-t2v-a14b"
    write_checkpoint(out)
    return out


def _serve(tmp_path_factory, checkpoint: Path, engine: str):
    from export.repository import ExportOptions, export_repository
    from wan22_triton.manifest import Limits
    from server.launcher import TritonServer

    repo = tmp_path_factory.mktemp(f"repo-{engine}")
    limits = Limits(max_num_frames=33, max_size=256, max_inference_steps=50)
    export_repository(checkpoint, repo, ExportOptions(engine=engine, limits=limits, orchestrator_instances=2),
                      log=lambda _: None)
    server = TritonServer(repo, log_file=repo / "tritonserver.log")
    server.start()
    return server


@pytest.fixture(scope="session")
def torch_server(tmp_path_factory, tiny_checkpoint):
    server = _serve(tmp_path_factory, tiny_checkpoint, "torch")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def onnx_server(tmp_path_factory, tiny_checkpoint):
    server = _serve(tmp_path_factory, tiny_checkpoint, "onnx")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def diffusers_pipe(tiny_checkpoint):
    from diffusers import WanPipeline

    pipe = WanPipeline.from_pretrained(tiny_checkpoint)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_diffusers(pipe, request: dict) -> np.ndarray:
    """diffusers' output for a request, as uint8 [F, H, W, 3] (round(x * 255) of output_type='np')."""
    import torch

    kwargs = {k: v for k, v in request.items() if k not in ("seed", "flow_shift")}
    frames = pipe(**kwargs, generator=torch.Generator("cpu").manual_seed(request["seed"]), output_type="np").frames[0]
    return np.round(frames * 255).astype(np.uint8)
