"""First request after READY, with and without compile artifacts (issue 14; docs/compile_artifacts.md).

For each tier x mode on one GPU: export (mode `artifacts`: `--compile-artifacts` over a shape spec of exactly
--sizes; mode `warmup`, eager tiers: `--warmup` over that spec; mode `jit`: neither, the first request of each size
pays its first calls, compiles included), start tritonserver and time process
start -> READY (`ready_s`, Triton's `model_warmup` included), then requests in a fixed order: a first round that
alternates the sizes (A, B, A, B; one size: A, A), then warm repeats (A, A, B, B). Videos of the same size and seed
are compared across modes (PSNR), and the experts' `expert_compiled` events (wan22_triton/operations/events.py) are counted
before and after READY. results.json (saved after every phase and request) and table.md go to --out-dir.

On the GPU host, after `source gpu-bundle/activate.sh`:
    python3 -m perf.first_request_benchmark                                   # 480p + 720p, fp8_attention, both modes
    python3 -m perf.first_request_benchmark --tiers bf16 --steps 2            # BF16 eager: --warmup vs plain
    python3 -m perf.first_request_benchmark --sizes 480x832x81 --modes artifacts --steps 4 --deadline-s 780
    python3 -m perf.first_request_benchmark ... --estimate-only               # the phases' estimated seconds, no run
In two processes (e.g. two commands of at most 10 minutes), the same flags and --workdir:
    python3 -m perf.first_request_benchmark ... --phases export
    python3 -m perf.first_request_benchmark ... --phases serve
`--cfg off` (guidance 1: expert batch 1, spec max_batch 1) halves the export's compile points.

CPU dry run (tiny architecture; tests/test_first_request_benchmark.py):
    python -m perf.first_request_benchmark --device cpu --preset tiny --sizes 32x48x9,48x64x9 --tiers compile \\
        --steps 2 --out-dir /tmp/first-request --workdir /tmp/first-request-work

Each export runs in its own process, and the export and every server get their own empty Inductor cache
(TORCHINDUCTOR_CACHE_DIR under --workdir): served hits can only come from the artifacts, as on a fresh machine, and
this process never holds a CUDA context.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from perf.gpu_benchmark import ROOT, STARTED, log
from wan22_triton.operations import events

INDUCTOR_CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"
# CPU dry runs: Inductor compiles in-process, no worker pool; on a small loaded host the pool starved the expert
# stub's health check during a just-in-time compile ("Stub process ... is not healthy").
CPU_ENV = {"TORCHINDUCTOR_COMPILE_THREADS": "1"}
TIERS = ("fp8_attention", "compile", "bf16")
MODES = ("artifacts", "jit", "warmup")
# The mode whose server warms up before READY, per kind of tier: compiled experts through their artifacts, eager
# ones through `--warmup`; its targets are checked and its videos compared with mode jit's.
WARMED_MODE = {"compiled": "artifacts", "eager": "warmup"}
EXPERT_NAMES = ("transformer_high_noise", "transformer_low_noise")
# The issue's targets (checked in each run's `targets`).
MAX_FIRST_RATIO, MAX_READY_S, MAX_ALTERNATING_PCT, MIN_PSNR_DB, MAX_FAST_TIER_GB = 1.15, 90.0, 5.0, 40.0, 76.0
DEFINITIONS = {
    "ready_s": "tritonserver process start -> /v2/health/ready 200 (includes the experts' model_warmup)",
    "first_request_ratio": "per size: e2e of the first request of that size after READY / e2e of the warm one "
                           "(the last request of that size)",
    "alternating_overhead_pct": "per size: 100 * (e2e of the second first-round request of that size, after a "
                                "request of the other size / warm e2e - 1); with one size it just follows one of "
                                "the same size",
    "expert_compiled_after_ready": "expert_compiled events written after READY (the artifacts mode's target: 0)",
    "peak_gpu_memory_gb": "per size: the largest whole-device memory in use during that size's requests (NVML); "
                          "gpu_processes_at_peak_gb: each process's memory at that moment",
    "parity": "per tier and size: the warm video of the mode that warms up (artifacts; eager tiers: warmup) vs mode "
              "jit, same seed (PSNR dB; inf: equal)",
}
# Seconds for --deadline-s and the printed estimates (from perf/results/gpu, H200, full A14B: a fast-tier block
# compiles in ~15 s since Inductor's coordinate descent tuning is off (perf/compile_profile.py; it was ~180 s), BF16
# compile in ~30 s; a CFG step at 480x832x81: fp8_attention 3.9 s, compile 5.8 s, bf16 6.7 s). `second_expert`: the
# second expert's compile as a share of the first's (same architecture: local cache hits; kept at 1 on the GPU in
# case FP8 graphs bypass the cache); `cache_load`: a warm-up compile from the artifacts as a share of a full
# compile (the experts warm up side by side).
GPU_COST = {"base_export_s": 60.0, "base_start_s": 30.0, "request_s": 1.0, "cache_load": 0.5, "second_expert": 1.0,
            "vae_s": 2.0,
            "compile_s": {"fp8_attention": 20.0, "compile": 15.0, "bf16": 0.0},
            "step_s": {"fp8_attention": 3.9, "compile": 5.8, "bf16": 6.7}}
CPU_COST = {"base_export_s": 10.0, "base_start_s": 15.0, "request_s": 1.5, "cache_load": 1.0, "second_expert": 0.1,
            "vae_s": 0.5,
            "compile_s": {"fp8_attention": 20.0, "compile": 20.0, "bf16": 0.0},
            "step_s": {"fp8_attention": 0.2, "compile": 0.2, "bf16": 0.2}}


def parse_sizes(text: str) -> list[tuple[int, int, int]]:
    """`HxWxF,HxWxF` -> [(height, width, num_frames)]."""
    sizes = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        h, w, f = (int(v) for v in item.lower().split("x"))
        sizes.append((h, w, f))
    if not sizes or len(set(sizes)) != len(sizes):
        raise SystemExit(f"--sizes needs distinct HxWxF entries, got {text!r}")
    return sizes


def size_key(size: tuple[int, int, int]) -> str:
    return "x".join(map(str, size))


def request_order(sizes: list) -> list[tuple[str, Any]]:
    """(phase, size): the first round alternates (A, B, A, B; one size: A, A), then warm repeats (A, A, B, B)."""
    first = [s for _ in range(2) for s in sizes]
    return [("first_round", s) for s in first] + [("warm", s) for s in sizes for _ in range(2)]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from perf.gpu_benchmark.__main__ import DEFAULT_NEGATIVE, DEFAULT_PROMPT

    p = argparse.ArgumentParser(prog="python -m perf.first_request_benchmark", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("gpu", "cpu"), default="gpu")
    p.add_argument("--precision", choices=("bf16", "fp32"), default=None, help="default: bf16 on gpu, fp32 on cpu")
    p.add_argument("--preset", choices=("a14b", "tiny"), default="a14b")
    p.add_argument("--layers", type=int, default=None, help="override the experts' layer count (smoke tests)")
    p.add_argument("--sizes", default="480x832x81,720x1280x81", help="HxWxF list: the shape spec and the requests")
    p.add_argument("--tiers", default="fp8_attention",
                   help=f"comma list of {list(TIERS)} (perf/gpu_benchmark/variants.py)")
    p.add_argument("--modes", default=",".join(MODES),
                   help=f"comma list of {list(MODES)}; each tier runs jit and its own warm-up mode (artifacts for "
                        "compiled tiers, warmup for bf16)")
    p.add_argument("--cfg", choices=("on", "off"), default="on",
                   help="off: requests with guidance_scale 1 (expert batch 1) and a spec with max_batch 1, so the "
                        "export compiles batch 1 only (half the compile points)")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--guidance-scale", type=float, default=4.0)
    p.add_argument("--guidance-scale-2", type=float, default=3.0)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--weights-seed", type=int, default=1234)
    p.add_argument("--prompt", default=DEFAULT_PROMPT)
    p.add_argument("--negative-prompt", default=DEFAULT_NEGATIVE)
    p.add_argument("--out-dir", type=Path, default=ROOT / "perf" / "results" / "gpu" / "first_request")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/wan22-first-request"))
    p.add_argument("--startup-timeout", type=float, default=1800.0)
    p.add_argument("--request-timeout", type=float, default=1800.0)
    p.add_argument("--deadline-s", type=float, default=0.0,
                   help="skip a tier x mode, or stop its requests, when its estimate no longer fits (0: no limit)")
    p.add_argument("--server-arg", action="append", default=[], dest="server_args",
                   help="extra tritonserver argument, repeatable")
    p.add_argument("--phases", default="export,serve",
                   help="export: export each tier x mode into --workdir; serve: start, READY and the requests on the "
                        "repositories exported there (another process may do each: one command per 10 minutes)")
    p.add_argument("--estimate-only", action="store_true", help="print the phases' estimated seconds and exit")
    args = p.parse_args(argv)
    args.precision = args.precision or ("bf16" if args.device == "gpu" else "fp32")
    args.size_list = parse_sizes(args.sizes)
    args.tier_list = [t.strip() for t in args.tiers.split(",") if t.strip()]
    args.mode_list = [m.strip() for m in args.modes.split(",") if m.strip()]
    args.phase_list = [x.strip() for x in args.phases.split(",") if x.strip()]
    bad = [t for t in args.tier_list if t not in TIERS] + [m for m in args.mode_list if m not in MODES]
    bad += [x for x in args.phase_list if x not in ("export", "serve")]
    if bad or not args.tier_list or not args.mode_list or not args.phase_list:
        raise SystemExit(f"unknown tiers/modes/phases {bad}; tiers {list(TIERS)}, modes {list(MODES)}, phases "
                         "export, serve")
    if args.cfg == "off":
        args.guidance_scale = args.guidance_scale_2 = 1.0
    return args


# -- estimates --------------------------------------------------------------------------------------------------------

def tier_kind(tier: str) -> str:
    return "eager" if tier == "bf16" else "compiled"


def applicable(tier: str, mode: str) -> bool:
    """`jit` (plain serving) for every tier; the warm-up before READY of the tier's kind (WARMED_MODE)."""
    return mode == "jit" or mode == WARMED_MODE[tier_kind(tier)]


def estimate(tier: str, mode: str, args, requests_done: int = 0) -> dict[str, float]:
    """Seconds of one tier x mode's export, start -> READY and requests (left after `requests_done`)."""
    cost = GPU_COST if args.device == "gpu" else CPU_COST
    compile_one = cost["compile_s"][tier]
    points = len(args.size_list) * (2 if args.cfg == "on" else 1)  # batches 2 and 1 per size, or 1
    both = compile_one * (1 + cost["second_expert"])  # one point, both experts
    out = {"export_s": cost["base_export_s"] + (points * both if mode == "artifacts" else 0.0)}
    out["ready_s"] = cost["base_start_s"] + (points * compile_one * cost["cache_load"] if mode == "artifacts" else 0)
    out["ready_s"] += points * cost["step_s"][tier] if mode == "warmup" else 0  # a forward a point, each expert
    requests = 0.0
    for i, (_, (h, w, f)) in enumerate(request_order(args.size_list)):
        scale = (h * w * f) / (480 * 832 * 81)
        step = cost["step_s"][tier] * scale**1.4 * (1.0 if args.cfg == "on" else 0.55)  # attention: superlinear
        jit_compile = both if mode == "jit" and i < len(args.size_list) else 0.0  # first request of each size
        if i >= requests_done:
            requests += cost["request_s"] + args.steps * step + cost["vae_s"] * scale + jit_compile
    out["requests_s"] = requests
    out["total_s"] = sum(out.values())
    return out


def phase_estimate(tier: str, mode: str, args, run: dict[str, Any]) -> float:
    """Seconds left of one tier x mode in this invocation's --phases."""
    e = estimate(tier, mode, args, len(run.get("requests", [])))
    export = e["export_s"] if "export" in args.phase_list and "export" not in run else 0.0
    serve = e["ready_s"] + e["requests_s"] if "serve" in args.phase_list else 0.0
    return export + serve


def print_estimates(args, results: dict[str, Any]) -> float:
    """The phases not yet done, with their estimated seconds; returns the total."""
    total = 0.0
    for tier in args.tier_list:
        for mode in args.mode_list:
            run = results["runs"].get(tier, {}).get(mode, {})
            if not applicable(tier, mode) or run.get("status") not in (None, "exporting", "exported", "serving"):
                continue
            e, left = estimate(tier, mode, args, len(run.get("requests", []))), phase_estimate(tier, mode, args, run)
            total += left
            log(f"  estimate {tier}/{mode}: export ~{e['export_s']:.0f}s, start->READY ~{e['ready_s']:.0f}s, "
                f"requests ~{e['requests_s']:.0f}s; left in --phases {args.phases}: ~{left:.0f}s")
    log(f"  estimate of the remaining phases: ~{total:.0f}s ({total / 60:.1f} min)")
    return total


def time_left(args) -> float:
    return args.deadline_s - (time.monotonic() - STARTED) if args.deadline_s else float("inf")


# -- export -----------------------------------------------------------------------------------------------------------

def write_shape_spec(args) -> tuple[Path, list[str]]:
    """A spec of exactly --sizes (export/shape_spec.json's format); returns it and the sizes it serves (the spec is
    frames x resolutions, so mixed frame counts serve their cross product)."""
    frames = sorted({f for _, _, f in args.size_list})
    resolutions = list(dict.fromkeys((h, w) for h, w, _ in args.size_list))
    spec = {"num_frames": frames, "resolutions": [list(r) for r in resolutions],
            "max_batch": 2 if args.cfg == "on" else 1}
    path = args.workdir / "shape_spec.json"
    path.write_text(json.dumps(spec, indent=2) + "\n")
    served = [size_key((h, w, f)) for f in frames for h, w in resolutions]
    if len(served) > len(args.size_list):
        extra = sorted(set(served) - set(map(size_key, args.size_list)))
        log(f"the spec also serves (and the export compiles) {extra}")
    return path, served


def export_child(payload: dict[str, Any]) -> None:
    """The export, in its own process (its own Inductor cache and CUDA context): a tier of variants.py, ENGINE=torch,
    random weights, the given shape spec, the mode's warm-up (compile artifacts, --warmup or none)."""
    from export.repository import export_repository
    from perf.gpu_benchmark.variants import VARIANTS, export_options

    opts = export_options(VARIANTS[payload["tier"]], payload["device"], payload["precision"],
                          payload["weights_seed"], shape_spec=payload["shape_spec"],
                          compile_artifacts=payload["mode"] == "artifacts", warmup=payload["mode"] == "warmup")
    export_repository(payload["checkpoint"], payload["repo"], opts, log=lambda m: print(m, flush=True))


def export_repo(tier: str, mode: str, checkpoint: Path, spec: Path, args) -> tuple[Path, dict[str, Any]]:
    repo = args.workdir / f"repo-{tier}-{mode}"
    shutil.rmtree(repo, ignore_errors=True)
    cache = fresh_dir(args.workdir / f"inductor-export-{tier}-{mode}")
    payload = {"tier": tier, "device": args.device, "precision": args.precision, "weights_seed": args.weights_seed,
               "shape_spec": str(spec), "mode": mode, "checkpoint": str(checkpoint),
               "repo": str(repo)}
    code = ("import json, sys; from perf.first_request_benchmark import export_child; "
            "export_child(json.loads(sys.argv[1]))")
    out: dict[str, Any] = {"compile_s": {}, "component_s": {}}
    events_file = args.out_dir / f"events-export-{tier}-{mode}.jsonl"  # the export's progress, structured
    events_file.unlink(missing_ok=True)
    t0 = time.perf_counter()
    with open(args.out_dir / f"export-{tier}-{mode}.log", "w") as export_log:
        proc = subprocess.Popen([sys.executable, "-c", code, json.dumps(payload)], cwd=ROOT, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env={**os.environ, **device_env(args), INDUCTOR_CACHE_ENV: str(cache),
                                     events.EVENTS_FILE_ENV: str(events_file)})
        assert proc.stdout is not None
        for line in proc.stdout:  # kept for people; the numbers come from the events
            export_log.write(line)
            if ": compiled " in line:
                log(f"export| {line.strip()}")
        exit_code = proc.wait()
    out["wall_s"] = time.perf_counter() - t0
    for event in events.read_events(events_file):
        if event["event"] == "export_point_compiled":
            out["compile_s"].setdefault(event["model"], {})[event["point"]] = event["seconds"]
        elif event["event"] == "export_component_written":
            out["component_s"][event["model"]] = event["seconds"]
    if exit_code != 0:
        raise RuntimeError(f"export failed with exit code {exit_code} (see {args.out_dir}/export-{tier}-{mode}.log)")
    from wan22_triton.speed import compile_cache

    out["artifacts_bytes"] = {
        e: (repo / e / "1" / compile_cache.FOLDER / compile_cache.ARTIFACTS).stat().st_size
        for e in EXPERT_NAMES if (repo / e / "1" / compile_cache.FOLDER / compile_cache.ARTIFACTS).exists()
    }
    out["warmup_samples"] = {e: warmup_samples(repo / e) for e in EXPERT_NAMES}
    return repo, out


def warmup_samples(model_dir: Path) -> list[str]:
    """The model_warmup samples of a model's config.pbtxt (none for a repository without artifacts)."""
    from export.model_config import parse_pbtxt

    return [w.name for w in parse_pbtxt((model_dir / "config.pbtxt").read_text()).model_warmup]


def device_env(args) -> dict[str, str]:
    return CPU_ENV if args.device == "cpu" else {}


def fresh_dir(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


# -- one tier x mode --------------------------------------------------------------------------------------------------

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


def export_phase(tier: str, mode: str, checkpoint: Path, spec: Path, args, results: dict[str, Any]) -> None:
    """Export, and a record beside the repository so that a later `--phases serve` (another process, e.g. the next
    10-minute command on the GPU host) can serve it."""
    run = results["runs"][tier][mode]
    run["status"] = "exporting"
    log(f"{tier}/{mode}: export{ {'artifacts': ' with compile artifacts', 'warmup': ' with --warmup'}.get(mode, '')}")
    repo, run["export"] = export_repo(tier, mode, checkpoint, spec, args)
    record_path(tier, mode, args).write_text(json.dumps({"fingerprint": fingerprint(tier, mode, args),
                                                         "export": run["export"]}, indent=2))
    run["status"] = "exported"
    log(f"{tier}/{mode}: export {run['export']['wall_s']:.1f}s; warm-up samples "
        f"{ {e: len(s) for e, s in run['export']['warmup_samples'].items()} }")
    save(results, args)


def record_path(tier: str, mode: str, args) -> Path:
    return args.workdir / f"repo-{tier}-{mode}.export.json"


def fingerprint(tier: str, mode: str, args) -> dict[str, Any]:
    """What must be equal for an exported repository to be served by a later `--phases serve`."""
    return {"tier": tier, "mode": mode, "sizes": [size_key(s) for s in args.size_list], "cfg": args.cfg,
            "device": args.device, "precision": args.precision, "preset": args.preset, "layers": args.layers,
            "weights_seed": args.weights_seed}


def exported_repo(tier: str, mode: str, args, run: dict[str, Any]) -> Path:
    """The repository an earlier `--phases export` made in --workdir, for the same workload."""
    repo, path = args.workdir / f"repo-{tier}-{mode}", record_path(tier, mode, args)
    record = json.loads(path.read_text()) if path.exists() else {}
    if not repo.is_dir() or record.get("fingerprint") != fingerprint(tier, mode, args):
        raise RuntimeError(f"no export of {tier}/{mode} for this workload in {args.workdir} (run --phases export "
                           f"with the same flags first); record: {record.get('fingerprint')}")
    run["export"] = record["export"]
    return repo


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
                    values = request_values(argparse.Namespace(**{**vars(args), "height": size[0], "width": size[1],
                                                                  "num_frames": size[2]}), args.steps)
                    offset = events.end_offset(events_file)
                    peak = GpuMemoryPeak()
                    with peak:
                        t0 = time.perf_counter()
                        out = grpc_client.generate(server.grpc_url, values, shared_memory=shm,
                                                   admin_key=server.admin_key, timeout=args.request_timeout)
                        e2e = time.perf_counter() - t0
                    video = out["video"]
                    compiled = compile_summary(events.read_events(events_file, offset))
                    row = {"index": i, "phase": phase, "size": key, "e2e_s": e2e, "stage_seconds": out["stage_seconds"],
                           "peak_gpu_memory_gb": peak.peak_gb, "gpu_processes_at_peak_gb": peak.processes_at_peak,
                           "expert_compiled": compiled["expert_compiled"],
                           "compile_seconds": compiled["compile_seconds"],
                           "frames_mean_std": [float(video.mean()), float(video.std())]}
                    firsts.setdefault(key, video)
                    if phase == "warm":
                        row["psnr_vs_first_db"] = psnr(video, firsts[key])
                        path = video_path(tier, mode, key, args)
                        path.parent.mkdir(parents=True, exist_ok=True)
                        np.save(path, video)
                    run["requests"].append(row)
                    log(f"{tier}/{mode}: request {i + 1}/{len(order)} {phase} {key}: {e2e:.2f}s, peak "
                        f"{peak.peak_gb} GB, {compiled['expert_compiled']} compiles")
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
                 "stage_seconds_first": rows[0]["stage_seconds"],
                 "stage_seconds_warm": warm[-1]["stage_seconds"] if warm else None}
        if warm:  # where a slow first request spends its time (e.g. the VAE's first cuDNN autotuning at a size)
            entry["stage_ratio"] = {k: v / warm[-1]["stage_seconds"][k] for k, v in rows[0]["stage_seconds"].items()
                                    if warm[-1]["stage_seconds"].get(k)}
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
    workload), and the issue's targets for the run that warms up (WARMED_MODE)."""
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


# -- report -----------------------------------------------------------------------------------------------------------

def _f(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def render_table(results: dict[str, Any]) -> str:
    head = ("| tier | mode | export s | start->READY s | start peak GPU GB | compiles before / after READY | size "
            "| first e2e s | warm e2e s | first/warm | alternating % | peak GPU GB | PSNR vs other mode dB |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for tier, runs in results["runs"].items():
        for mode in MODES:
            run = runs.get(mode)
            if not run:
                continue
            if not run.get("per_size"):
                lines.append(f"| {tier} | {mode} | {' '.join(str(run.get('status')).split())[:160]} |" + " |" * 10)
                continue
            for key, e in run["per_size"].items():
                p = runs.get("parity", {}).get(key, {}).get("psnr_db")
                lines.append(
                    f"| {tier} | {mode} | {_f(run.get('export', {}).get('wall_s'), '.1f')} "
                    f"| {_f(run.get('ready_s'), '.1f')} | {_f(run.get('peak_gpu_memory_start_gb'), '.1f')} "
                    f"| {run.get('warmup', {}).get('expert_compiled', '-')} / {e['expert_compiled']} | {key} "
                    f"| {e['first_e2e_s']:.2f} | {_f(e['warm_e2e_s'], '.2f')} "
                    f"| {_f(e.get('first_request_ratio'), '.3f')} "
                    f"| {_f(e.get('alternating_overhead_pct'), '+.1f')} | {_f(e['peak_gpu_memory_gb'], '.1f')} "
                    f"| {_f(p, '.1f')} |")
    return "\n".join(lines)


def save(results: dict[str, Any], args) -> None:
    (args.out_dir / "results.json").write_text(json.dumps(results, indent=2, default=str))
    (args.out_dir / "table.md").write_text(render_table(results) + "\n")


def describe(args, argv: list[str] | None, served: list[str], spec: Path) -> dict[str, Any]:
    from perf.gpu_benchmark.__main__ import machine_meta
    from perf.gpu_benchmark.variants import VARIANTS

    return {
        "meta": {
            **machine_meta("perf.first_request_benchmark", argv),
            "server_args": args.server_args,
            "checkpoint": f"configs-only Wan2.2-T2V-A14B ({args.preset}"
                          f"{f', {args.layers} layers' if args.layers else ''}), "
                          f"RANDOM weights (seed {args.weights_seed})",
            "inductor_cache": "empty per export and per server (TORCHINDUCTOR_CACHE_DIR under --workdir)",
        },
        "workload": {
            "sizes": [size_key(s) for s in args.size_list], "spec": json.loads(spec.read_text()),
            "spec_sizes": served, "steps": args.steps, "cfg": args.cfg, "guidance_scale": args.guidance_scale,
            "guidance_scale_2": args.guidance_scale_2, "seed": args.seed, "prompt": args.prompt,
            "negative_prompt": args.negative_prompt, "device": args.device, "precision": args.precision,
            "request_order": [[phase, size_key(s)] for phase, s in request_order(args.size_list)],
        },
        "definitions": DEFINITIONS,
        "runs": {t: {"label": VARIANTS[t].label, **VARIANTS[t].results_row(),
                     **{m: ({} if applicable(t, m) else {"status": f"not applicable: {tier_kind(t)} tier"})
                        for m in args.mode_list}}
                 for t in args.tier_list},
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from perf.gpu_benchmark.gpu_monitor import wait_gpu_free
    from perf.gpu_benchmark.measure import configs_checkpoint, prepare_folders

    prepare_folders(args, "--device cpu --preset tiny ...", need_gpu=not args.estimate_only)
    spec, served = write_shape_spec(args)
    results = describe(args, argv, served, spec)
    log(f"{results['meta']['gpu']}: sizes {results['workload']['sizes']}, tiers {args.tier_list}, modes "
        f"{args.mode_list}, phases {args.phase_list}, {args.steps} steps, CFG {args.cfg}")
    print_estimates(args, results)
    if args.estimate_only:
        return
    checkpoint = configs_checkpoint(args)
    save(results, args)
    for tier in args.tier_list:
        for mode in args.mode_list:
            if not applicable(tier, mode):
                continue
            run = results["runs"][tier][mode]
            need, left = phase_estimate(tier, mode, args, run), time_left(args)
            if left < need:
                run["status"] = f"skipped: {left:.0f}s left of the deadline, ~{need:.0f}s estimated"
                log(f"{tier}/{mode}: {run['status']}")
                continue
            started = time.monotonic()
            try:
                if "export" in args.phase_list:
                    export_phase(tier, mode, checkpoint, spec, args, results)
                    log(f"{tier}/{mode}: GPU memory after the export: {wait_gpu_free()} GB")
                if "serve" in args.phase_list:
                    serve_phase(tier, mode, exported_repo(tier, mode, args, run), args, results)
            except Exception as e:
                log(f"{tier}/{mode}: FAILED {type(e).__name__}: {e}")
                run["status"] = f"failed: {type(e).__name__}: {e}"[:400]
                derive(run, args)
            run["phase_wall_s"] = time.monotonic() - started
            compare_modes(tier, results, args)
            save(results, args)
            log(f"{tier}/{mode}: done in {run['phase_wall_s']:.0f}s; GPU memory after stop: {wait_gpu_free()} GB")
            print_estimates(args, results)
    save(results, args)
    print()
    print(render_table(results))
    print(f"\nresults: {args.out_dir}/results.json, table.md")


if __name__ == "__main__":
    main()
