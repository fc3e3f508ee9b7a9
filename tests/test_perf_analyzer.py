"""`make perf` smoke test: perf_analyzer sweeps on the tiny checkpoint against the session's torch tritonserver."""

from __future__ import annotations

import csv
import json

import pytest

from perf import perf_analyzer_env, perf_analyzer_sweep

MODELS = ("wan22_t2v", "text_encoder", "transformer_high_noise")  # orchestrator, BYTES input, b64 tensors + timestep


@pytest.fixture(scope="module")
def sweep(torch_server, tiny_checkpoint, tmp_path_factory):
    if perf_analyzer_env.check():
        pytest.fail(f"perf_analyzer cannot run here, missing {perf_analyzer_env.check()}: `make setup` installs "
                    "Debian's libb64-0d as root; otherwise apt-get install libb64-0d")
    results = tmp_path_factory.mktemp("perf")
    argv = [
        "--checkpoint", str(tiny_checkpoint), "--url", torch_server.grpc_url, "--models", ",".join(MODELS),
        "--admin-key", torch_server.admin_key,  # perf_analyzer reads the server's statistics, an admin API
        "--concurrency", "2", "--warmup", "1", "--measurement-request-count", "2", "--data-entries", "1",
        "--num-frames", "5", "--num-inference-steps", "2",  # ~2x cheaper wan22_t2v requests than the defaults
        "--results", str(results), "--label", "smoke",
        "--stability-percentage", "100000",  # a smoke test: any 3 windows do, however busy the box
    ]
    assert perf_analyzer_sweep.main(argv) == 0
    return results / "smoke"


def test_csv_per_model_has_every_concurrency(sweep):
    for model in MODELS:
        with open(sweep / f"{model}.csv", newline="") as f:
            rows = {int(r["Concurrency"]): r for r in csv.DictReader(f)}
        assert sorted(rows) == [1, 2], model
        for row in rows.values():
            assert float(row["Inferences/Second"]) > 0, (model, row)
            assert float(row["p90 latency"]) > 0, (model, row)


def test_summary_and_chart(sweep):
    summary = json.loads((sweep / "summary.json").read_text())
    assert set(summary["models"]) == set(MODELS)
    for model, result in summary["models"].items():
        assert result["returncode"] == 0 and "error" not in result, (model, result)
        assert [r["concurrency"] for r in result["rows"]] == [1, 2]
        assert all(r["requests_per_sec"] > 0 and 0 < r["p50_ms"] <= r["p99_ms"] for r in result["rows"]), result
        assert "--measurement-mode count_windows" in result["command"]
    assert summary["models"]["text_encoder"]["batch_size"] == 2  # cond + uncond, as the orchestrator sends
    assert summary["machine"]["cpu"] and summary["date"]
    png = (sweep / "sweep.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_input_data_matches_the_contract(sweep, tiny_checkpoint):
    """Real prompts for wan22_t2v and text_encoder; the experts' tensors at the orchestrator's shapes."""
    from wan22_triton.checkpoint import read_checkpoint

    prompts = json.loads((perf_analyzer_sweep.ROOT / "perf" / "prompts.json").read_text())
    t2v = json.loads((sweep / "wan22_t2v.json").read_text())["data"]
    assert [e["prompt"] for e in t2v] == [[p] for p in prompts]
    assert t2v[0]["num_frames"] == [5] and t2v[0]["num_inference_steps"] == [2] and t2v[0]["height"] == [32]
    info = read_checkpoint(tiny_checkpoint)
    (entry,) = json.loads((sweep / "transformer_high_noise.json").read_text())["data"]
    assert entry["hidden_states"]["shape"] == list(info.latent_shape(5, 32, 48))
    assert entry["timestep"]["shape"] == [1]
    assert entry["encoder_hidden_states"]["shape"] == [info.text_len, info.text_dim]


def test_throughput_ratio_pairs_each_model_and_concurrency():
    """--compare-to: requests/s over the other sweep's at the same concurrency; rows the other lacks are left out."""
    ours = {"wan22_t2v": {"rows": [{"concurrency": 1, "requests_per_sec": 0.2},
                                   {"concurrency": 2, "requests_per_sec": 0.38}]}}
    theirs = {"models": {"wan22_t2v": {"rows": [{"concurrency": 1, "requests_per_sec": 0.1}]}}}
    ratios = perf_analyzer_sweep.throughput_ratio(ours, theirs)
    assert ratios == {"wan22_t2v": {"1": 2.0}}
    assert perf_analyzer_sweep.throughput_ratio(ours, {"models": {}}) == {"wan22_t2v": {}}
