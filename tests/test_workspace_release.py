"""Workspace release (the manifest's `release_workspace`, export `--keep-workspace` to turn it off): the torch
engine's models hand the PyTorch cache's unused GPU blocks back to the driver when they go idle: the text encoder
and the VAE after each call, an expert after the call the orchestrator marks as its last step before the switch or
the decode, and after its first call at each input shape (a warm-up sample, a compile, a new size).

The option's path export -> manifest -> model is checked without a server, and which steps are marked; then two
real tritonservers on the CPU (released: the session's, kept) serve two requests: in the second, one
`workspace_released` event per encode, per decode and per expert's run of steps, in that order (nothing freed on a
CPU, but the release ran), none when kept, and the same video; in the first, each expert's first call at the size
releases too. A sequence-parallel worker releases when rank 0 tells it.
"""

from __future__ import annotations

import argparse
import functools
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from clients import grpc_client
from export.model_config import read_manifest
from export.options import ExportOptions
from export.repository import export_repository
from wan22_triton.operations import events
from wan22_triton.manifest import Manifest

from .conftest import TEST_LIMITS, Server

COMPONENTS = ("text_encoder", "transformer_high_noise", "transformer_low_noise", "vae_decoder")
EXPERTS = COMPONENTS[1:3]
ORCHESTRATORS = ("wan22_t2v", "wan22_t2v_stream")
# A size no other test asks of the session's server: its first request at that size is this module's
REQUEST = dict(prompt="a kite over a beach", num_frames=5, height=48, width=80, num_inference_steps=4, seed=5)


def _export(checkpoint: Path, repo: Path, **options) -> Path:
    export_repository(checkpoint, repo, ExportOptions(limits=TEST_LIMITS, **options), log=lambda _: None)
    return repo


# -- the option's path --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("options, released", [
    (dict(engine="torch", device="gpu", precision="bf16"), True),  # the point: fit the GPU by default
    (dict(engine="torch", device="gpu", precision="bf16", keep_workspace=True), False),
    (dict(engine="torch"), True),  # CPU: the release runs, frees nothing
    (dict(engine="torch", keep_workspace=True), False),
    (dict(engine="onnx"), False),  # no PyTorch cache to release
])
def test_option_reaches_every_manifest(tiny_checkpoint, tmp_path, options, released):
    opts = ExportOptions(**options)
    assert opts.release_workspace is released
    if options["engine"] == "onnx":  # exporting the graphs is slow: the manifests follow the same property
        return
    repo = _export(tiny_checkpoint, tmp_path, **options)
    for model in (*COMPONENTS, *ORCHESTRATORS):
        assert read_manifest(repo / model).release_workspace is released, model
    for model in EXPERTS:  # the orchestrator's mark of an expert's last step: an optional input, where released
        assert ('name: "release_workspace"' in (repo / model / "config.pbtxt").read_text()) is released, model


def test_the_last_step_of_each_expert_is_marked(tiny_checkpoint):
    from wan22_triton.checkpoint import read_checkpoint
    from wan22_triton.request.pipeline import Wan22T2VPipeline

    info = read_checkpoint(tiny_checkpoint)
    boundary = info.boundary_timestep
    timesteps = [999.0, boundary, boundary - 1, 500.0, 20.0]  # high, high, low, low, low
    manifest = Manifest(model="wan22_t2v", engine="torch", precision="fp32", checkpoint=info,
                        release_workspace=True)
    unused = lambda *a, **k: None  # noqa: E731 - the pipeline's callables are not called here
    marked = [Wan22T2VPipeline(manifest, unused, unused, unused).last_of_expert(timesteps, i, expert)
              for i, expert in enumerate(["transformer_high_noise"] * 2 + ["transformer_low_noise"] * 3)]
    assert marked == [False, True, False, False, True]
    for other in (dict(release_workspace=False), dict(release_workspace=True, low_memory=True)):
        pipeline = Wan22T2VPipeline(Manifest(model="wan22_t2v", engine="torch", precision="fp32", checkpoint=info,
                                             **other), unused, unused, unused)
        assert not any(pipeline.last_of_expert(timesteps, i, "transformer_high_noise") for i in range(5)), other


@pytest.mark.parametrize("engine", ["onnx", "tensorrt"])
def test_keep_workspace_is_refused_where_nothing_is_released(tiny_checkpoint, tmp_path, engine):
    with pytest.raises(ValueError, match="keep_workspace needs engine 'torch'"):
        export_repository(tiny_checkpoint, tmp_path, ExportOptions(engine=engine, keep_workspace=True),
                          log=lambda _: None)
    assert not any(tmp_path.iterdir())


def test_flag_and_manifest_round_trip(tiny_checkpoint):
    from export.__main__ import _add_flags, _pick
    from wan22_triton.checkpoint import read_checkpoint

    parser = argparse.ArgumentParser()
    _add_flags(parser, ExportOptions)
    assert _pick(ExportOptions, parser.parse_args([])).release_workspace
    assert not _pick(ExportOptions, parser.parse_args(["--keep-workspace"])).release_workspace
    manifest = Manifest(model="m", engine="torch", precision="fp32", checkpoint=read_checkpoint(tiny_checkpoint),
                        release_workspace=True)
    assert Manifest.from_json(manifest.to_json()).release_workspace
    # a manifest written before the option: kept, as those servers did
    old = manifest.to_json().replace('"release_workspace": true, ', "")
    assert "release_workspace" not in old and not Manifest.from_json(old).release_workspace


def test_release_on_the_cpu_records_that_it_ran(tmp_path, monkeypatch):
    from wan22_triton.engines.loading import release_workspace

    path = tmp_path / "events.jsonl"
    monkeypatch.setenv(events.EVENTS_FILE_ENV, str(path))
    assert release_workspace("vae_decoder", "cpu", "call", requests=1) == (0, 0)
    [event] = events.read_events(path)
    assert event["event"] == "workspace_released" and event["model"] == "vae_decoder" and event["after"] == "call"
    assert event["reserved_before"] == event["reserved_after"] == 0 and event["seconds"] >= 0


@pytest.mark.slow
def test_sequence_parallel_worker_releases_when_rank_0_does(tiny_checkpoint, tmp_path, monkeypatch):
    from wan22_triton.checkpoint import read_checkpoint
    from wan22_triton.engines.loading import build_expert
    from wan22_triton.parallel.worker_group import WorkerGroup

    path = tmp_path / "events.jsonl"
    monkeypatch.setenv(events.EVENTS_FILE_ENV, str(path))  # the spawned worker inherits it
    info = read_checkpoint(tiny_checkpoint)
    manifest = Manifest(model="transformer_high_noise", engine="torch", precision="fp32", checkpoint=info)
    build = functools.partial(build_expert, manifest, tiny_checkpoint)
    group = WorkerGroup("expert", [torch.device("cpu")] * 2, build, 60).start()
    try:
        g = torch.Generator().manual_seed(0)
        for _ in range(2):  # steps alone keep the cache
            group(hidden_states=torch.randn(1, info.in_channels, 2, 4, 4, generator=g),
                  timestep=torch.tensor([500.0]), return_dict=False,
                  encoder_hidden_states=torch.randn(1, info.text_len, info.text_dim, generator=g))
        group.release_workspace()
        deadline = time.monotonic() + 10  # the worker writes its event after rank 0 has asked
        while not [e for e in events.read_events(path) if e.get("after") == "call"] and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        group.shutdown()
    released = [(e["model"], e["after"], e["rank"]) for e in events.read_events(path)
                if e["event"] == "workspace_released"]
    assert released == [("expert", "load", 1), ("expert", "call", 1)]


# -- served -------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def servers(torch_server, tmp_path_factory, tiny_checkpoint):
    """(released, kept): the session's server (the default: released) and one exported with `--keep-workspace`."""
    repo = _export(tiny_checkpoint, tmp_path_factory.mktemp("repo-keep"), engine="torch", keep_workspace=True)
    kept = Server(repo).start()
    yield torch_server, kept
    kept.stop()


def _events(server, offset: int = 0) -> list[dict]:
    return events.read_events(server.events_file, offset)


def _released(found: list[dict], after: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for e in found:
        if e["event"] == "workspace_released" and e["after"] == after:
            counts[e["model"]] = counts.get(e["model"], 0) + 1
    return counts


@pytest.mark.server
def test_loaded_models_release_once(servers):
    for server in servers:  # whatever the option: what loading left is released, once per component instance
        assert _released(_events(server), "load") == {model: 1 for model in COMPONENTS}


def _first_calls(found: list[dict]) -> set[tuple[str, tuple[int, ...]]]:
    return {(e["model"], tuple(e["shape"])) for e in found if e["event"] == "first_call"}


def _forwards(found: list[dict]) -> dict[str, int]:
    return {model: sum(1 for e in found if e["event"] == "expert_forward" and e["model"] == model) for model in EXPERTS}


@pytest.mark.server
def test_one_release_per_idle_model_and_the_same_video(servers):
    released, kept = servers
    # The first request at a size: each expert also releases after its first call at the new shape (what a
    # warm-up sample leaves behind is not kept), which is its last step too when it has one step only.
    offset = events.end_offset(released.events_file)
    before = _first_calls(_events(released))
    first = grpc_client.generate(released.grpc_url, REQUEST)["video"]
    found = _events(released, offset)
    assert _first_calls(found) and not _first_calls(found) & before  # a size the shared server had not served
    steps = _forwards(found)
    assert _released(found, "call") == {"text_encoder": 1, "vae_decoder": 1,
                                        **{model: 1 if steps[model] == 1 else 2 for model in EXPERTS}}

    offsets = [events.end_offset(server.events_file) for server in servers]
    video = grpc_client.generate(released.grpc_url, REQUEST)["video"]
    assert np.array_equal(video, first)
    assert np.array_equal(video, grpc_client.generate(kept.grpc_url, REQUEST)["video"])

    found = _events(released, offsets[0])  # every model writes its events before it answers
    forwards = _forwards(found)
    assert sum(forwards.values()) == REQUEST["num_inference_steps"] and all(forwards.values())
    # one encode (prompt and negative prompt together), each expert after its last step, one decode
    assert _released(found, "call") == {model: 1 for model in COMPONENTS}
    calls = [e for e in found if e["event"] == "workspace_released"]
    # in the request's order: the high-noise expert let go before the low-noise one's first step
    order = [(e["event"], e["model"]) for e in found if e["event"] in ("expert_forward", "workspace_released")]
    high, low = EXPERTS
    assert order == ([("workspace_released", "text_encoder")] + [("expert_forward", high)] * forwards[high]
                     + [("workspace_released", high)] + [("expert_forward", low)] * forwards[low]
                     + [("workspace_released", low), ("workspace_released", "vae_decoder")])
    assert all(e["device"] == "cpu" and e["reserved_before"] == e["reserved_after"] == 0 and e["requests"] == 1
               for e in calls)
    assert _released(_events(kept, offsets[1]), "call") == {}
