"""The LoRA GPU benchmark's whole flow on the CPU (perf/lora_benchmark.py), tiny architecture: the random LoRA pair,
the diffusers baseline and its 40-step projection, an export with the pair, a real tritonserver, the request plan,
results.json and table.md.

What runs on the H200 is this code at full size, so the result must be coherent here: the LoRA changes the video,
every switch of the adapter is an event with its seconds, the preset runs 4 steps with one batch-1 call each, and the
derived numbers (overhead, speed-up) are the measured ones combined as documented.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytestmark = [pytest.mark.gpu_flow, pytest.mark.server]
EXPERTS = ("transformer_high_noise", "transformer_low_noise")


@pytest.fixture(scope="module")
def benchmark(tmp_path_factory):
    from perf.lora_benchmark import main

    out, work = tmp_path_factory.mktemp("lora-bench-out"), tmp_path_factory.mktemp("lora-bench-work")
    # fp32: the CPU's fast path; no alternating requests: base then lora already switch both experts twice
    main(["--device", "cpu", "--preset", "tiny", "--precision", "fp32", "--height", "32", "--width", "32",
          "--num-frames", "5", "--tiers", "bf16", "--swap-requests", "0", "--rank", "8",
          "--server-arg=--log-verbose=0", "--out-dir", str(out), "--workdir", str(work)])
    return json.loads((out / "results.json").read_text()), out, work


def test_the_lora_is_active_and_every_switch_is_timed(benchmark):
    results, _, _ = benchmark
    tier = results["tiers"]["bf16"]
    assert tier["status"] == "ok"
    assert results["lora"]["adapted_layers"] == 20 and results["lora"]["rank"] == 8  # 10 Linears x 2 tiny blocks
    assert tier["lora_vs_base"]["differs"] and np.isfinite(tier["lora_vs_base"]["psnr_db"])
    assert all(std > 0 for std in (s for _, s in tier["lora_vs_base"]["frames_mean_std"].values()))
    requests = tier["requests"]
    assert list(requests) == ["warmup_lora", "warmup_preset", "base", "lora", "preset"]
    # base after the warm-ups' LoRA: both experts switch it off; lora: both switch it on; the preset keeps it
    for kind, name in (("base", None), ("lora", "lightning")):
        switches = requests[kind]["lora_selected"]
        assert sorted(s["model"] for s in switches) == list(EXPERTS)
        assert all(s["lora"] == name and s["seconds"] >= 0 for s in switches)
    assert requests["preset"]["lora_selected"] == []
    pair = [sum(s["seconds"] for s in requests[k]["lora_selected"]) for k in ("base", "lora")]
    assert tier["swap_s"]["pair"] == pytest.approx({"n": 2, "mean": np.mean(pair), "max": max(pair)})
    assert tier["swap_s"]["synchronised"] is False
    assert set(tier["adapter_load_s"]) == set(EXPERTS) and all(v >= 0 for v in tier["adapter_load_s"].values())


def test_preset_runs_four_batch_one_steps_and_the_speedup_is_the_measured_ratio(benchmark):
    results, _, _ = benchmark
    tier, base = results["tiers"]["bf16"], results["baseline"]
    preset = tier["preset"]
    # boundary 875: timesteps 1000, 937.5 on the high-noise expert, 833.3, 625 on the low-noise one
    assert preset["steps"] == {"transformer_high_noise": 2, "transformer_low_noise": 2}
    assert preset["forward_batches"] == {e: [1, 1] for e in EXPERTS}
    assert preset["cfg_off"] and preset["expert_calls"] == 4
    for kind in ("base", "lora"):  # CFG: cond and uncond as one batch-2 call per step
        assert tier["requests"][kind]["forward_batches"] == {e: [2] for e in EXPERTS}
    assert base["status"] == "ok" and sum(base["steps"].values()) == 2
    projected = base["projected_40_steps"]["e2e_s"]
    assert projected == pytest.approx(base["e2e_s"] + 38 * base["denoise_compute_s"] / 2)
    assert "PROJECTION" in base["projected_40_steps"]["how"]
    assert tier["speedup_vs_diffusers_40"] == pytest.approx(projected / preset["e2e_s"])
    bare = tier["steps"]["step_s_without_swaps"]
    for e in EXPERTS:
        assert bare["base"][e] == pytest.approx(tier["requests"]["base"]["step_s_without_swaps"][e])
        assert tier["overhead_pct"][e] == pytest.approx(100 * (bare["lora"][e] / bare["base"][e] - 1))
        assert bare["lora"][e] <= tier["steps"]["step_s"]["lora"][e]  # the switch taken out
    assert set(tier["targets"]) == {"swap_pair_max_s_le_1", "step_overhead_le_10pct", "preset_speedup_ge_15x"}


def test_results_describe_the_run_and_the_table_is_written(benchmark):
    results, out, _ = benchmark
    meta, workload = results["meta"], results["workload"]
    assert meta["command"].startswith("python3 -m perf.lora_benchmark --device cpu") and meta["gpu"] == "cpu"
    assert workload["preset"]["name"] == "lightning_4step" and workload["preset"]["guidance_scale"] == 1.0
    assert (workload["height"], workload["width"], workload["num_frames"], workload["steps"]) == (32, 32, 5, 2)
    assert "fp8" not in results["tiers"]  # no fp8 tier on a CPU
    table = (out / "table.md").read_text()
    assert "Triton BF16 eager (LoRA)" in table and "40 steps projected" in table
    assert (out / "events-lora-bf16.jsonl").stat().st_size > 0


def test_fp8_tier_is_refused_on_a_cpu_and_tier_videos_are_compared(tmp_path):
    from perf.lora_benchmark import compare_tiers, main

    with pytest.raises(SystemExit, match="fp8 tier needs --device gpu"):
        main(["--device", "cpu", "--preset", "tiny", "--out-dir", str(tmp_path), "--workdir", str(tmp_path)])
    video = np.full((2, 4, 4, 3), 100, dtype=np.uint8)
    np.save(tmp_path / "video-bf16-preset.npy", video)
    np.save(tmp_path / "video-fp8-preset.npy", video + 1)
    results = {"tiers": {"fp8": {"status": "ok"}, "bf16": {"status": "ok"}}}
    compare_tiers(results, type("Args", (), {"workdir": tmp_path}))
    assert results["tiers"]["fp8"]["preset_vs_bf16"] == {"psnr_db": pytest.approx(48.13, abs=0.01), "equal": False}
