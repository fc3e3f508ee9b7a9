"""Generation metrics on a real tritonserver's /metrics (wan22_triton.operations.metrics): each counted exactly
against what the requests themselves report (their stage seconds, their step experts), the in-flight gauge seen
at 1 in the middle of a request, and every outcome (the `failed` one in test_recovery.py, where a component dies)."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from clients import grpc_client
from wan22_triton.components.expert import TRANSFORMER_HIGH_NOISE, TRANSFORMER_LOW_NOISE
from wan22_triton.components.orchestrator import ORCHESTRATOR, ORCHESTRATOR_STREAM, STAGE_SECONDS, STEP_EXPERTS

from .observed import delta, scrape, value, wait_for_outcome

REQUEST = {"prompt": "x", "num_frames": 5, "height": 32, "width": 48, "num_inference_steps": 3, "seed": 3}
EXPERTS = (TRANSFORMER_HIGH_NOISE, TRANSFORMER_LOW_NOISE)


def _generate(url: str, values: dict) -> tuple[list[str], dict[str, float]]:
    """An ok request to wan22_t2v: which expert ran each step, and its own stage seconds."""
    with grpcclient.InferenceServerClient(url) as client:
        outputs = [grpcclient.InferRequestedOutput(n) for n in (STEP_EXPERTS, STAGE_SECONDS)]
        result = client.infer(ORCHESTRATOR, grpc_client.infer_inputs(values), outputs=outputs)
    return [e.decode() for e in result.as_numpy(STEP_EXPERTS)], json.loads(result.as_numpy(STAGE_SECONDS)[0])


def test_generation_metrics_count_outcomes_stages_and_steps(torch_server):
    url, t2v = torch_server.metrics_url, {"model": ORCHESTRATOR}
    before = scrape(url)
    assert value(before, "wan22_active_generations", **t2v) == 0
    experts, stages = _generate(torch_server.grpc_url, REQUEST)
    mp4_experts, mp4_stages = _generate(torch_server.grpc_url, {**REQUEST, "output_format": "mp4", "seed": 4})
    with pytest.raises(InferenceServerException):
        grpc_client.generate(torch_server.grpc_url, {**REQUEST, "num_frames": 6})  # not 4k+1: INVALID_ARG
    after = scrape(url)

    assert delta(before, after, "wan22_requests_total", **t2v, outcome="ok") == 2
    assert delta(before, after, "wan22_requests_total", **t2v, outcome="invalid") == 1
    assert delta(before, after, "wan22_requests_total", **t2v, outcome="failed") == 0
    assert delta(before, after, "wan22_requests_total", **t2v, outcome="cancelled") == 0
    # Each stage's seconds are the sum of what the two responses reported (encode_mp4: the MP4 request's alone).
    assert "encode_mp4" in mp4_stages and "encode_mp4" not in stages
    for stage in set(stages) | set(mp4_stages):
        counted = delta(before, after, "wan22_stage_seconds_total", **t2v, stage=stage)
        assert counted == pytest.approx(stages.get(stage, 0) + mp4_stages.get(stage, 0), rel=1e-4, abs=1e-6), stage
    # The request seconds cover its stages (validation to response).
    assert delta(before, after, "wan22_request_seconds_total", **t2v) >= sum(stages.values()) + sum(mp4_stages.values())
    # One expert call per step, counted under the expert the responses name.
    served = Counter(experts + mp4_experts)
    assert len(experts) == len(mp4_experts) == REQUEST["num_inference_steps"]
    assert {e: delta(before, after, "wan22_denoise_steps_total", **t2v, expert=e) for e in EXPERTS} == \
        {e: served.get(e, 0) for e in EXPERTS}
    for expert in EXPERTS:
        seconds = delta(before, after, "wan22_denoise_step_seconds_total", **t2v, expert=expert)
        assert (seconds > 0) == (served.get(expert, 0) > 0)
    assert value(after, "wan22_active_generations", **t2v) == 0


def test_the_gauge_counts_a_request_while_it_runs_and_the_cancel(torch_server):
    url, stream = torch_server.metrics_url, {"model": ORCHESTRATOR_STREAM}
    before = scrape(url)
    during: list[float] = []

    def on_progress(_: dict) -> None:  # the second step is running: the request is in the orchestrator
        if not during:
            during.append(value(scrape(url), "wan22_active_generations", **stream))

    with pytest.raises(InferenceServerException):
        grpc_client.generate_stream(torch_server.grpc_url, {**REQUEST, "num_inference_steps": 45}, on_progress,
                                    cancel_after_steps=2)
    after = wait_for_outcome(url, before, ORCHESTRATOR_STREAM, "cancelled")
    assert during == [1]
    assert delta(before, after, "wan22_requests_total", **stream, outcome="cancelled") == 1
    assert delta(before, after, "wan22_requests_total", **stream, outcome="ok") == 0
    assert value(after, "wan22_active_generations", **stream) == 0
