"""perf/first_request_benchmark.py's whole flow on the CPU with the tiny architecture: a shape spec of two sizes,
the export with and without compile artifacts (and, for the eager tier, with and without `--warmup`), a real
tritonserver per mode, requests alternating the sizes, then warm repeats; results.json must hold coherent numbers.

CFG off (`--cfg off`: requests at guidance 1, spec max_batch 1) halves the compile points, to keep the run short on
two cores; the batch-2 warm-up is tests/test_compile_artifacts.py's.
"""

from __future__ import annotations

import json

import pytest

pytestmark = [pytest.mark.gpu_flow, pytest.mark.server]
SIZES = ("32x48x9", "48x64x9")
EXPERTS = ("transformer_high_noise", "transformer_low_noise")


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    from perf.first_request_benchmark import main

    out, work = tmp_path_factory.mktemp("first-request-out"), tmp_path_factory.mktemp("first-request-work")
    main(["--device", "cpu", "--preset", "tiny", "--sizes", ",".join(SIZES), "--tiers", "compile,bf16", "--steps", "2",
          "--cfg", "off", "--server-arg=--log-verbose=0", "--out-dir", str(out), "--workdir", str(work)])
    return json.loads((out / "results.json").read_text()), out


def test_order_compiles_and_the_same_video_every_time(bench):
    results, out = bench
    assert results["workload"]["spec"] == {"num_frames": [9], "resolutions": [[32, 48], [48, 64]], "max_batch": 1}
    a, b = SIZES
    assert results["workload"]["request_order"] == [["first_round", s] for s in (a, b, a, b)] + [
        ["warm", s] for s in (a, a, b, b)]
    runs = results["runs"]["compile"]
    for mode in ("artifacts", "jit"):
        run = runs[mode]
        assert run["status"] == "ok", run["status"]
        assert run["ready_s"] > 0 and run["export"]["wall_s"] > 0
        assert [r["size"] for r in run["requests"]] == [s for _, s in results["workload"]["request_order"]]
        for size in SIZES:
            rows = [r for r in run["requests"] if r["size"] == size]
            # The server's own events: without artifacts only the first request of a size compiles.
            assert [r["expert_compiled"] > 0 for r in rows] == [mode == "jit"] + [False] * (len(rows) - 1)
            assert set(rows[-1]["stage_seconds"]) >= {"text_encoder", "denoise", "vae_decoder"}
            assert all(r["equal_to_first"] for r in rows if r["phase"] == "warm")  # same seed, same video
    assert "| compile | artifacts |" in (out / "table.md").read_text()


def test_artifacts_compile_at_export_and_before_ready_only(bench):
    results, _ = bench
    run = results["runs"]["compile"]["artifacts"]
    labels = {"9x32x48_batch1", "9x48x64_batch1"}  # CFG off: batch 1 only
    for expert in EXPERTS:
        assert set(run["export"]["compile_s"][expert]) == labels
        assert set(run["export"]["warmup_samples"][expert]) == labels
        assert run["export"]["artifacts_bytes"][expert] > 0
    assert sorted(e["model"] for e in run["compile_cache"] if e["event"] == "compile_cache_loaded") == sorted(EXPERTS)
    # Every point compiled in the warm-up, from the artifacts (an empty served Inductor cache: hits come from them).
    warmup = run["warmup"]
    assert warmup["expert_compiled"] == 2 * len(labels) and warmup["cache_hits"] == warmup["graphs"]
    assert run["expert_compiled_after_ready"] == 0
    assert all(r["expert_compiled"] == 0 for r in run["requests"])
    for size in SIZES:
        assert run["targets"][size]["expert_compiled_after_ready"][2] is True


def test_jit_compiles_in_the_first_request_and_gives_the_same_video(bench):
    results, _ = bench
    runs = results["runs"]["compile"]
    jit = runs["jit"]
    assert jit["export"]["warmup_samples"] == {e: [] for e in EXPERTS} and jit["warmup"]["expert_compiled"] == 0
    assert jit["requests"][0]["expert_compiled"] > 0 and jit["expert_compiled_after_ready"] > 0
    assert jit["requests"][0]["compile_seconds"] > 0
    for size in SIZES:
        assert runs["parity"][size]["psnr_db"] >= 40  # the artifacts' graphs and the JIT's: the same video
        assert runs["artifacts"]["targets"][size]["psnr_vs_jit_db"][2] is True


def test_the_eager_tier_warms_up_with_warmup_and_gives_the_same_video(bench):
    results, _ = bench
    runs = results["runs"]["bf16"]
    assert runs["artifacts"]["status"].startswith("not applicable")  # nothing to compile
    assert results["runs"]["compile"]["warmup"]["status"].startswith("not applicable")  # its warm-up: artifacts
    warmed, plain = runs["warmup"], runs["jit"]
    labels = ["9x32x48_batch1", "9x48x64_batch1"]
    assert warmed["export"]["warmup_samples"] == {e: labels for e in EXPERTS}
    assert plain["export"]["warmup_samples"] == {e: [] for e in EXPERTS}
    assert warmed["warmup"]["expert_compiled"] == 0 and warmed["status"] == "ok"
    for size in SIZES:
        assert runs["parity"][size]["equal"]  # eager, same seed: the warm-up changes nothing in the video
        assert warmed["targets"][size]["psnr_vs_jit_db"][2] is True
        assert warmed["targets"][size]["first_request_ratio"][0] == pytest.approx(warmed["first_request_ratio"][size])
