"""Wan2.2 T2V-A14B served by Triton against diffusers' WanPipeline (BF16), side by side on one GPU.

The command line of the GPU benchmark (what one run does, and where each part lives: perf/gpu_benchmark/__init__.py).
On the GPU host, after `source gpu-bundle/activate.sh` (or through perf/gpu_host/benchmark.sh); results in
perf/results/gpu/gpu_benchmark/ unless --out-dir says otherwise (docs/performance.md):
    python3 -m perf.gpu_benchmark --variants fp8_attention
    python3 -m perf.gpu_benchmark --variants fp8_attention,flash_attention,compile --measured-requests 3 \
        --out-dir perf/results/gpu/speed_tiers

Low-memory mode (the `*_lowmem` variants): `--no-baseline --reference-variant bf16` runs only the Triton variants and
compares each video with the reference variant's; the measured request's swaps (each model's load/release times,
from the server's events), peak GPU memory of the measured request alone, per process at the peak, and
`--te-cpu-probe` (one UMT5-XXL block on the CPU: the cost of running the text encoder from host memory instead of
swapping it) are recorded:
    python3 -m perf.gpu_benchmark --variants bf16_lowmem,bf16 --no-baseline --reference-variant bf16 \\
        --te-cpu-probe --out-dir perf/results/gpu/low_memory

CPU dry run of the whole flow (tiny architecture, no GPU; tests/test_gpu_benchmark.py runs it):
    python -m perf.gpu_benchmark --device cpu --preset tiny --height 32 --width 48 --num-frames 9 \\
        --variants bf16,compile --out-dir /tmp/gpu-bench-dry
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from wan22_triton.request.contract import (FLOW_SHIFT, GUIDANCE_SCALE, GUIDANCE_SCALE_2, HEIGHT, NEGATIVE_PROMPT,
                                           NUM_FRAMES, PROMPT, SEED, WIDTH)

from . import log
from .cli import add_common_args, machine_meta, name_list, print_results, time_left, write_run_record
from .gpu_monitor import wait_gpu_free
from .measure import configs_checkpoint, prepare_folders, run_baseline, run_variant, text_encoder_cpu_probe
from .quality import compare_to_reference
from .report import render_table, save
from .variants import DEFAULT_VARIANTS, VARIANTS, estimate_s


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m perf.gpu_benchmark", description=__doc__.split("\n\n")[0])
    add_common_args(parser, name="gpu_benchmark", workdir="/tmp/wan22-gpu-bench")
    parser.add_argument("--variants", default=DEFAULT_VARIANTS, help=f"comma list of {list(VARIANTS)}")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--num-frames", type=int, default=81)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--no-shared-memory", dest="shared_memory", action="store_false",
                        help="frames in the gRPC response instead of a system shared-memory region")
    parser.add_argument("--warmup-steps", type=int, default=2, help="Triton warm-up request (2: both experts)")
    parser.add_argument("--shm-region", choices=("reused", "per-request"), default="reused",
                        help="with shared memory: one region for all requests of a variant, or a fresh one each")
    parser.add_argument("--measured-requests", type=int, default=1,
                        help="measured requests per variant; the table reports the first, results.json all")
    parser.add_argument("--no-baseline", dest="baseline", action="store_false",
                        help="Triton variants only (no diffusers run, no parity probes, no repeat)")
    parser.add_argument("--reference-variant", default="",
                        help="compare every variant's video with this variant's (e.g. bf16 for the *_lowmem ones)")
    parser.add_argument("--te-cpu-probe", action="store_true",
                        help="time one UMT5 block on the CPU (text encoder run from host memory, vs swapping it)")
    parser.add_argument("--no-repeat-baseline", dest="repeat_baseline", action="store_false",
                        help="skip running the baseline again after the variants (drift check)")
    parser.add_argument("--resume", action="store_true",
                        help="keep phases already in --out-dir/results.json (baseline files must be in --workdir)")
    return parser.parse_args(argv)


def describe_run(args, argv: list[str] | None, checkpoint: Path, info, previous: dict[str, Any],
                 module: str = "perf.gpu_benchmark") -> dict[str, Any]:
    """results.json's `meta` (where, what, with which versions) and `workload`, and the phases of `previous`
    (--resume) that finished."""
    import torch

    from perf.flops import transformer_step_flops
    from wan22_triton.engines.random_weights import random_component

    transformer_config = json.loads((checkpoint / "transformer" / "config.json").read_text())
    latent = info.latent_shape(args.num_frames, args.height, args.width)[1:]
    meta_model = random_component("transformer", checkpoint / "transformer", 0, torch.bfloat16, "meta")
    params_b = sum(p.numel() for p in meta_model.parameters()) / 1e9
    del meta_model
    return {
        "meta": {
            **machine_meta(module, argv),
            "reference_variant": args.reference_variant,
            "server_args": args.server_args,
            "checkpoint": (
                f"configs-only Wan2.2-T2V-A14B ({args.preset}"
                f"{f', {args.layers} layers' if args.layers else ''}), RANDOM weights "
                f"(weights seed {args.weights_seed}, random_weights.random_component; identical on both sides)"
            ),
            "baseline": "diffusers.WanPipeline, whole pipeline BF16 (VAE too), eager, default attention, no offload",
            "ours": "tritonserver (gRPC client -> BLS orchestrator -> python-backend models), ENGINE=torch, "
                    f"--device {args.device} --precision {args.precision}; frames returned "
                    + (f"through system shared memory (region {args.shm_region})" if args.shared_memory
                       else "in the gRPC response"),
        },
        "workload": {
            HEIGHT: args.height, WIDTH: args.width, NUM_FRAMES: args.num_frames, "steps": args.steps,
            GUIDANCE_SCALE: args.guidance_scale, GUIDANCE_SCALE_2: args.guidance_scale_2, FLOW_SHIFT: 3.0,
            SEED: args.seed, PROMPT: args.prompt, NEGATIVE_PROMPT: args.negative_prompt,
            "warmup_steps": args.warmup_steps,
            "latent_shape": [info.in_channels, *latent],
            "transformer_params_b": params_b,
            "transformer_step_pflop": transformer_step_flops(transformer_config, latent, info.text_len, batch=2) / 1e15,
        },
        "baseline": previous.get("baseline", {}),
        "variants": {k: v for k, v in previous.get("variants", {}).items() if v.get("status") == "ok"},
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    names = name_list(args.variants, VARIANTS, "variants")
    prepare_folders(args, "--device cpu --preset tiny ...")

    from wan22_triton.checkpoint import read_checkpoint

    checkpoint = configs_checkpoint(args)
    info = read_checkpoint(checkpoint)
    results_path = args.out_dir / "results.json"
    previous = json.loads(results_path.read_text()) if args.resume and results_path.exists() else {}
    results = describe_run(args, argv, checkpoint, info, previous)
    write_run_record(args.out_dir, results["meta"])
    log(f"{results['meta']['gpu']}: {results['meta']['checkpoint']}; one CFG step = "
        f"{results['workload']['transformer_step_pflop']:.3f} PFLOP")

    if args.te_cpu_probe:
        results["text_encoder_cpu_probe"] = text_encoder_cpu_probe(checkpoint, info.text_len)
        log(f"text encoder on the CPU (probe): {results['text_encoder_cpu_probe']}")
    if not args.baseline:
        results["baseline"] = {"status": "not run (--no-baseline)"}
        args.repeat_baseline = False
    elif results["baseline"].get("status") != "ok" or not (args.workdir / "baseline_frames.npy").exists():
        try:
            results["baseline"] = run_baseline(checkpoint, args)
        except Exception as e:
            results["baseline"] = {"status": f"failed: {type(e).__name__}: {e}"}
            save(results, args)
            raise
        save(results, args)
        log(f"baseline: {results['baseline']['e2e_s']:.2f}s end to end; GPU memory after exit: {wait_gpu_free()} GiB")

    for name in names:
        if results["variants"].get(name, {}).get("status") == "ok":
            continue
        variant = VARIANTS[name]
        left = time_left(args)
        if left < estimate_s(variant, results):
            results["variants"][name] = {"label": variant.label, "status": f"skipped: {left:.0f}s left of the deadline"}
            log(f"{name}: skipped ({left:.0f}s left)")
            save(results, args)
            continue
        try:
            results["variants"][name] = run_variant(name, variant, checkpoint, args)
        except Exception as e:
            log(f"{name}: FAILED {type(e).__name__}: {e}")
            results["variants"][name] = {"label": variant.label, "status": f"failed: {type(e).__name__}: {e}"[:400]}
        save(results, args)
        log(f"{name}: GPU memory after stop: {wait_gpu_free()} GiB")

    compare_to_reference(results, args)
    if args.repeat_baseline:
        try:
            results["baseline_repeat"] = run_baseline(checkpoint, args, repeat=True)
            log(f"baseline again: {results['baseline_repeat']['e2e_s']:.2f}s end to end")
        except Exception as e:
            results["baseline_repeat"] = {"label": "diffusers BF16 (baseline, again last)",
                                          "status": f"failed: {type(e).__name__}: {e}"}
    save(results, args)
    print_results(render_table(results), args.out_dir, "results.json, table.md, gpu_benchmark.png")


if __name__ == "__main__":
    main()
