"""`--compile regional --compile-artifacts` on the CPU with the tiny checkpoint (docs/compile_artifacts.md): the
export compiles each expert for every point of a small shape spec (2 sizes x batch 2 and 1) and saves torch's compile
cache with its record; a real tritonserver loads it, runs every point in Triton's warm-up before READY and the first
requests compile nothing; a record from elsewhere (torch version edited) falls back to a compile with one event and
serves the same video; sizes outside the spec are refused by the orchestrator, and a direct expert call with another
shape is served with a logged compile; model_warmup is in the experts' configs only with the option. `--warmup` alone
(eager experts) warms every model at the spec's sizes before READY and serves any size.

Two server starts: the matching repository with an empty Inductor cache (so only the artifacts can give hits), then
the mismatched copy, which reuses that server's local Inductor cache as any restart on one machine would.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from clients import grpc_client
from export.compile_artifacts import expert_batches
from export.model_config import parse_pbtxt, read_manifest
from export.options import ExportOptions
from export.repository import export_repository
from wan22_triton.speed import compile_cache
from wan22_triton.operations import events
from wan22_triton.checkpoint import read_checkpoint
from wan22_triton.components.common import CompilePoint, ShapeSpec
from wan22_triton.components.expert import WARMUP_INPUT, transformer_spec
from wan22_triton.manifest import SpeedOptions
from wan22_triton.parallel.plan import ParallelPlan

from .conftest import psnr

ROOT = Path(__file__).resolve().parents[1]
EXPERTS = ("transformer_high_noise", "transformer_low_noise")
SPEC = {"num_frames": [5, 9], "resolutions": [[32, 48]], "max_batch": 2}
POINTS = tuple(CompilePoint(f, 32, 48, b) for f in (5, 9) for b in (2, 1))
REQUEST = dict(prompt="a lighthouse at dusk", num_frames=5, height=32, width=48, num_inference_steps=4, seed=3)
REGIONAL = SpeedOptions(compile="regional")
INDUCTOR_CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("compile-artifacts")


@pytest.fixture(scope="module")
def exported(workdir, tiny_checkpoint) -> Path:
    """`python -m export` in its own process (its own Inductor cache), as a user runs it."""
    spec = workdir / "shape_spec.json"
    spec.write_text(json.dumps(SPEC))
    repo = workdir / "repo"
    started = time.monotonic()
    subprocess.run(
        [sys.executable, "-m", "export", "--checkpoint", str(tiny_checkpoint), "--repository", str(repo),
         "--compile", "regional", "--compile-artifacts", "--shape-spec", str(spec), "--max-num-frames", "9",
         "--max-size", "64"],
        cwd=ROOT, check=True, capture_output=True, timeout=300,
        env={**os.environ, INDUCTOR_CACHE_ENV: str(workdir / "inductor-export")},
    )
    print(f"export with compile artifacts: {time.monotonic() - started:.1f}s")
    return repo


def _serve(served, repository, inductor_cache: Path, options: ExportOptions | None = None):
    server = served(options, repository=repository, env={INDUCTOR_CACHE_ENV: str(inductor_cache)})
    print(f"{server.model_repository}: start -> READY {server.startup_seconds:.1f}s")
    return server


@pytest.fixture(scope="module")
def with_artifacts(served, exported, workdir):
    return _serve(served, exported, workdir / "inductor-served")  # empty: hits can only come from the artifacts


@pytest.fixture(scope="module")
def warmed(served, workdir):
    """Eager experts exported with `--warmup` alone: Triton's warm-up at the spec's sizes, nothing compiled."""
    spec = workdir / "warmup_spec.json"
    spec.write_text(json.dumps(SPEC))
    return _serve(served, None, workdir / "inductor-warmup", ExportOptions(warmup=True, shape_spec=str(spec)))


@pytest.fixture(scope="module")
def mismatched(served, exported, workdir, with_artifacts):
    repo = workdir / "repo-mismatched"
    shutil.copytree(exported, repo)
    for expert in EXPERTS:
        record_file = repo / expert / "1" / compile_cache.FOLDER / compile_cache.RECORD
        record = json.loads(record_file.read_text())
        record["environment"]["torch"] = "0.0.0-elsewhere"
        record_file.write_text(json.dumps(record))
    return _serve(served, repo, workdir / "inductor-served")  # the first server's, as a restart on one machine


def _events(server, name: str, since: int = 0) -> list[dict]:
    return [e for e in events.read_events(server.events_file, since) if e["event"] == name]


def _wait_for_log(server, text: str, timeout: float = 15.0) -> None:
    """tritonserver writes its log a little after the model logs a line."""
    deadline = time.monotonic() + timeout
    while text not in server.log_file.read_text():
        assert time.monotonic() < deadline, f"{text!r} not in {server.log_file}"
        time.sleep(0.2)


def _point_shapes(tiny_checkpoint) -> set[tuple[int, ...]]:
    """hidden_states' shape at each compile point."""
    info = read_checkpoint(tiny_checkpoint)
    spec = transformer_spec(info, EXPERTS[0])
    return {spec.inputs[0].resolve(p.sizes(info)) for p in POINTS}


# -- export ---------------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_export_writes_artifacts_their_record_and_warmup(exported, tiny_checkpoint):
    info = read_checkpoint(tiny_checkpoint)
    for expert in EXPERTS:
        folder = exported / expert / "1" / compile_cache.FOLDER
        assert (folder / compile_cache.ARTIFACTS).stat().st_size > 0
        record = json.loads((folder / compile_cache.RECORD).read_text())
        assert record["environment"] == compile_cache.environment("cpu", "fp32", REGIONAL)
        assert [CompilePoint(**p) for p in record["points"]] == list(POINTS)
        assert record["artifacts"]["inductor"] == len(POINTS)  # one static graph per point
        assert read_manifest(exported / expert).compile_points == POINTS
        # One warm-up sample per point; a batch-2 sample is two batch-1 requests that the expert runs as one batch.
        config = parse_pbtxt((exported / expert / "config.pbtxt").read_text())
        assert [(w.name, w.batch_size) for w in config.model_warmup] == [(p.label, p.batch) for p in POINTS]
        for warmup, point in zip(config.model_warmup, POINTS):
            _, frames, height, width = info.latent_shape(point.num_frames, point.height, point.width)
            assert list(warmup.inputs["hidden_states"].dims) == [info.in_channels, frames, height, width]
            assert list(warmup.inputs["timestep"].dims) == [1]  # the input's dims, reshaped to a scalar per item
            # zeros, and the marker that makes the expert run its first block alone (a true BOOL from a file)
            marker = warmup.inputs.pop(WARMUP_INPUT.name)
            assert all(i.zero_data for i in warmup.inputs.values())
            assert (exported / expert / "warmup" / marker.input_data_file).read_bytes() == b"\x01"
    # The other first calls too, so that READY means full speed: the text encoder once (prompt and negative
    # prompt), the VAE once per video size; the orchestrators warm their own schedulers in initialize.
    text = parse_pbtxt((exported / "text_encoder" / "config.pbtxt").read_text()).model_warmup
    assert [(w.name, w.batch_size, list(w.inputs["text"].dims), w.inputs["text"].zero_data) for w in text] == [
        ("prompts", 2, [1], True)]
    vae = parse_pbtxt((exported / "vae_decoder" / "config.pbtxt").read_text()).model_warmup
    sizes = sorted({(p.num_frames, p.height, p.width) for p in POINTS})
    assert [(w.name, w.batch_size) for w in vae] == [(f"{f}x{h}x{w}", 1) for f, h, w in sizes]
    for warmup, size in zip(vae, sizes):
        assert list(warmup.inputs["latents"].dims) == [info.z_dim, *info.latent_shape(*size)[1:]]
    for model in ("wan22_t2v", "wan22_t2v_stream"):
        assert not parse_pbtxt((exported / model / "config.pbtxt").read_text()).model_warmup
    assert read_manifest(exported / "wan22_t2v").video_sizes == ((5, 32, 48), (9, 32, 48))


@pytest.mark.parametrize("opts", [ExportOptions(), ExportOptions(speed=REGIONAL)])
def test_no_warmup_or_artifacts_without_the_option(tiny_checkpoint, tmp_path, opts):
    export_repository(tiny_checkpoint, tmp_path, opts, log=lambda _: None)
    for model in ("text_encoder", *EXPERTS, "vae_decoder"):
        assert not parse_pbtxt((tmp_path / model / "config.pbtxt").read_text()).model_warmup
    for expert in EXPERTS:
        assert not read_manifest(tmp_path / expert).compile_points
        assert not (tmp_path / expert / "1" / compile_cache.FOLDER).exists()
    assert read_manifest(tmp_path / "wan22_t2v").video_sizes is None  # any size, compiled on first use


def test_batches_are_those_the_orchestrator_sends():
    assert expert_batches(ParallelPlan(), ShapeSpec()) == (2, 1)  # CFG on, CFG off
    assert expert_batches(ParallelPlan(cfg_parallel=2), ShapeSpec()) == (1,)  # each half alone


@pytest.mark.parametrize("opts, message", [
    (ExportOptions(compile_artifacts=True), "needs engine 'torch' with --compile regional"),
    (ExportOptions(engine="onnx", compile_artifacts=True), "needs engine 'torch'"),
    (ExportOptions(speed=REGIONAL, compile_artifacts=True, parallel=ParallelPlan(ulysses=2)), "ulysses"),
    (ExportOptions(device="gpu", precision="bf16", speed=REGIONAL, compile_artifacts=True, low_memory=True),
     "low-memory"),
    (ExportOptions(engine="onnx", warmup=True), "--warmup needs engine 'torch'"),
    (ExportOptions(low_memory=True, warmup=True), "--warmup needs engine 'torch' without --low-memory"),
    (ExportOptions(speed=REGIONAL, warmup=True), "--warmup with --compile regional needs --compile-artifacts"),
])
def test_compile_artifacts_and_warmup_refused_where_they_cannot_apply(tiny_checkpoint, tmp_path, opts, message):
    with pytest.raises(ValueError, match=message):
        export_repository(tiny_checkpoint, tmp_path, opts, log=lambda _: None)
    assert not any(tmp_path.iterdir())


def test_gpu_artifacts_need_a_gpu_at_export(tiny_checkpoint, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    opts = ExportOptions(device="gpu", precision="bf16", speed=REGIONAL, compile_artifacts=True)
    with pytest.raises(ValueError, match="must be of the serving kind"):
        export_repository(tiny_checkpoint, tmp_path, opts, log=lambda _: None)


# -- served ---------------------------------------------------------------------------------------------------------

def test_served_experts_load_the_artifacts_and_compile_every_point_before_ready(with_artifacts, tiny_checkpoint):
    loaded = _events(with_artifacts, "compile_cache_loaded")
    assert sorted(e["model"] for e in loaded) == sorted(EXPERTS)
    assert not _events(with_artifacts, "compile_cache_mismatch")
    compiled = _events(with_artifacts, "expert_compiled")
    for expert in EXPERTS:
        mine = [e for e in compiled if e["model"] == expert]
        assert {tuple(e["shape"]) for e in mine} == _point_shapes(tiny_checkpoint)
        # every graph from the artifacts (the server's Inductor cache started empty), all in Triton's warm-up
        assert all(e["cache_misses"] == 0 and e["cache_hits"] == e["graphs"] == 1 for e in mine), mine
        assert all(e["time"] < with_artifacts.ready_at for e in mine)


def test_each_warmup_compile_hands_its_workspace_back_before_ready(with_artifacts):
    """So the READY server holds its weights, not the workspace of its largest warm-up sample."""
    for expert in EXPERTS:
        order = [e["event"] for e in events.read_events(with_artifacts.events_file) if e.get("model") == expert
                 and e["time"] < with_artifacts.ready_at and (e["event"] == "expert_compiled" or (
                     e["event"] == "workspace_released" and e["after"] == "call"))]
        assert order == ["expert_compiled", "workspace_released"] * len(POINTS), order


def test_warmup_alone_runs_every_model_before_ready_and_serves_any_size(warmed, tiny_checkpoint, torch_server):
    repo = warmed.model_repository
    for model, samples in (("text_encoder", 1), *((e, len(POINTS)) for e in EXPERTS), ("vae_decoder", 2)):
        assert len(parse_pbtxt((repo / model / "config.pbtxt").read_text()).model_warmup) == samples, model
        assert not read_manifest(repo / model).compile_points
    assert read_manifest(repo / "wan22_t2v").video_sizes is None
    before = [e for e in events.read_events(warmed.events_file) if e["time"] < warmed.ready_at]
    released = [e["model"] for e in before if e["event"] == "workspace_released" and e["after"] == "call"]
    assert released.count("text_encoder") == 1 and released.count("vae_decoder") == 2
    for expert in EXPERTS:  # each sample's first call at its shape hands its workspace back
        order = [e["event"] for e in before if e.get("model") == expert and (
            e["event"] == "expert_forward" or (e["event"] == "workspace_released" and e["after"] == "call"))]
        assert order == ["expert_forward", "workspace_released"] * len(POINTS), order
    # the warm-up's forwards through the first block alone; a request's through all of them
    assert all(e["first_block_only"] for e in before if e["event"] == "expert_forward")
    offset = events.end_offset(warmed.events_file)
    video = grpc_client.generate(warmed.grpc_url, {**REQUEST, "height": 64})["video"]  # not a size of the spec
    assert video.shape[-3:-1] == (64, REQUEST["width"])  # (..., height, width, rgb)
    forwards = _events(warmed, "expert_forward", offset)
    assert forwards and not any(e["first_block_only"] for e in forwards)
    # every block back after the warm-up: the same video as a server without one
    assert np.array_equal(grpc_client.generate(warmed.grpc_url, REQUEST)["video"],
                          grpc_client.generate(torch_server.grpc_url, REQUEST)["video"])


def test_models_of_a_device_warm_up_one_at_a_time(warmed):
    """Triton loads the models in parallel; their first calls at a shape hold the device's lock, so the warm-up's
    peak is one model's workspace over the weights, not all of them at once."""
    before = [e for e in events.read_events(warmed.events_file) if e["time"] < warmed.ready_at]
    held = sorted((e["started"], e["ended"], e["model"]) for e in before if e["event"] == "first_call")
    samples = {"text_encoder": 1, **{expert: len(POINTS) for expert in EXPERTS}, "vae_decoder": 2}
    assert {m: sum(1 for h in held if h[2] == m) for m in samples} == samples
    assert all(e["device"] == "cpu" for e in before if e["event"] == "first_call")
    for (_, ended, _), (started, _, _) in zip(held, held[1:]):
        assert ended <= started, held  # never two at once
    for forward in (e for e in before if e["event"] == "expert_forward"):  # each warm-up forward inside its hold
        assert any(m == forward["model"] and s <= forward["started"] <= forward["time"] <= t for s, t, m in held)


def test_first_requests_after_ready_compile_nothing(with_artifacts, torch_server):
    offset = events.end_offset(with_artifacts.events_file)
    video = grpc_client.generate(with_artifacts.grpc_url, REQUEST)["video"]  # CFG: batch 2, 5 frames
    grpc_client.generate(with_artifacts.grpc_url,
                         {**REQUEST, "num_frames": 9, "guidance_scale": 1.0})  # batch 1, 9 frames
    forwards = _events(with_artifacts, "expert_forward", offset)
    assert {e["batch"] for e in forwards} == {1, 2}
    assert not _events(with_artifacts, "expert_compiled", offset)
    # and the compiled experts draw the eager experts' video (to rounding)
    assert psnr(video, grpc_client.generate(torch_server.grpc_url, REQUEST)["video"]) >= 40.0


def test_sizes_outside_the_spec_are_refused(with_artifacts):
    with pytest.raises(InferenceServerException, match="not a size this repository was built for") as err:
        grpc_client.generate(with_artifacts.grpc_url, {**REQUEST, "height": 64})
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"


def test_mismatched_record_falls_back_and_serves_the_same_video(with_artifacts, mismatched, tiny_checkpoint):
    mismatches = _events(mismatched, "compile_cache_mismatch")
    assert sorted(e["model"] for e in mismatches) == sorted(EXPERTS) and not _events(mismatched, "compile_cache_loaded")
    here = compile_cache.environment("cpu", "fp32", REGIONAL)["torch"]
    assert all(e["differs"] == {"torch": ["0.0.0-elsewhere", here]} for e in mismatches)
    log = mismatched.log_file.read_text()
    assert all(log.count(f"{expert}: compile artifacts in") == 1 for expert in EXPERTS)  # one line each
    assert "torch 0.0.0-elsewhere at export" in log
    for expert in EXPERTS:  # still every point compiled in the warm-up
        shapes = {tuple(e["shape"]) for e in _events(mismatched, "expert_compiled") if e["model"] == expert
                  and e["time"] < mismatched.ready_at}
        assert shapes == _point_shapes(tiny_checkpoint)
    assert np.array_equal(grpc_client.generate(mismatched.grpc_url, REQUEST)["video"],
                          grpc_client.generate(with_artifacts.grpc_url, REQUEST)["video"])


def test_a_direct_call_with_another_shape_is_served_with_a_logged_compile(with_artifacts, tiny_checkpoint):
    info = read_checkpoint(tiny_checkpoint)
    inputs = transformer_spec(info, EXPERTS[0]).sample_inputs({"batch": 1, "latent_frames": 2, "latent_height": 4,
                                                                "latent_width": 4})
    offset = events.end_offset(with_artifacts.events_file)
    with grpcclient.InferenceServerClient(with_artifacts.grpc_url) as client:
        inputs["timestep"] = inputs["timestep"].reshape(-1, 1)  # the config's dims [1] per item
        tensors = []
        for name, array in inputs.items():
            tensors.append(grpcclient.InferInput(name, list(array.shape), "FP32"))
            tensors[-1].set_data_from_numpy(array)
        noise = client.infer(EXPERTS[0], tensors).as_numpy("noise_pred")
    assert noise.shape == inputs["hidden_states"].shape
    compiled = _events(with_artifacts, "expert_compiled", offset)
    assert [tuple(e["shape"]) for e in compiled] == [inputs["hidden_states"].shape]
    assert compiled[0]["cache_misses"] == 1  # a new graph, made now
    shape = list(inputs["hidden_states"].shape)
    _wait_for_log(with_artifacts, f"{EXPERTS[0]}: compiled 1 graph(s) for hidden_states {shape}")
