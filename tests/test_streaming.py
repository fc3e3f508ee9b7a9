"""Long requests: per-step progress streaming, cancellation, concurrency and MP4 output, on a real tritonserver."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from clients import grpc_client, http_client
from wan22_triton.request.video import read_mp4

from .conftest import psnr

REQUEST = dict(prompt="a paper boat on a stream", num_frames=9, height=32, width=48, num_inference_steps=6, seed=21)


def test_stream_sends_one_progress_per_step_then_the_video(torch_server):
    progress = []
    out = grpc_client.generate_stream(torch_server.grpc_url, REQUEST, progress.append)
    assert [p["step"] for p in progress] == list(range(1, REQUEST["num_inference_steps"] + 1))
    assert all(p["total"] == REQUEST["num_inference_steps"] for p in progress)
    elapsed = [p["elapsed_s"] for p in progress]
    assert elapsed == sorted(elapsed)
    # The progress names each step's expert as the unary model routes it, and the video is the same.
    solo = grpc_client.generate(torch_server.grpc_url, {**REQUEST})
    assert np.array_equal(out["video"], solo["video"])
    experts = [p["expert"] for p in progress]
    assert experts[0] == "transformer_high_noise" and experts[-1] == "transformer_low_noise"
    assert experts == sorted(experts)  # one switch, high -> low


def test_cancel_mid_generation_then_serve_normally(torch_server):
    log = torch_server.log_file
    before = log.read_text().count("request cancelled by the client")
    with pytest.raises(InferenceServerException) as err:
        grpc_client.generate_stream(torch_server.grpc_url, {**REQUEST, "num_inference_steps": 45}, cancel_after_steps=2)
    assert err.value.status() == "StatusCode.CANCELLED"
    # The server stopped between steps (not after finishing): its log records the cancellation.
    deadline = time.monotonic() + 30
    while log.read_text().count("request cancelled by the client") == before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert log.read_text().count("request cancelled by the client") == before + 1
    out = grpc_client.generate(torch_server.grpc_url, REQUEST)
    assert out["video"].shape == (9, 32, 48, 3)


def test_concurrent_requests_equal_their_solo_results(torch_server):
    requests = [{**REQUEST, "seed": seed, "num_inference_steps": 3} for seed in (1, 2, 3, 4)]
    solo = [grpc_client.generate(torch_server.grpc_url, r)["video"] for r in requests]
    with ThreadPoolExecutor(max_workers=4) as pool:  # more requests in flight than orchestrator instances (2)
        together = list(pool.map(lambda r: grpc_client.generate(torch_server.grpc_url, r)["video"], requests))
    for a, b in zip(solo, together):
        assert np.array_equal(a, b)
    assert not np.array_equal(solo[0], solo[1])


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_mp4_output_matches_raw_frames(torch_server, tmp_path, protocol):
    client, url = (grpc_client, torch_server.grpc_url) if protocol == "grpc" else (http_client, torch_server.http_url)
    raw = client.generate(url, REQUEST)["video"]
    encoded = client.generate(url, {**REQUEST, "output_format": "mp4"})
    assert "video" not in encoded
    path = tmp_path / "server.mp4"
    path.write_bytes(encoded["video_mp4"])
    frames, fps = read_mp4(path)
    assert frames.shape == raw.shape and fps == 16.0
    assert len(encoded["video_mp4"]) < raw.nbytes
    assert psnr(frames, raw) >= 25.0  # lossy H.264 of noise-like tiny frames


def test_unknown_output_format_is_invalid_arg(torch_server):
    with pytest.raises(InferenceServerException) as err:
        grpc_client.generate(torch_server.grpc_url, {**REQUEST, "output_format": "gif"})
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT" and "output_format" in err.value.message()
