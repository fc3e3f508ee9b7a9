"""LoRA on a GPU: swap time, per-step overhead of an active adapter, few-step preset end to end.

One run on one GPU, the full Wan2.2-T2V-A14B architecture with RANDOM weights (as perf/gpu_benchmark; its pieces
are reused here) and a random rank-`--rank` LoRA pair in the layout Wan2.2-Lightning ships (every block's self- and
cross-attention q/k/v/o and both FFN Linears; devtools/tiny_lora.write_random_lora), exported as `lightning`, the
name the `lightning_4step` preset uses:

1. configs-only checkpoint; the LoRA pair (seeded, cached in --workdir; ~0.6 GB per expert at rank 64);
2. diffusers' WanPipeline BF16 baseline at --baseline-steps CFG steps (its own process, measure.run_baseline) and
   its projection to 40 steps: measured end to end + (40 - steps) x its mean step;
3. per tier (`fp8`: FP8 GEMMs + FP8 attention + cuDNN VAE autotuning, eager; `bf16`: eager; compile is refused
   with LoRA): export with the pair, start tritonserver, two warm-ups (LoRA with CFG; the preset at 2 steps: the
   batch-1 shapes), then measured requests, same prompt and seed: `base` (lora "", CFG), `lora` (CFG, scale 1),
   `preset` (lightning_4step: 4 Euler steps, no CFG), and --swap-requests more alternating base / lora;
4. per-step time per expert from Triton's statistics (compute_infer / steps, as the GPU benchmark), swap times
   from the experts' `lora_selected` events (ExpertAdapters.select's wall time), the adapters' load time from the
   server log, batch sizes of every expert call from `expert_forward` events;
5. results.json (after every request: a killed run keeps what it measured) and table.md in --out-dir.

On the GPU host, after `source gpu-bundle/activate.sh` (about 8 minutes on one H200; results in
perf/results/gpu/lora/ unless --out-dir says otherwise):
    python3 -m perf.lora_benchmark --deadline-s 480

CPU dry run of the whole flow (tiny architecture; tests/test_lora_benchmark.py; FP8 needs a GPU, so bf16 only):
    python -m perf.lora_benchmark --device cpu --preset tiny --height 32 --width 48 --num-frames 9 --tiers bf16 \\
        --out-dir /tmp/lora-bench-dry --workdir /tmp/lora-bench-work
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from perf.gpu_benchmark import log
from perf.gpu_benchmark.cli import add_common_args, name_list, print_results, time_left, write_run_record
from perf.gpu_benchmark.gpu_monitor import GpuMemoryPeak, wait_gpu_free
from perf.gpu_benchmark.measure import configs_checkpoint, prepare_folders, request_values, run_baseline, start_server
from perf.gpu_benchmark.quality import psnr
from perf.gpu_benchmark.report import cell
from perf.gpu_benchmark.stats import count_steps, overhead, read_stats_after, stats_delta
from perf.gpu_benchmark.variants import EXPERTS, Variant, export_variant
from wan22_triton.components.orchestrator import ORCHESTRATOR, STAGE_SECONDS, VIDEO
from wan22_triton.operations import events
from wan22_triton.manifest import SpeedOptions
from wan22_triton.options import Attention, Device, Quantization
from wan22_triton.request.contract import (HEIGHT, LORA_SCALE, NEGATIVE_PROMPT, NUM_FRAMES, NUM_INFERENCE_STEPS, PROMPT,
                                           SEED, WIDTH)
# the request inputs; this module's LORA and PRESET are the preset's adapter and the preset
from wan22_triton.request.contract import LORA as LORA_INPUT, PRESET as PRESET_INPUT
from wan22_triton.request.presets import PRESETS, find_preset

PRESET = find_preset(PRESETS, "lightning_4step")
LORA = PRESET.lora  # the preset's adapter name: the pair is exported under it
TIERS = {
    "fp8": Variant("Triton FP8 GEMMs + FP8 attention, eager (LoRA)",
                   SpeedOptions(quantization=Quantization.FP8_ROWWISE, attention=Attention.FP8_CUDNN),
                   vae_cudnn_benchmark=True),
    "bf16": Variant("Triton BF16 eager (LoRA)", SpeedOptions()),
}
DIFFUSERS_STEPS = 40  # the default the few-step preset is compared with
TARGETS = {"swap_pair_max_s": 1.0, "step_overhead_pct": 10.0, "preset_speedup_vs_diffusers_40": 15.0}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m perf.lora_benchmark", description=__doc__.split("\n\n")[0])
    add_common_args(parser, name="lora", workdir="/tmp/wan22-lora-bench")
    parser.add_argument("--tiers", default="fp8,bf16", help=f"comma list of {list(TIERS)}")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--num-frames", type=int, default=81)
    parser.add_argument("--steps", type=int, default=2, help="CFG steps of the base and LoRA requests")
    parser.add_argument("--baseline-steps", type=int, default=2, help="diffusers CFG steps (projected to 40)")
    parser.add_argument("--swap-requests", type=int, default=2, help="more requests alternating base / lora")
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--lora-seed", type=int, default=15, help="high-noise file; the low-noise one: seed + 1")
    parser.add_argument("--lora-delta", type=float, default=0.3,
                        help="|B·A·x| / |x| of each adapted layer (visible on the video, finite)")
    parser.add_argument("--no-baseline", dest="baseline", action="store_false", help="Triton tiers only")
    args = parser.parse_args(argv)
    # what the reused gpu_benchmark pieces read (describe_run, start_server, run_baseline)
    args.shared_memory, args.shm_region, args.reference_variant, args.warmup_steps = True, "reused", "", args.steps
    return args


def write_lora_pair(checkpoint: Path, args) -> dict[str, Any]:
    """The random pair for the checkpoint's experts, reused from --workdir when the same (config, rank, seed,
    delta) was written before (the A14B files take a while on a few cores)."""
    from devtools.tiny_lora import write_random_lora

    files, t0 = [], time.perf_counter()
    for index, folder in enumerate(("transformer", "transformer_2")):
        config = json.loads((checkpoint / folder / "config.json").read_text())
        key = json.dumps([config, args.rank, args.lora_seed + index, args.lora_delta], sort_keys=True)
        digest = hashlib.sha256(key.encode()).hexdigest()[:12]
        path = args.workdir / "lora" / f"{folder}-r{args.rank}-{digest}.safetensors"
        if not path.exists():
            tmp = path.with_suffix(".tmp.safetensors")
            write_random_lora(config, tmp, args.rank, args.lora_seed + index, args.lora_delta)
            tmp.rename(path)
        files.append(path)
    from safetensors import safe_open

    with safe_open(str(files[0]), "pt") as f:
        keys = list(f.keys())
        params = sum(int(np.prod(f.get_slice(k).get_shape())) for k in keys if not k.endswith(".alpha"))
    return {"name": LORA, "rank": args.rank, "seed_high": args.lora_seed, "seed_low": args.lora_seed + 1,
            "delta": args.lora_delta,
            "layout": "diffusion_model.blocks.N.{self_attn,cross_attn}.{q,k,v,o} + ffn.{0,2}, "
                      "lora_down/lora_up/alpha (Wan2.2-Lightning's), BF16, alpha = rank",
            "adapted_layers": sum(k.endswith(".lora_down.weight") for k in keys), "params_per_expert_m": params / 1e6,
            "file_gb": [p.stat().st_size / 1e9 for p in files], "files": [str(p) for p in files],
            "write_or_reuse_s": time.perf_counter() - t0}


def preset_values(args, steps: int | None = None) -> dict[str, Any]:
    """The preset request: its own steps, guidance (off) and LoRA; `steps` overrides (the warm-up)."""
    values = {PROMPT: args.prompt, NEGATIVE_PROMPT: args.negative_prompt, NUM_FRAMES: args.num_frames,
              HEIGHT: args.height, WIDTH: args.width, SEED: args.seed, PRESET_INPUT: PRESET.name}
    if steps is not None:
        values[NUM_INFERENCE_STEPS] = steps
    return values


def request_plan(args) -> list[tuple[str, dict[str, Any]]]:
    """(kind, request values), warm-ups first (kind `warmup_*`: not in the statistics derived below)."""
    base = {**request_values(args, args.steps), LORA_INPUT: ""}
    lora = {**request_values(args, args.steps), LORA_INPUT: LORA, LORA_SCALE: 1.0}
    plan = [("warmup_lora", lora), ("warmup_preset", preset_values(args, 2)),
            ("base", base), ("lora", lora), ("preset", preset_values(args))]
    for i in range(args.swap_requests):
        plan.append((("base", "lora")[i % 2] + f"_{i // 2 + 2}", (base, lora)[i % 2]))
    return plan


def measured_request(url: str, client, admin: dict, key: str, shm, values: dict, served: int,
                     events_file: Path) -> tuple[dict[str, Any], np.ndarray]:
    """One request with Triton's statistics before and after (the orchestrator's count: `served` before it) and
    the events it caused: steps and step time per expert, swaps, the batch of every expert call."""
    from clients import grpc_client

    before = read_stats_after(client, served, headers=admin)
    offset = events.end_offset(events_file)
    t0 = time.perf_counter()
    out = grpc_client.generate(url, values, shared_memory=shm, admin_key=key)
    e2e = time.perf_counter() - t0
    models = stats_delta(before, read_stats_after(client, served + 1, headers=admin))
    found = events.read_events(events_file, offset)  # every model writes its events before it answers
    row: dict[str, Any] = {"e2e_s": e2e, "models": models, STAGE_SECONDS: out[STAGE_SECONDS]}
    count_steps(row)
    selected = [e for e in found if e["event"] == "lora_selected"]
    row["lora_selected"] = [{k: e.get(k) for k in ("model", "lora", "previous", "scale", "seconds")} for e in selected]
    row["step_s_without_swaps"] = {  # the switch runs inside the expert's first call after it
        e: (models[e]["compute_infer_s"] - sum(s["seconds"] for s in selected if s["model"] == e)) / row["steps"][e]
        for e in EXPERTS if row["steps"][e]}
    row["forward_batches"] = {e: [f["batch"] for f in found if f["event"] == "expert_forward" and f["model"] == e]
                              for e in EXPERTS}
    row.update(overhead(e2e, models))
    row.pop("models")
    row["models_compute_s"] = {m: v["compute_infer_s"] for m, v in models.items()}
    return row, out[VIDEO]


def adapter_load_s(events_file: Path) -> dict[str, float]:
    """{expert: seconds} from the experts' `lora_loaded` events (written before the server is ready)."""
    return {e["model"]: e["seconds"] for e in events.read_events(events_file) if e["event"] == "lora_loaded"}


def export_tier(checkpoint: Path, repo: Path, tier: Variant, pair: list[str], args) -> None:
    """variants.export_variant's repository, with the LoRA pair (`--lora lightning=HIGH,LOW`)."""
    from export.loras import LoraSource

    export_variant(checkpoint, repo, tier, args, lora=(LoraSource(LORA, tuple(pair)),))


def run_tier(name: str, tier: Variant, checkpoint: Path, pair: list[str], args, row: dict[str, Any],
             save: Callable[[], None]) -> None:
    """Export, serve, the request plan; fills `row` (saved after every request)."""
    import tritonclient.grpc as grpcclient

    from clients import grpc_client

    repo = args.workdir / f"repo-lora-{name}"
    t0 = time.perf_counter()
    export_tier(checkpoint, repo, tier, pair, args)
    row["export_s"] = time.perf_counter() - t0
    server, events_file = start_server(f"lora-{name}", repo, args)
    peak = GpuMemoryPeak()
    row["requests"] = {}
    with peak:
        t0 = time.perf_counter()
        server.start()
        row["server_start_s"] = time.perf_counter() - t0
        row["adapter_load_s"] = adapter_load_s(events_file)
        log(f"{name}: tritonserver ready in {row['server_start_s']:.1f}s; adapters loaded in {row['adapter_load_s']}")
        try:
            url, key, admin = server.grpc_url, server.admin_key, server.admin_headers("grpc")
            with grpcclient.InferenceServerClient(url) as client:
                size = grpc_client.video_bytes(client, request_values(args, args.steps), ORCHESTRATOR)
                with grpc_client.VideoSharedMemory(url, size, key) as shm:
                    for served, (kind, values) in enumerate(request_plan(args)):
                        request, video = measured_request(url, client, admin, key, shm, values, served, events_file)
                        row["requests"][kind] = request
                        np.save(args.workdir / f"video-{name}-{kind}.npy", video)
                        swaps = [(s["model"][12:], s["lora"], round(s["seconds"], 4))
                                 for s in request["lora_selected"]]
                        log(f"{name}: {kind} {request['e2e_s']:.2f}s, steps {request['steps']}, step s "
                            f"{ {e[12:]: round(v, 4) for e, v in request['step_s'].items()} }, swaps {swaps}")
                        save()
        finally:
            server.stop()
    row["peak_gpu_memory_gb"] = peak.peak_gb
    row["gpu_processes_at_peak_gb"] = peak.processes_at_peak
    summarize_tier(name, row, args)


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def summarize_tier(name: str, row: dict[str, Any], args) -> None:
    """Per-expert base vs LoRA step (CFG), overhead, swaps, the preset's end to end, LoRA-vs-base video."""
    measured = {k: r for k, r in row["requests"].items() if not k.startswith("warmup")}
    of_kind = {kind: [r for k, r in measured.items() if k.split("_")[0] == kind] for kind in ("base", "lora")}
    steps: dict[str, dict[str, float]] = {}
    for kind, rows in of_kind.items():
        for field in ("step_s", "step_s_without_swaps"):
            steps.setdefault(field, {})[kind] = {
                e: _mean([r[field][e] for r in rows if e in r[field]]) for e in EXPERTS}
    row["steps"] = steps
    bare = steps["step_s_without_swaps"]
    row["overhead_pct"] = {e: 100 * (bare["lora"][e] / bare["base"][e] - 1) for e in EXPERTS
                           if bare["lora"][e] and bare["base"][e]}
    with_swaps = steps["step_s"]
    row["overhead_pct_with_swaps"] = {e: 100 * (with_swaps["lora"][e] / with_swaps["base"][e] - 1) for e in EXPERTS
                                      if with_swaps["lora"][e] and with_swaps["base"][e]}
    row["e2e_s"] = {kind: [r["e2e_s"] for r in rows] for kind, rows in of_kind.items()}
    # swaps: each measured request that switched is one switch of the pair (both experts)
    per_expert = {e: [s["seconds"] for r in measured.values() for s in r["lora_selected"] if s["model"] == e]
                  for e in EXPERTS}
    pairs = [sum(s["seconds"] for s in r["lora_selected"]) for r in measured.values() if r["lora_selected"]]
    row["swap_s"] = {
        "per_expert": {e: {"n": len(v), "mean": _mean(v), "max": max(v) if v else None} for e, v in per_expert.items()},
        "pair": {"n": len(pairs), "mean": _mean(pairs), "max": max(pairs) if pairs else None},
        "synchronised": False,  # select launches no GPU work (wan22_triton/request/lora.py): wall time is the cost
    }
    preset = measured.get("preset")
    if preset:
        batches = preset["forward_batches"]
        row["preset"] = {"e2e_s": preset["e2e_s"], "steps": preset["steps"], "step_s": preset["step_s"],
                         "forward_batches": batches,
                         "cfg_off": all(b == 1 for e in EXPERTS for b in batches[e]),
                         "expert_calls": sum(len(batches[e]) for e in EXPERTS),
                         "triton_overhead_s": preset["triton_overhead_s"],
                         "triton_overhead_pct": preset["triton_overhead_pct"],
                         STAGE_SECONDS: preset[STAGE_SECONDS]}
    videos = {k: args.workdir / f"video-{name}-{k}.npy" for k in ("base", "lora")}
    if all(p.exists() for p in videos.values()):
        base, lora = np.load(videos["base"]), np.load(videos["lora"])
        row["lora_vs_base"] = {"psnr_db": psnr(lora, base), "differs": bool(not np.array_equal(lora, base)),
                               "frames_mean_std": {"base": [float(base.mean()), float(base.std())],
                                                   "lora": [float(lora.mean()), float(lora.std())]}}
    row["status"] = "ok"


def add_derived(results: dict[str, Any]) -> None:
    """Speed-ups of each tier's preset against the projected 40-step diffusers run, targets, fp8 vs bf16 video."""
    base = results.get("baseline", {})
    projected = base.get("projected_40_steps", {}).get("e2e_s")
    for row in results["tiers"].values():
        preset = row.get("preset")
        if not preset:
            continue
        preset["speedup_vs_diffusers_40"] = projected / preset["e2e_s"] if projected else None
        row["speedup_vs_diffusers_40"] = preset["speedup_vs_diffusers_40"]
        pair_max = row.get("swap_s", {}).get("pair", {}).get("max")
        worst = max(row.get("overhead_pct", {}).values(), default=None)
        row["targets"] = {
            "swap_pair_max_s_le_1": None if pair_max is None else pair_max <= TARGETS["swap_pair_max_s"],
            "step_overhead_le_10pct": None if worst is None else worst <= TARGETS["step_overhead_pct"],
            "preset_speedup_ge_15x": (None if not preset["speedup_vs_diffusers_40"] else
                                      preset["speedup_vs_diffusers_40"] >= TARGETS["preset_speedup_vs_diffusers_40"]),
        }


def compare_tiers(results: dict[str, Any], args) -> None:
    """The fp8 tier's preset video against the bf16 tier's (same weights, seed and LoRA)."""
    paths = {t: args.workdir / f"video-{t}-preset.npy" for t in ("fp8", "bf16")}
    rows = results["tiers"]
    if all(rows.get(t, {}).get("status") == "ok" and paths[t].exists() for t in paths):
        fp8, bf16 = np.load(paths["fp8"]), np.load(paths["bf16"])
        rows["fp8"]["preset_vs_bf16"] = {"psnr_db": psnr(fp8, bf16), "equal": bool(np.array_equal(fp8, bf16))}


def render_table(results: dict[str, Any]) -> str:
    base = results.get("baseline", {})
    proj = base.get("projected_40_steps", {})
    lines = [f"diffusers BF16 baseline: {base.get('status', 'not run')}"
             + (f", {base['e2e_s']:.2f} s at {sum(base['steps'].values())} CFG steps "
                f"(step {base['step_mean_s']:.3f} s); {DIFFUSERS_STEPS} steps projected: {proj['e2e_s']:.1f} s"
                if base.get("status") == "ok" else ""), ""]
    head = ("| tier | step s base high / low | step s LoRA high / low | overhead % high / low | swap s per pair "
            "mean / max | adapter load s | preset e2e s | speed-up vs diffusers 40 | LoRA vs base PSNR dB "
            "| peak GPU GiB |")
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for name, row in results["tiers"].items():
        if row.get("status") != "ok":
            lines.append(f"| {row.get('label', name)} | {' '.join(str(row.get('status')).split())[:160]} |" + " |" * 8)
            continue
        bare = row["steps"]["step_s_without_swaps"]
        pair = row["swap_s"]["pair"]
        over = row["overhead_pct"]
        lines.append(
            f"| {row['label']} | {' / '.join(cell(bare['base'][e], '.3f') for e in EXPERTS)} "
            f"| {' / '.join(cell(bare['lora'][e], '.3f') for e in EXPERTS)} "
            f"| {' / '.join(cell(over.get(e), '+.1f') for e in EXPERTS)} "
            f"| {cell(pair['mean'], '.4f')} / {cell(pair['max'], '.4f')} "
            f"| {', '.join(f'{v:.2f}' for v in row['adapter_load_s'].values()) or '-'} "
            f"| {cell(row.get('preset', {}).get('e2e_s'), '.2f')} | {cell(row.get('speedup_vs_diffusers_40'), '.1f')}x "
            f"| {cell(row.get('lora_vs_base', {}).get('psnr_db'), '.1f')} "
            f"| {cell(row.get('peak_gpu_memory_gb'), '.1f')} |")
    fp8 = results["tiers"].get("fp8", {}).get("preset_vs_bf16")
    if fp8:
        lines += ["", f"fp8 preset video vs bf16 preset video: PSNR {fp8['psnr_db']:.1f} dB"]
    return "\n".join(lines)


def save(results: dict[str, Any], args) -> None:
    add_derived(results)
    (args.out_dir / "results.json").write_text(json.dumps(results, indent=2, default=str))
    (args.out_dir / "table.md").write_text(render_table(results) + "\n")


def estimate_s(name: str, results: dict[str, Any], args) -> float:
    """A tier's likely wall time (export, start, requests), for --deadline-s; from the baseline's step."""
    base = results.get("baseline", {})
    step = base.get("step_mean_s") or 7.0
    factor = 0.7 if name == "fp8" else 1.0
    cfg_steps = args.steps * (3 + args.swap_requests)
    batch1_steps = 2 + PRESET.num_inference_steps
    per_request = (base.get("vae_decode_s") or 2.0) + 1.0
    return 60.0 + (40.0 if name == "fp8" else 0.0) + factor * step * (cfg_steps + 0.5 * batch1_steps) \
        + per_request * (5 + args.swap_requests)


def baseline_phase(checkpoint: Path, args) -> dict[str, Any]:
    """run_baseline at --baseline-steps, and its projection to 40 steps (stated as one in the JSON)."""
    bargs = copy.copy(args)
    bargs.steps = args.baseline_steps
    row = run_baseline(checkpoint, bargs)
    total = sum(row["steps"].values())
    row["step_mean_s"] = row["denoise_compute_s"] / total
    row["projected_40_steps"] = {
        "e2e_s": row["e2e_s"] + (DIFFUSERS_STEPS - total) * row["step_mean_s"],
        "how": f"PROJECTION, not measured: e2e at {total} steps + ({DIFFUSERS_STEPS} - {total}) x mean CFG step",
    }
    return row


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    names = name_list(args.tiers, TIERS, "tiers")
    if args.device == Device.CPU and "fp8" in names:
        raise SystemExit("the fp8 tier needs --device gpu (the export refuses FP8 and its attention on a CPU); "
                         "use --tiers bf16")
    if args.steps < 2:
        raise SystemExit("--steps must be >= 2 (one step per expert at least)")
    prepare_folders(args, "--device cpu --preset tiny --tiers bf16")

    from perf.gpu_benchmark.__main__ import describe_run
    from wan22_triton.checkpoint import read_checkpoint

    checkpoint = configs_checkpoint(args)
    info = read_checkpoint(checkpoint)
    results = describe_run(args, argv, checkpoint, info, {}, module="perf.lora_benchmark")
    results.pop("variants")
    results["meta"].pop("reference_variant")
    results["meta"]["ours"] += ("; LoRA unfused, chosen per call (wan22_triton/request/lora.py); "
                                "compile refused with LoRA")
    results["workload"].update({"baseline_steps": args.baseline_steps, "swap_requests": args.swap_requests,
                                "preset": {"name": PRESET.name, **PRESET.settings(), "sampler": PRESET.sampler,
                                           "lora": PRESET.lora}})
    results["workload"].pop("warmup_steps")
    results["targets"] = TARGETS
    results["tiers"] = {}
    write_run_record(args.out_dir, results["meta"])
    save(results, args)

    results["lora"] = write_lora_pair(checkpoint, args)
    log(f"LoRA pair rank {args.rank}: {results['lora']['adapted_layers']} layers, "
        f"{results['lora']['params_per_expert_m']:.1f}M params, {results['lora']['file_gb']} GB "
        f"({results['lora']['write_or_reuse_s']:.1f}s)")
    save(results, args)

    if args.baseline:
        try:
            results["baseline"] = baseline_phase(checkpoint, args)
            log(f"baseline: {results['baseline']['e2e_s']:.2f}s at {args.baseline_steps} steps; 40 steps projected "
                f"{results['baseline']['projected_40_steps']['e2e_s']:.1f}s; GPU memory after: {wait_gpu_free()} GiB")
        except Exception as e:
            results["baseline"] = {"status": f"failed: {type(e).__name__}: {e}"[:400]}
            log(f"baseline FAILED: {e}")
    else:
        results["baseline"] = {"status": "not run (--no-baseline)"}
    save(results, args)

    for name in names:
        tier = TIERS[name]
        left = time_left(args)
        if left < estimate_s(name, results, args):
            results["tiers"][name] = {"label": tier.label, "status": f"skipped: {left:.0f}s left of the deadline"}
            log(f"{name}: skipped ({left:.0f}s left)")
            save(results, args)
            continue
        row = results["tiers"][name] = {**tier.results_row(), "status": "running"}
        try:
            run_tier(name, tier, checkpoint, results["lora"]["files"], args, row, lambda: save(results, args))
        except Exception as e:
            log(f"{name}: FAILED {type(e).__name__}: {e}")
            row["status"] = f"failed: {type(e).__name__}: {e}"[:400]
        save(results, args)
        log(f"{name}: GPU memory after stop: {wait_gpu_free()} GiB")

    compare_tiers(results, args)
    save(results, args)
    print_results(render_table(results), args.out_dir)


if __name__ == "__main__":
    main()
