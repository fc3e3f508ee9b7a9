"""Generation metrics on a real tritonserver's /metrics (wan22_triton.operations.metrics): counts and labels after real
requests that succeed, are invalid and are cancelled."""

from __future__ import annotations

import re
import time
import urllib.request
from collections import Counter

import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from clients import grpc_client

REQUEST = {"prompt": "x", "num_frames": 5, "height": 32, "width": 48, "num_inference_steps": 3, "seed": 3}
SAMPLE = re.compile(r'^(wan22_\w+)\{([^}]*)\} (\S+)$')


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    """Every wan22_* sample: (name, its labels) -> value."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if match:
            labels = frozenset(re.findall(r'(\w+)="([^"]*)"', match.group(2)))
            samples[(match.group(1), labels)] = float(match.group(3))
    return samples


def delta(before: dict, after: dict, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    return after.get(key, 0.0) - before.get(key, 0.0)


def _step_experts(url: str) -> list[bytes]:
    """An ok request to wan22_t2v; which expert ran each step."""
    with grpcclient.InferenceServerClient(url) as client:
        outputs = [grpcclient.InferRequestedOutput("step_experts")]
        result = client.infer("wan22_t2v", grpc_client.infer_inputs(REQUEST), outputs=outputs)
    return list(result.as_numpy("step_experts"))


def test_generation_metrics_count_outcomes_stages_and_steps(torch_server):
    url = torch_server.metrics_url
    before = scrape(url)
    assert before[("wan22_active_generations", frozenset({("model", "wan22_t2v")}))] == 0
    steps = Counter(e.decode() for e in _step_experts(torch_server.grpc_url))
    with pytest.raises(InferenceServerException):
        grpc_client.generate(torch_server.grpc_url, {**REQUEST, "num_frames": 6})  # not 4k+1: INVALID_ARG
    with pytest.raises(InferenceServerException):
        grpc_client.generate_stream(torch_server.grpc_url, {**REQUEST, "num_inference_steps": 45}, cancel_after_steps=2)
    deadline = time.monotonic() + 30  # the cancelled request ends at its next step, after the client's error
    while time.monotonic() < deadline:
        after = scrape(url)
        if delta(before, after, "wan22_requests_total", model="wan22_t2v_stream", outcome="cancelled") >= 1:
            break
        time.sleep(0.2)

    t2v = {"model": "wan22_t2v"}
    assert delta(before, after, "wan22_requests_total", **t2v, outcome="ok") == 1
    assert delta(before, after, "wan22_requests_total", **t2v, outcome="invalid") == 1
    assert delta(before, after, "wan22_requests_total", **t2v, outcome="failed") == 0
    assert delta(before, after, "wan22_requests_total", model="wan22_t2v_stream", outcome="cancelled") == 1
    assert delta(before, after, "wan22_request_seconds_total", **t2v) > 0
    for stage in ("text_encoder", "denoise", "vae_decoder"):
        assert delta(before, after, "wan22_stage_seconds_total", **t2v, stage=stage) > 0, stage
    # One expert call per step, counted under the expert that ran it (the served request's own record).
    counted = {e: delta(before, after, "wan22_denoise_steps_total", **t2v, expert=e)
               for e in ("transformer_high_noise", "transformer_low_noise")}
    assert sum(counted.values()) == REQUEST["num_inference_steps"] == sum(steps.values())
    assert counted == {e: steps.get(e, 0) for e in counted}
    for expert, count in counted.items():
        assert (delta(before, after, "wan22_denoise_step_seconds_total", **t2v, expert=expert) > 0) == (count > 0)
    assert after[("wan22_active_generations", frozenset(t2v.items()))] == 0
