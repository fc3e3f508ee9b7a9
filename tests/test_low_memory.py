"""Low-memory mode (export `low_memory`): experts and text encoder in host memory, swapped in when they work.

Against a real tritonserver on the CPU (the weight movement is the same code as on a GPU, with a second host
buffer standing in for the device one): the video equals the normal mode's for the same seed, and the
orchestrator releases each expert exactly at the switch (high -> low) and after the last step, whatever the
request (normal, cancelled, concurrent). The plain-Python part of the switch is checked without a server.
"""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from clients import grpc_client
from wan22_triton.pipeline import ExpertSwitch

from .conftest import ROOT

HIGH, LOW = "transformer_high_noise", "transformer_low_noise"
REQUEST = dict(prompt="a paper boat on a stream", num_frames=9, height=32, width=48, num_inference_steps=6, seed=21)
RELEASED = re.compile(r"low-memory: released (\S+) after step (\d+), ([^\"]*?), in [\d.]+s")
MODEL_EVENT = re.compile(r"offload (\S+): (load|release) #\d+")


@pytest.fixture(scope="module")
def low_memory_server(tmp_path_factory, tiny_checkpoint):
    from export.repository import ExportOptions, export_repository
    from wan22_triton.server import TritonServer

    repo = tmp_path_factory.mktemp("repo-low-memory")
    for model_py in (ROOT / "model_repository").glob("*/1/model.py"):
        target = repo / model_py.relative_to(ROOT / "model_repository")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(model_py.read_text())
    opts = ExportOptions(engine="torch", max_num_frames=33, max_size=256, max_inference_steps=50,
                         orchestrator_instances=2, low_memory=True)
    export_repository(tiny_checkpoint, repo, opts, log=lambda _: None)
    server = TritonServer(repo, log_file=repo / "tritonserver.log")
    server.start()
    yield server
    server.stop()


def _log_since(path: Path, offset: int, wait_for: int = 0, timeout: float = 10.0) -> str:
    """Server log text after `offset`; waits until it holds `wait_for` model load/release lines (they come from
    other processes and may land after the response)."""
    deadline = time.monotonic() + timeout
    while True:
        text = path.read_bytes()[offset:].decode(errors="replace")
        if len(MODEL_EVENT.findall(text)) >= wait_for or time.monotonic() > deadline:
            return text


def _events(text: str, model: str) -> list[str]:
    return [kind for name, kind in MODEL_EVENT.findall(text) if name == model]


def test_export_writes_the_offload_contract(low_memory_server):
    from tritonclient.grpc import model_config_pb2 as mc

    from export.model_config import parse_pbtxt

    repo = Path(low_memory_server.model_repository)
    for model in (HIGH, LOW):
        config = parse_pbtxt((repo / model / "config.pbtxt").read_text())
        assert config.parameters["offload"].string_value == "cpu"
        inputs = {i.name: i for i in config.input}
        assert set(inputs) == {"hidden_states", "timestep", "encoder_hidden_states", "release"}
        assert all(i.optional for i in inputs.values())
        assert inputs["release"].data_type == mc.DataType.Value("TYPE_BOOL")
    assert parse_pbtxt((repo / "text_encoder" / "config.pbtxt").read_text()).parameters["offload"].string_value == "cpu"
    assert parse_pbtxt((repo / "wan22_t2v" / "config.pbtxt").read_text()).parameters["low_memory"].string_value == "true"


def test_normal_export_is_unchanged(tiny_checkpoint, tmp_path):
    from export.model_config import parse_pbtxt
    from export.repository import ExportOptions, export_repository

    export_repository(tiny_checkpoint, tmp_path, ExportOptions(engine="torch"), log=lambda _: None)
    config = parse_pbtxt((tmp_path / HIGH / "config.pbtxt").read_text())
    assert [i.name for i in config.input] == ["hidden_states", "timestep", "encoder_hidden_states"]
    assert not any(i.optional for i in config.input) and "offload" not in config.parameters
    assert "low_memory" not in parse_pbtxt((tmp_path / "wan22_t2v" / "config.pbtxt").read_text()).parameters


def test_low_memory_needs_the_torch_engine(tiny_checkpoint, tmp_path):
    from export.repository import ExportOptions, export_repository

    with pytest.raises(ValueError, match="low_memory needs engine 'torch'"):
        export_repository(tiny_checkpoint, tmp_path, ExportOptions(engine="onnx", low_memory=True), log=lambda _: None)


def test_same_video_as_normal_mode_and_release_at_the_switch(low_memory_server, torch_server):
    log = low_memory_server.log_file
    offset = log.stat().st_size
    out = grpc_client.generate(low_memory_server.grpc_url, REQUEST)
    normal = grpc_client.generate(torch_server.grpc_url, REQUEST)
    assert np.array_equal(out["video"], normal["video"])

    text = _log_since(log, offset, wait_for=6)
    # The orchestrator released the high-noise expert after its last step, before the first low-noise step, and
    # the low-noise expert after the last step (so the VAE and the next request find neither on the device).
    experts = _step_experts(low_memory_server, REQUEST)
    switch = experts.index(LOW)
    assert 0 < switch < len(experts) and experts[switch:] == [LOW] * (len(experts) - switch)
    released = [(m.group(1), int(m.group(2)), m.group(3)) for m in RELEASED.finditer(text)]
    assert released[:2] == [
        (HIGH, switch, f"before step {switch + 1} ({LOW})"),
        (LOW, len(experts), "after the denoising"),
    ]
    # Each model moved its weights once each way: load on first work, release when told (text encoder: per request).
    for model in (HIGH, LOW, "text_encoder"):
        assert _events(text, model) == ["load", "release"], model


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
    log = low_memory_server.log_file
    solo = grpc_client.generate(low_memory_server.grpc_url, REQUEST)["video"]
    experts = _step_experts(low_memory_server, {**REQUEST, "num_inference_steps": 40})
    cancel_after = experts.index(LOW) + 2  # mid-way through the low-noise steps
    offset = log.stat().st_size
    with pytest.raises(InferenceServerException) as err:
        grpc_client.generate_stream(low_memory_server.grpc_url, {**REQUEST, "num_inference_steps": 40},
                                    cancel_after_steps=cancel_after)
    assert err.value.status() == "StatusCode.CANCELLED"
    deadline = time.monotonic() + 30
    while "request cancelled by the client" not in _log_since(log, offset) and time.monotonic() < deadline:
        time.sleep(0.2)
    text = _log_since(log, offset, wait_for=6)
    released = [(m.group(1), m.group(3)) for m in RELEASED.finditer(text)]
    assert released == [(HIGH, f"before step {experts.index(LOW) + 1} ({LOW})"), (LOW, "request stopped")]
    assert _events(text, LOW)[-1] == "release"
    assert np.array_equal(grpc_client.generate(low_memory_server.grpc_url, REQUEST)["video"], solo)


def test_concurrent_requests_take_turns_and_equal_their_solo_results(low_memory_server):
    requests = [{**REQUEST, "seed": seed, "num_inference_steps": 3} for seed in (1, 2, 3)]
    solo = [grpc_client.generate(low_memory_server.grpc_url, r)["video"] for r in requests]
    log = low_memory_server.log_file
    offset = log.stat().st_size
    with ThreadPoolExecutor(max_workers=3) as pool:  # wan22_t2v has 2 instances: at least two run side by side
        together = list(pool.map(lambda r: grpc_client.generate(low_memory_server.grpc_url, r)["video"], requests))
    for a, b in zip(solo, together):
        assert np.array_equal(a, b)
    text = _log_since(log, offset, wait_for=18)
    # One generation at a time (both instances were busy: one waited for the other's lock), and in each expert's
    # own log one load and one release per request.
    assert "low-memory: waited" in text
    for model in (HIGH, LOW):
        events = _events(text, model)
        assert events == ["load", "release"] * 3, (model, events)


def _hold_lock(path: str, held, seconds: float) -> None:
    from wan22_triton.offload import InterProcessLock

    with InterProcessLock(path):
        held.set()
        time.sleep(seconds)


def test_generation_lock_serialises_processes_and_gives_up_on_stop(tmp_path):
    import multiprocessing

    from wan22_triton.offload import InterProcessLock

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
