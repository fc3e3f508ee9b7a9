"""The GPU benchmark's whole flow on the CPU, with the tiny architecture: baseline (diffusers WanPipeline), export,
a real tritonserver, warm-up, parity probes, measured requests through one reused shared-memory region, results.

What runs on the GPU is this same code at full size, so here it must produce a coherent result: the served
video matching the baseline's, each step routed to the expert its timestep belongs to, the overhead of every
measured request, and the files docs/performance.md points at.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytestmark = [pytest.mark.gpu_flow, pytest.mark.server]


@pytest.fixture(scope="module")
def benchmark(tmp_path_factory):
    from perf.gpu_benchmark.__main__ import main

    out, work = tmp_path_factory.mktemp("bench-out"), tmp_path_factory.mktemp("bench-work")
    main([
        "--device", "cpu", "--preset", "tiny", "--height", "32", "--width", "48", "--num-frames", "9",
        "--steps", "8", "--variants", "bf16,bf16_cfg2_ulysses2", "--measured-requests", "2", "--server-arg=--log-verbose=0",
        "--out-dir", str(out), "--workdir", str(work),
    ])
    return json.loads((out / "results.json").read_text()), out, work


def test_benchmark_parity_and_routing(benchmark):
    from diffusers import UniPCMultistepScheduler

    results, _, work = benchmark
    variant = results["variants"]["bf16"]
    assert results["baseline"]["status"] == "ok" and variant["status"] == "ok"
    # Same random weights on both sides: the served expert's noise prediction is the baseline's.
    assert variant["parity"]["noise_pred_rel_l2"] < 1e-5 and variant["parity"]["prompt_embeds_cosine"] > 0.99999
    assert variant["parity"]["psnr_db"] > 40 and variant["parity"]["ssim"] > 0.99
    # Steps per expert: the timesteps at or above boundary_ratio * num_train_timesteps go to the high-noise one.
    checkpoint = work / "checkpoint"
    index = json.loads((checkpoint / "model_index.json").read_text())
    scheduler = UniPCMultistepScheduler.from_pretrained(checkpoint / "scheduler", flow_shift=3.0)
    scheduler.set_timesteps(8)
    boundary = index["boundary_ratio"] * scheduler.config.num_train_timesteps
    high = sum(float(t) >= boundary for t in scheduler.timesteps)
    assert 0 < high < 8
    assert variant["steps"] == {"transformer_high_noise": high, "transformer_low_noise": 8 - high}
    assert results["baseline"]["steps"] == variant["steps"]


def test_benchmark_measures_a_parallel_plan_against_its_tier_on_one_device(benchmark):
    from .conftest import psnr

    results, out, work = benchmark
    one, parallel = results["variants"]["bf16"], results["variants"]["bf16_cfg2_ulysses2"]
    assert parallel["status"] == "ok" and parallel["gpus"] == 4
    assert parallel["steps"] == one["steps"]  # two CFG executions a step counted as one step
    assert parallel["parity"]["noise_pred_rel_l2"] < 1e-5  # the Ulysses forward on the baseline's inputs
    assert parallel["parity"]["psnr_db"] > 40
    # The videos the two served: the plan's is the one-device tier's (CFG halves as batches of one: rounding only).
    videos = [np.load(work / f"video-{name}.npy") for name in ("bf16", "bf16_cfg2_ulysses2")]
    assert videos[0].shape == videos[1].shape and psnr(*videos) >= 40
    assert "cfg2_ulysses2 (4 GPUs)" in (out / "table.md").read_text()


def test_benchmark_reports_every_request_and_its_files(benchmark):
    results, out, _ = benchmark
    variant = results["variants"]["bf16"]
    assert results["meta"]["server_args"] == ["--log-verbose=0"]
    assert "region reused" in results["meta"]["ours"]
    assert len(variant["more_requests"]) == 1
    for request in [variant, *variant["more_requests"]]:
        split = request["overhead_split_s"]
        assert 0 < request["triton_overhead_s"] < request["e2e_s"]
        assert split["bls_and_orchestrator"] > 0 and split["client_and_transport"] > 0
        # The two are the overhead less the orchestrator's own queueing and tensor input/output handling.
        assert split["bls_and_orchestrator"] + split["client_and_transport"] <= request["triton_overhead_s"] + 1e-9
    assert results["baseline_repeat"]["status"] == "ok"
    for name in ("results.json", "table.md", "gpu_benchmark.png"):
        assert (out / name).stat().st_size > 0
    assert "Triton BF16 eager" in (out / "table.md").read_text()


def test_swaps_come_from_the_servers_events():
    from perf.gpu_benchmark.stats import count_steps, swaps

    high = "transformer_high_noise"
    found = [
        {"event": "generation_lock_waited", "seconds": 0.0},
        {"event": "weights_loaded", "model": "text_encoder", "gb": 11.4, "seconds": 0.2},
        {"event": "weights_released", "model": "text_encoder", "seconds": 0.01},
        {"event": "weights_loaded", "model": high, "gb": 28.6, "seconds": 0.5},
        {"event": "weights_released", "model": high, "seconds": 0.02},
        {"event": "expert_released", "expert": high, "after_step": 3, "when": "before step 4", "seconds": 0.03},
    ]
    result = {"swaps": swaps(found), "models": {high: {"count": 4, "compute_infer_s": 3.52}}}
    assert result["swaps"] == {
        "text_encoder": {"load_s": [0.2], "release_s": [0.01], "gb": 11.4},
        high: {"load_s": [0.5], "release_s": [0.02], "gb": 28.6},
        "orchestrator_release_calls": [{"expert": high, "after_step": 3, "round_trip_s": 0.03}],
    }
    count_steps(result)  # the release-only request is no step; the step time without the swap
    assert result["steps"][high] == 3 and result["step_s_without_swaps"][high] == pytest.approx(1.0)
