"""What one first-request run measures and how long it may take: tiers, modes, the request order, the targets,
and the estimates behind --deadline-s and --estimate-only."""

from __future__ import annotations

from typing import Any

from perf.gpu_benchmark import log
from wan22_triton.components.expert import EXPERT_MODELS
from wan22_triton.options import Compile, Device

TIERS = ("fp8_attention", "compile", "bf16")
MODES = ("artifacts", "jit", "warmup")
# The mode whose server warms up before READY, per kind of tier: compiled experts through their artifacts, eager
# ones through `--warmup`; its targets are checked and its videos compared with mode jit's.
WARMED_MODE = {"compiled": "artifacts", "eager": "warmup"}
EXPERT_NAMES = tuple(EXPERT_MODELS.values())  # high-noise first
# The targets each run checks (results.json `targets`): READY within 90 s, a first request within 1.15x the warm one,
# alternating sizes within 5%, the same video as the JIT path, and the fast tier within 76 GB.
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
# Seconds for --deadline-s and the printed estimates (H200, full A14B, perf/results/gpu: a fast-tier block compiles
# in ~15 s with Inductor's coordinate descent tuning off (perf/compile_profile.py), BF16 compile in ~30 s; a CFG step
# at 480x832x81: fp8_attention 3.9 s, compile 5.8 s, bf16 6.7 s). `second_expert`: the
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



def tier_kind(tier: str) -> str:
    from perf.gpu_benchmark.variants import VARIANTS

    return "eager" if VARIANTS[tier].speed.compile == Compile.NONE else "compiled"


def applicable(tier: str, mode: str) -> bool:
    """`jit` (plain serving) for every tier; the warm-up before READY of the tier's kind (WARMED_MODE)."""
    return mode == "jit" or mode == WARMED_MODE[tier_kind(tier)]


def estimate(tier: str, mode: str, args, requests_done: int = 0) -> dict[str, float]:
    """Seconds of one tier x mode's export, start -> READY and requests (left after `requests_done`)."""
    cost = GPU_COST if args.device == Device.GPU else CPU_COST
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


