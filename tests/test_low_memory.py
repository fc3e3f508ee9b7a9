"""Low-memory mode (export `low_memory`): experts and text encoder in host memory, swapped in when they work; and
`text_encoder_offload`, the text encoder alone so.

Against a real tritonserver on the CPU (the weight movement is the same code as on a GPU, with a second host
buffer standing in for the device one): the video equals the normal mode's for the same seed, and the
orchestrator releases each expert exactly at the switch (high -> low) and after the last step, whatever the
request (normal, cancelled, concurrent), as the server's events (wan22_triton.operations.events) record it. The plain-Python
part of the switch and the events file are checked without a server.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from clients import grpc_client
from export.options import ExportOptions
from wan22_triton.operations import events
from wan22_triton.memory.offload import ExpertSwitch

from .conftest import TEST_LIMITS, TORCH

HIGH, LOW = "transformer_high_noise", "transformer_low_noise"
REQUEST = dict(prompt="a paper boat on a stream", num_frames=9, height=32, width=48, num_inference_steps=6, seed=21)


@pytest.fixture(scope="module")
def low_memory_server(served):
    return served(replace(TORCH, low_memory=True))


def _events_since(server, offset: int, until=lambda _: True, timeout: float = 10.0) -> list[dict]:
    """The server's events after byte `offset`, once `until(events)` holds (or `timeout` passed). Every model writes
    its events before it answers, so a request's are in when its response is; a cancelled request's clean-up is not."""
    deadline = time.monotonic() + timeout
    while True:
        found = events.read_events(server.events_file, offset)
        if until(found) or time.monotonic() > deadline:
            return found


def _weight_moves(found: list[dict], model: str) -> list[str]:
    """One model's loads and releases, in order."""
    kinds = {"weights_loaded": "load", "weights_released": "release"}
    return [kinds[e["event"]] for e in found if e["event"] in kinds and e["model"] == model]


def _expert_releases(found: list[dict]) -> list[dict]:
    return [e for e in found if e["event"] == "expert_released"]


def test_export_writes_the_offload_contract(low_memory_server):
    from tritonclient.grpc import model_config_pb2 as mc

    from export.model_config import parse_pbtxt, read_manifest

    repo = Path(low_memory_server.model_repository)
    for model in (HIGH, LOW):
        config = parse_pbtxt((repo / model / "config.pbtxt").read_text())
        assert read_manifest(repo / model).low_memory
        inputs = {i.name: i for i in config.input}
        assert set(inputs) == {"hidden_states", "timestep", "encoder_hidden_states", "release"}
        assert all(i.optional for i in inputs.values())
        assert inputs["release"].data_type == mc.DataType.Value("TYPE_BOOL")
    assert read_manifest(repo / "text_encoder").low_memory and read_manifest(repo / "wan22_t2v").low_memory


def test_normal_export_is_unchanged(tiny_checkpoint, tmp_path):
    from export.model_config import parse_pbtxt, read_manifest
    from export.repository import ExportOptions, export_repository

    export_repository(tiny_checkpoint, tmp_path, ExportOptions(engine="torch"), log=lambda _: None)
    config = parse_pbtxt((tmp_path / HIGH / "config.pbtxt").read_text())
    # the data inputs required; no `release` (the optional mark of an expert's last step stays: workspace release)
    assert [i.name for i in config.input] == ["hidden_states", "timestep", "encoder_hidden_states",
                                              "release_workspace"]
    assert [i.name for i in config.input if i.optional] == ["release_workspace"]
    assert not read_manifest(tmp_path / HIGH).low_memory
    assert not read_manifest(tmp_path / "wan22_t2v").low_memory


def test_low_memory_needs_the_torch_engine(tiny_checkpoint, tmp_path):
    from export.repository import ExportOptions, export_repository

    with pytest.raises(ValueError, match="low_memory needs engine 'torch'"):
        export_repository(tiny_checkpoint, tmp_path, ExportOptions(engine="onnx", low_memory=True), log=lambda _: None)


def test_same_video_as_normal_mode_and_release_at_the_switch(low_memory_server, torch_server):
    offset = events.end_offset(low_memory_server.events_file)
    out = grpc_client.generate(low_memory_server.grpc_url, REQUEST)
    normal = grpc_client.generate(torch_server.grpc_url, REQUEST)
    assert np.array_equal(out["video"], normal["video"])

    found = _events_since(low_memory_server, offset)
    # The orchestrator released the high-noise expert after its last step, before the first low-noise step, and
    # the low-noise expert after the last step (so the VAE and the next request find neither on the device).
    experts = _step_experts(low_memory_server, REQUEST)
    switch = experts.index(LOW)
    assert 0 < switch < len(experts) and experts[switch:] == [LOW] * (len(experts) - switch)
    released = [(e["expert"], e["after_step"], e["when"]) for e in _expert_releases(found)]
    assert released[:2] == [
        (HIGH, switch, f"before step {switch + 1} ({LOW})"),
        (LOW, len(experts), "after the denoising"),
    ]
    # Each model moved its weights once each way: load on first work, release when told (text encoder: per request).
    for model in (HIGH, LOW, "text_encoder"):
        assert _weight_moves(found, model) == ["load", "release"], model


def _step_experts(server, request: dict) -> list[str]:
    """step_experts of a request (the clients return video, seed and stage times only)."""
    inputs = []
    for name, value in request.items():
        kind = {str: "BYTES", int: "INT64" if name == "seed" else "INT32", float: "FP32"}[type(value)]
        array = np.array([value.encode() if isinstance(value, str) else value],
                         dtype={"BYTES": object, "INT64": np.int64, "INT32": np.int32, "FP32": np.float32}[kind])
        tensor = grpcclient.InferInput(name, [1], kind)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        result = client.infer("wan22_t2v", inputs, outputs=[grpcclient.InferRequestedOutput("step_experts")])
    return [e.decode() for e in result.as_numpy("step_experts")]


def test_release_request_alone_and_missing_inputs(low_memory_server):
    url = low_memory_server.grpc_url
    release = grpcclient.InferInput("release", [1, 1], "BOOL")
    release.set_data_from_numpy(np.ones((1, 1), dtype=bool))
    with grpcclient.InferenceServerClient(url) as client:
        result = client.infer(HIGH, [release])  # not loaded: a no-op, answered without outputs
        assert result.get_response().outputs == []
        timestep = grpcclient.InferInput("timestep", [1, 1], "FP32")
        timestep.set_data_from_numpy(np.ones((1, 1), dtype=np.float32))
        with pytest.raises(InferenceServerException) as err:
            client.infer(HIGH, [timestep])
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT" and "hidden_states" in err.value.message()


def test_cancelled_request_releases_its_expert_and_the_next_is_unchanged(low_memory_server):
    solo = grpc_client.generate(low_memory_server.grpc_url, REQUEST)["video"]
    experts = _step_experts(low_memory_server, {**REQUEST, "num_inference_steps": 40})
    cancel_after = experts.index(LOW) + 2  # mid-way through the low-noise steps
    offset = events.end_offset(low_memory_server.events_file)
    with pytest.raises(InferenceServerException) as err:
        grpc_client.generate_stream(low_memory_server.grpc_url, {**REQUEST, "num_inference_steps": 40},
                                    cancel_after_steps=cancel_after)
    assert err.value.status() == "StatusCode.CANCELLED"
    # The orchestrator notices the cancellation at its next step and releases the expert on its way out.
    found = _events_since(low_memory_server, offset, timeout=30,
                          until=lambda found: any(e["when"] == "request stopped" for e in _expert_releases(found)))
    released = [(e["expert"], e["when"]) for e in _expert_releases(found)]
    assert released == [(HIGH, f"before step {experts.index(LOW) + 1} ({LOW})"), (LOW, "request stopped")]
    assert _weight_moves(found, LOW)[-1] == "release"
    assert np.array_equal(grpc_client.generate(low_memory_server.grpc_url, REQUEST)["video"], solo)


def test_concurrent_requests_take_turns_and_equal_their_solo_results(low_memory_server):
    requests = [{**REQUEST, "seed": seed, "num_inference_steps": 3} for seed in (1, 2, 3)]
    solo = [grpc_client.generate(low_memory_server.grpc_url, r)["video"] for r in requests]
    offset = events.end_offset(low_memory_server.events_file)
    with ThreadPoolExecutor(max_workers=3) as pool:  # wan22_t2v has 2 instances: at least two run side by side
        together = list(pool.map(lambda r: grpc_client.generate(low_memory_server.grpc_url, r)["video"], requests))
    for a, b in zip(solo, together):
        assert np.array_equal(a, b)
    found = _events_since(low_memory_server, offset)
    # One generation at a time (both instances were busy: one waited for the other's lock), and in each expert's
    # own process one load and one release per request.
    assert any(e["seconds"] > 0.001 for e in found if e["event"] == "generation_lock_waited")
    for model in (HIGH, LOW):
        moves = _weight_moves(found, model)
        assert moves == ["load", "release"] * 3, (model, moves)


def _hold_lock(path: str, held, seconds: float) -> None:
    from wan22_triton.operations.locks import InterProcessLock

    with InterProcessLock(path):
        held.set()
        time.sleep(seconds)


@pytest.mark.slow
def test_generation_lock_serialises_processes_and_gives_up_on_stop(tmp_path):
    import multiprocessing

    from wan22_triton.operations.locks import InterProcessLock

    ctx = multiprocessing.get_context("spawn")
    held = ctx.Event()
    child = ctx.Process(target=_hold_lock, args=(str(tmp_path / "x.lock"), held, 1.0))
    child.start()
    try:
        assert held.wait(30)
        lock = InterProcessLock(tmp_path / "x.lock")
        with pytest.raises(RuntimeError, match="stopped while waiting"):
            lock.acquire(should_stop=lambda: True)
        waited = lock.acquire()
        assert waited > 0.3
        lock.release()
    finally:
        child.join(30)


# --------------------------------------------------------------------------- the switch as plain Python


def test_expert_switch_releases_at_the_boundary_and_after_the_last_step():
    calls: list[str] = []
    switch = ExpertSwitch(calls.append, keep=HIGH)
    for i, expert in enumerate([HIGH, HIGH, LOW, LOW]):
        switch.before_step(expert, i)
        switch.after_step(i + 1)
        if i == 1:
            assert calls == []
        if i == 2:
            assert calls == [HIGH]
    switch.settle()
    assert calls == [HIGH, LOW] and switch.released == [(HIGH, 2), (LOW, 4)]
    switch.settle()  # idempotent (the orchestrator's finally)
    assert calls == [HIGH, LOW]


def test_expert_switch_keeps_the_first_expert_and_frees_it_for_another():
    calls: list[str] = []
    only_high = ExpertSwitch(calls.append, keep=HIGH)
    only_high.before_step(HIGH, 0)
    only_high.settle()
    assert calls == []  # the next request starts with it
    starts_low = ExpertSwitch(calls.append, keep=HIGH)
    starts_low.before_step(LOW, 0)  # HIGH may still be resident from the last request
    assert calls == [HIGH]
    starts_low.settle()
    assert calls == [HIGH, LOW]


def _emit_many(count: int, size: int) -> None:
    for i in range(count):
        events.emit("probe", index=i, payload="x" * size)


def test_events_of_several_processes_stay_whole_lines(tmp_path, monkeypatch):
    import multiprocessing

    path = tmp_path / "events.jsonl"
    monkeypatch.delenv(events.EVENTS_FILE_ENV, raising=False)
    events.emit("nowhere")  # unset: nothing written
    monkeypatch.setenv(events.EVENTS_FILE_ENV, str(path))
    events.emit("first", value=1)
    offset = events.end_offset(path)
    writers = [multiprocessing.get_context("fork").Process(target=_emit_many, args=(200, 8000)) for _ in range(4)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(60)
    found = events.read_events(path, offset)  # lines longer than a pipe's atomic write, from 4 processes at once
    assert len(found) == 800 and len({e["pid"] for e in found}) == 4
    for pid in {e["pid"] for e in found}:
        assert [e["index"] for e in found if e["pid"] == pid] == list(range(200))
    [first] = events.read_events(path, 0)[:1]
    assert first["event"] == "first" and first["value"] == 1 and first["pid"] > 0 and first["time"] > 0
    assert events.read_events(tmp_path / "missing.jsonl") == [] and events.end_offset(tmp_path / "missing.jsonl") == 0


def test_a_line_still_being_written_is_read_once_whole(tmp_path):
    # A reader can see part of another process's write: what it returns are whole events only.
    path = tmp_path / "events.jsonl"
    whole = json.dumps({"event": "weights_loaded", "model": HIGH}) + "\n"
    partial = json.dumps({"event": "weights_released", "model": HIGH, "seconds": 0.5}) + "\n"
    path.write_text(whole + partial[:20])
    assert [e["event"] for e in events.read_events(path)] == ["weights_loaded"]
    path.write_text(whole + partial)
    assert [e["event"] for e in events.read_events(path)] == ["weights_loaded", "weights_released"]


def test_text_encoder_offload_alone_moves_only_its_weights_and_keeps_the_video(served, torch_server):
    """`--text-encoder-offload`: the text encoder as in low-memory mode, the experts as normal."""
    from export.model_config import read_manifest

    server = served(ExportOptions(limits=TEST_LIMITS, text_encoder_offload=True))
    repo = server.model_repository
    assert read_manifest(repo / "text_encoder").low_memory
    assert not any(read_manifest(repo / m).low_memory for m in (HIGH, LOW, "vae_decoder", "wan22_t2v"))
    offset = events.end_offset(server.events_file)
    video = grpc_client.generate(server.grpc_url, REQUEST)["video"]
    found = _events_since(server, offset)
    assert np.array_equal(video, grpc_client.generate(torch_server.grpc_url, REQUEST)["video"])
    assert _weight_moves(found, "text_encoder") == ["load", "release"]  # around its one encode
    assert not _weight_moves(found, HIGH) and not _weight_moves(found, LOW) and not _expert_releases(found)


def test_text_encoder_offload_needs_the_torch_engine(tiny_checkpoint, tmp_path):
    from export.repository import ExportOptions, export_repository

    with pytest.raises(ValueError, match="text_encoder_offload needs engine 'torch'"):
        export_repository(tiny_checkpoint, tmp_path, ExportOptions(engine="onnx", text_encoder_offload=True),
                          log=lambda _: None)


def test_a_full_disk_drops_events_said_once_and_never_fails_the_caller(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv(events.EVENTS_FILE_ENV, "/dev/full")  # every write: ENOSPC
    for _ in range(3):
        events.emit("expert_forward", model="m")
    assert capfd.readouterr().err.count("events are dropped until it can") == 1
    good = tmp_path / "events.jsonl"
    monkeypatch.setenv(events.EVENTS_FILE_ENV, str(good))
    events.emit("expert_forward", model="m")
    assert [e["event"] for e in events.read_events(good)] == ["expert_forward"]
    monkeypatch.setenv(events.EVENTS_FILE_ENV, "/dev/full")
    events.emit("expert_forward", model="m")  # failing again after a success: said again
    assert capfd.readouterr().err.count("No space left on device") == 1
