"""One tier x mode served: start -> READY, the requests in their order, per-size ratios, memory and compiles, and
the videos compared across modes with the targets checked."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from perf.gpu_benchmark import log
from perf.gpu_benchmark.cli import time_left
from wan22_triton.components.orchestrator import STAGE_SECONDS, VIDEO
from wan22_triton.operations import events
from wan22_triton.request.contract import HEIGHT, NUM_FRAMES, WIDTH

from .export_phase import INDUCTOR_CACHE_ENV, device_env, fresh_dir
from .plan import (MAX_ALTERNATING_PCT, MAX_FAST_TIER_GB, MAX_FIRST_RATIO, MAX_READY_S, MIN_PSNR_DB, WARMED_MODE,
                   estimate, request_order, size_key, tier_kind)
from .report import save


def compile_summary(evts: list[dict[str, Any]]) -> dict[str, Any]:
    compiled = [e for e in evts if e["event"] == "expert_compiled"]
    return {
        "expert_compiled": len(compiled),
        "compile_seconds": sum(float(e.get("seconds", 0)) for e in compiled),
        **{k: sum(int(e.get(k, 0) or 0) for e in compiled) for k in ("graphs", "cache_hits", "cache_misses",
                                                                       "cache_bypasses")},
        "by_model": {m: [round(float(e.get("seconds", 0)), 2) for e in compiled if e.get("model") == m]
                     for m in dict.fromkeys(e.get("model") for e in compiled)},
    }


def video_path(tier: str, mode: str, key: str, args) -> Path:
    """Saved warm video; the name carries what makes two videos comparable."""
    return args.workdir / "videos" / (f"{tier}-{mode}-{key}-steps{args.steps}-seed{args.seed}-w{args.weights_seed}"
                                      f"-{args.precision}-cfg{args.cfg}-{args.preset}{args.layers or ''}.npy")


def serve_phase(tier: str, mode: str, repo: Path, args, results: dict[str, Any]) -> None:
    """Start, READY, the requests; fills results['runs'][tier][mode] and saves after each request."""
    from clients import grpc_client
    from perf.gpu_benchmark.gpu_monitor import GpuMemoryPeak, gpu_used_gb
    from perf.gpu_benchmark.measure import request_values, start_server
    from perf.gpu_benchmark.quality import psnr

    run = results["runs"][tier][mode]
    run["status"] = "serving"
    name = f"{tier}-{mode}"
    server, events_file = start_server(name, repo, args)
    served_cache = fresh_dir(args.workdir / f"inductor-served-{name}")
    server.env.update({**device_env(args), INDUCTOR_CACHE_ENV: str(served_cache)})
    peak_all, peak_start = GpuMemoryPeak(), GpuMemoryPeak()
    firsts: dict[str, np.ndarray] = {}
    try:
        with peak_all:
            with peak_start:
                server.start()
            ready_offset = events.end_offset(events_file)  # the warm-up wrote its events before READY
            run["ready_s"] = server.startup_seconds
            before_ready = events.read_events(events_file)
            run["warmup"] = compile_summary(before_ready)
            run["compile_cache"] = [{k: e.get(k) for k in ("event", "model", "bytes", "seconds", "differs", "reason")}
                                    for e in before_ready if e["event"].startswith("compile_cache_")]
            run["peak_gpu_memory_start_gb"] = peak_start.peak_gb
            run["gpu_processes_at_start_peak_gb"] = peak_start.processes_at_peak
            run["gpu_used_after_ready_gb"] = gpu_used_gb()
            log(f"{tier}/{mode}: start -> READY {run['ready_s']:.1f}s; before READY {run['warmup']['expert_compiled']} "
                f"compiles ({run['warmup']['compile_seconds']:.1f}s, cache hits {run['warmup']['cache_hits']}, "
                f"misses {run['warmup']['cache_misses']}, bypasses {run['warmup']['cache_bypasses']}); "
                f"{[c['event'] for c in run['compile_cache']]}")
            save(results, args)
            largest = max(3 * f * h * w for h, w, f in args.size_list)
            with grpc_client.VideoSharedMemory(server.grpc_url, largest, server.admin_key) as shm:
                run["requests"] = []
                order = request_order(args.size_list)
                for i, (phase, size) in enumerate(order):
                    left = time_left(args)
                    need = estimate(tier, mode, args, i)["requests_s"]
                    if left < need:
                        run["status"] = f"partial: {left:.0f}s left of the deadline, ~{need:.0f}s of requests to go"
                        log(f"{tier}/{mode}: {run['status']}")
                        break
                    key = size_key(size)
                    values = request_values(argparse.Namespace(**{**vars(args), HEIGHT: size[0], WIDTH: size[1],
                                                                  NUM_FRAMES: size[2]}), args.steps)
                    offset = events.end_offset(events_file)
                    peak = GpuMemoryPeak()
                    with peak:
                        t0 = time.perf_counter()
                        out = grpc_client.generate(server.grpc_url, values, shared_memory=shm,
                                                   admin_key=server.admin_key, timeout=args.request_timeout)
                        e2e = time.perf_counter() - t0
                    video = out[VIDEO]
                    compiled = compile_summary(events.read_events(events_file, offset))
                    row = {"index": i, "phase": phase, "size": key, "e2e_s": e2e, STAGE_SECONDS: out[STAGE_SECONDS],
                           "peak_gpu_memory_gb": peak.peak_gb, "gpu_processes_at_peak_gb": peak.processes_at_peak,
                           "expert_compiled": compiled["expert_compiled"],
                           "compile_seconds": compiled["compile_seconds"],
                           "frames_mean_std": [float(video.mean()), float(video.std())]}
                    firsts.setdefault(key, video)
                    if phase == "warm":
                        row["psnr_vs_first_db"] = psnr(video, firsts[key])
                        row["equal_to_first"] = bool(np.array_equal(video, firsts[key]))
                        path = video_path(tier, mode, key, args)
                        path.parent.mkdir(parents=True, exist_ok=True)
                        np.save(path, video)
                    run["requests"].append(row)
                    log(f"{tier}/{mode}: request {i + 1}/{len(order)} {phase} {key}: {e2e:.2f}s, peak "
                        f"{peak.peak_gb} GiB, {compiled['expert_compiled']} compiles")
                    save(results, args)
            after = events.read_events(events_file, ready_offset)
            run["expert_compiled_after_ready"] = compile_summary(after)["expert_compiled"]
    finally:
        server.stop()
    run["peak_gpu_memory_gb"] = peak_all.peak_gb
    run["gpu_processes_at_peak_gb"] = peak_all.processes_at_peak
    if run["status"] == "serving":
        run["status"] = "ok"
    derive(run, args)


def derive(run: dict[str, Any], args) -> None:
    """Per size: first, alternating and warm e2e, the ratios, memory and compiles; the run-level dicts."""
    per_size: dict[str, Any] = {}
    for key in map(size_key, args.size_list):
        rows = [r for r in run.get("requests", []) if r["size"] == key]
        if not rows:
            continue
        first_round = [r for r in rows if r["phase"] == "first_round"]
        warm = [r for r in rows if r["phase"] == "warm"]
        top = max(rows, key=lambda r: r["peak_gpu_memory_gb"] or 0.0)
        entry = {"first_e2e_s": rows[0]["e2e_s"], "warm_e2e_s": warm[-1]["e2e_s"] if warm else None,
                 "alternating_e2e_s": first_round[1]["e2e_s"] if len(first_round) > 1 else None,
                 "peak_gpu_memory_gb": top["peak_gpu_memory_gb"], "gpu_processes_at_peak_gb":
                 top["gpu_processes_at_peak_gb"], "expert_compiled": sum(r["expert_compiled"] for r in rows),
                 "stage_seconds_first": rows[0][STAGE_SECONDS],
                 "stage_seconds_warm": warm[-1][STAGE_SECONDS] if warm else None}
        if warm:  # where a slow first request spends its time (e.g. the VAE's first cuDNN autotuning at a size)
            entry["stage_ratio"] = {k: v / warm[-1][STAGE_SECONDS][k] for k, v in rows[0][STAGE_SECONDS].items()
                                    if warm[-1][STAGE_SECONDS].get(k)}
        if entry["warm_e2e_s"]:
            entry["first_request_ratio"] = entry["first_e2e_s"] / entry["warm_e2e_s"]
            if entry["alternating_e2e_s"] is not None:
                entry["alternating_overhead_pct"] = 100 * (entry["alternating_e2e_s"] / entry["warm_e2e_s"] - 1)
        per_size[key] = entry
    run["per_size"] = per_size
    run["first_request_ratio"] = {k: v["first_request_ratio"] for k, v in per_size.items()
                                  if "first_request_ratio" in v}
    run["alternating_overhead_pct"] = {k: v["alternating_overhead_pct"] for k, v in per_size.items()
                                       if "alternating_overhead_pct" in v}


def compare_modes(tier: str, results: dict[str, Any], args) -> None:
    """Warm videos of the same size across modes (also from an earlier run in this --workdir with the same
    workload), and the targets (plan.py) for the run that warms up (WARMED_MODE)."""
    from perf.gpu_benchmark.quality import psnr

    runs, warmed = results["runs"][tier], WARMED_MODE[tier_kind(tier)]
    parity = {}
    for key in map(size_key, args.size_list):
        a, j = video_path(tier, warmed, key, args), video_path(tier, "jit", key, args)
        if a.exists() and j.exists():
            va, vj = np.load(a), np.load(j)
            parity[key] = {"psnr_db": psnr(va, vj), "equal": bool(np.array_equal(va, vj)),
                           "max_abs_diff": int(np.abs(va.astype(np.int16) - vj.astype(np.int16)).max())}
    runs["parity"] = parity
    run = runs.get(warmed, {})
    if run.get("status") in ("ok",) or run.get("requests"):
        targets: dict[str, Any] = {"ready_s": [run.get("ready_s"), MAX_READY_S,
                                               (run.get("ready_s") or 1e9) <= MAX_READY_S]}
        start_peak = run.get("peak_gpu_memory_start_gb")
        if tier.startswith("fp8") and start_peak is not None:  # fits the card from the start, warm-up included
            targets["peak_gpu_memory_start_gb"] = [start_peak, MAX_FAST_TIER_GB, start_peak <= MAX_FAST_TIER_GB]
        for key, entry in run.get("per_size", {}).items():
            checks = {
                "first_request_ratio": (entry.get("first_request_ratio"), MAX_FIRST_RATIO, "<="),
                "alternating_overhead_pct": (entry.get("alternating_overhead_pct"), MAX_ALTERNATING_PCT, "<="),
                "expert_compiled_after_ready": (entry["expert_compiled"], 0, "<="),
                "psnr_vs_jit_db": (parity.get(key, {}).get("psnr_db"), MIN_PSNR_DB, ">="),
            }
            if tier.startswith("fp8"):
                checks["peak_gpu_memory_gb"] = (entry["peak_gpu_memory_gb"], MAX_FAST_TIER_GB, "<=")
            targets[key] = {n: [v, lim, None if v is None else (v <= lim if op == "<=" else v >= lim)]
                            for n, (v, lim, op) in checks.items()}
        run["targets"] = targets  # name: [value, limit, met]

