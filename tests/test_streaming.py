"""Long requests: per-step progress streaming, cancellation, concurrency and MP4 output, on a real tritonserver."""

from __future__ import annotations

import queue
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from clients import grpc_client, http_client
from clients.common import one_line_errors, request_arrays
from wan22_triton.checkpoint import read_checkpoint
from wan22_triton.components.expert import TRANSFORMER_HIGH_NOISE, TRANSFORMER_LOW_NOISE
from wan22_triton.components.orchestrator import ORCHESTRATOR, ORCHESTRATOR_STREAM
from wan22_triton.operations import events
from wan22_triton.request.video import read_mp4

from .conftest import TORCH, psnr
from .observed import delta, scrape, steps_run, value, wait_for_forwards, wait_for_outcome

REQUEST = dict(prompt="a paper boat on a stream", num_frames=9, height=32, width=48, num_inference_steps=6, seed=21)
LONG_STEPS = 45  # a request cancelled after its first steps: the server must stop long before these


def test_stream_sends_one_progress_per_step_then_the_video(torch_server, tiny_checkpoint):
    progress = []
    out = grpc_client.generate_stream(torch_server.grpc_url, REQUEST, progress.append)
    assert [p["step"] for p in progress] == list(range(1, REQUEST["num_inference_steps"] + 1))
    assert all(p["total"] == REQUEST["num_inference_steps"] for p in progress)
    elapsed = [p["elapsed_s"] for p in progress]
    assert elapsed == sorted(elapsed)
    # The progress names each step's expert as the unary model routes it, and the video is the same.
    solo = grpc_client.generate(torch_server.grpc_url, {**REQUEST})
    assert np.array_equal(out["video"], solo["video"])
    # Each step's expert is the one its timestep belongs to (Wan2.2: at or above boundary_ratio x the training
    # timesteps, the high-noise expert), and both run.
    info = read_checkpoint(tiny_checkpoint)
    boundary = info.boundary_ratio * info.num_train_timesteps
    experts = [p["expert"] for p in progress]
    assert experts == [TRANSFORMER_HIGH_NOISE if p["timestep"] >= boundary else TRANSFORMER_LOW_NOISE for p in progress]
    assert set(experts) == {TRANSFORMER_HIGH_NOISE, TRANSFORMER_LOW_NOISE}


def _assert_stopped_between_steps(server, before: dict, model: str) -> None:
    """The server counted the request cancelled and ran only a few of its LONG_STEPS: it stopped between steps,
    not after all of them (a server that ignores the cancel, or checks it only before the decode, runs every one)."""
    after = wait_for_outcome(server.metrics_url, before, model, "cancelled")
    assert delta(before, after, "wan22_requests_total", model=model, outcome="cancelled") == 1
    assert delta(before, after, "wan22_requests_total", model=model, outcome="ok") == 0
    assert 2 <= steps_run(before, after, model) <= LONG_STEPS // 3


def test_cancel_mid_generation_then_serve_normally(torch_server):
    before = scrape(torch_server.metrics_url)
    with pytest.raises(InferenceServerException) as err:
        grpc_client.generate_stream(torch_server.grpc_url, {**REQUEST, "num_inference_steps": LONG_STEPS},
                                    cancel_after_steps=2)
    assert err.value.status() == "StatusCode.CANCELLED"
    _assert_stopped_between_steps(torch_server, before, ORCHESTRATOR_STREAM)
    out = grpc_client.generate(torch_server.grpc_url, REQUEST)
    assert out["video"].shape == (9, 32, 48, 3)


def test_cancelled_unary_request_stops_between_steps(torch_server):
    before, offset = scrape(torch_server.metrics_url), events.end_offset(torch_server.events_file)
    done: queue.Queue = queue.Queue()
    with grpcclient.InferenceServerClient(torch_server.grpc_url) as client:
        call = client.async_infer(ORCHESTRATOR, grpc_client.infer_inputs({**REQUEST, "num_inference_steps": LONG_STEPS}),
                                  callback=lambda result, error: done.put(error))
        wait_for_forwards(torch_server.events_file, offset, 2)
        call.cancel()
        error = done.get(timeout=60)
    assert error is not None and error.status() == "StatusCode.CANCELLED"
    _assert_stopped_between_steps(torch_server, before, ORCHESTRATOR)


def test_http_client_that_leaves_stops_the_generation(torch_server):
    """The orchestrator's own abandonment path: the HTTP guard marks the request when its client goes away, and the
    orchestrator stops at its next step (Triton 2.51 alone would run it to the end: test_http_guard.py)."""
    inputs = []
    for name, (dtype, array) in request_arrays({**REQUEST, "num_inference_steps": LONG_STEPS}).items():
        inputs.append(httpclient.InferInput(name, list(array.shape), dtype))
        inputs[-1].set_data_from_numpy(array, binary_data=True)
    body, json_size = httpclient.InferenceServerClient.generate_request_body(inputs)
    before, offset = scrape(torch_server.metrics_url), events.end_offset(torch_server.events_file)
    host, port = torch_server.http_url.rsplit(":", 1)
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(f"POST /v2/models/{ORCHESTRATOR}/infer HTTP/1.1\r\nHost: {torch_server.http_url}\r\n"
                     f"Content-Type: application/octet-stream\r\nInference-Header-Content-Length: {json_size}\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        wait_for_forwards(torch_server.events_file, offset, 2)
    _assert_stopped_between_steps(torch_server, before, ORCHESTRATOR)


def test_concurrent_requests_equal_their_solo_results(torch_server):
    requests = [{**REQUEST, "seed": seed, "num_inference_steps": 3} for seed in (1, 2, 3, 4)]
    solo = [grpc_client.generate(torch_server.grpc_url, r)["video"] for r in requests]
    with ThreadPoolExecutor(max_workers=4) as pool:  # more requests in flight than orchestrator instances (2)
        together = list(pool.map(lambda r: grpc_client.generate(torch_server.grpc_url, r)["video"], requests))
    for a, b in zip(solo, together):
        assert np.array_equal(a, b)
    assert not np.array_equal(solo[0], solo[1])


def test_a_request_past_the_queue_bound_is_refused_at_once_and_the_server_serves_on(torch_server, capsys):
    running, bound = TORCH.orchestrator_instances, TORCH.max_queue_size  # in the instances, then waiting
    slow = grpc_client.infer_inputs({**REQUEST, "num_frames": 33, "height": 128, "width": 128,
                                     "num_inference_steps": LONG_STEPS})
    answers: queue.Queue = queue.Queue()
    with grpcclient.InferenceServerClient(torch_server.grpc_url) as client:
        calls = [client.async_infer(ORCHESTRATOR, slow, callback=lambda result, error: answers.put(error))
                 for _ in range(running + bound + 1)]
        try:
            first = answers.get(timeout=10)  # the one past the bound, long before any other could end
        finally:
            for call in calls:
                call.cancel()
    assert first is not None and first.status() == "StatusCode.UNAVAILABLE", first
    assert "Exceeds maximum queue size" in first.message()
    with pytest.raises(SystemExit) as exited, one_line_errors(torch_server.grpc_url, "gRPC", None):
        raise first  # as the clients say it: busy, not unreachable
    assert exited.value.code == 1
    assert capsys.readouterr().err == (f"error: the server at {torch_server.grpc_url} is busy: its queue of waiting "
                                       "requests is full (the export's --max-queue-size); try again later\n")
    _wait_until_idle(torch_server, ORCHESTRATOR)  # the cancelled ones gone: the next test starts with room
    assert grpc_client.generate(torch_server.grpc_url, REQUEST)["video"].shape == (9, 32, 48, 3)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_mp4_output_matches_raw_frames(torch_server, tiny_checkpoint, tmp_path, protocol):
    client, url = (grpc_client, torch_server.grpc_url) if protocol == "grpc" else (http_client, torch_server.http_url)
    raw = client.generate(url, REQUEST)["video"]
    encoded = client.generate(url, {**REQUEST, "output_format": "mp4"})
    assert "video" not in encoded
    path = tmp_path / "server.mp4"
    path.write_bytes(encoded["video_mp4"])
    frames, fps = read_mp4(path)
    assert frames.shape == raw.shape and fps == read_checkpoint(tiny_checkpoint).generation.fps
    assert len(encoded["video_mp4"]) < raw.nbytes
    assert psnr(frames, raw) >= 25.0  # lossy H.264 of noise-like tiny frames


def test_unknown_output_format_is_invalid_arg(torch_server):
    with pytest.raises(InferenceServerException) as err:
        grpc_client.generate(torch_server.grpc_url, {**REQUEST, "output_format": "gif"})
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT" and "output_format" in err.value.message()


def _wait_until_idle(server, model: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(server.metrics_url)
        busy = (value(samples, "nv_inference_pending_request_count", model=model, version="1")
                + value(samples, "wan22_active_generations", model=model))
        if not busy:
            return
        assert time.monotonic() < deadline, f"{model} still busy after {timeout} s"
        time.sleep(0.1)
