"""The command line of the first-request benchmark: flags, the run's description, the order of the phases."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from perf.gpu_benchmark import log
from wan22_triton.options import Device, Precision
from wan22_triton.request.contract import GUIDANCE_SCALE, GUIDANCE_SCALE_2, NEGATIVE_PROMPT, PROMPT, SEED
from perf.gpu_benchmark.cli import (add_common_args, machine_meta, name_list, print_results, time_left,
                                    write_run_record)

from .export_phase import export_phase, exported_repo, write_shape_spec
from .plan import (DEFINITIONS, MODES, TIERS, applicable, parse_sizes, phase_estimate, print_estimates,
                   request_order, size_key, tier_kind)
from .report import render_table, save
from .serve_phase import compare_modes, derive, serve_phase


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m perf.first_request_benchmark",
                                description="First request after READY, with and without compile artifacts.")
    add_common_args(p, name="first_request", workdir="/tmp/wan22-first-request", precision=None,
                    startup_timeout=1800.0)
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
    p.add_argument("--request-timeout", type=float, default=1800.0)
    p.add_argument("--phases", default="export,serve",
                   help="export: export each tier x mode into --workdir; serve: start, READY and the requests on the "
                        "repositories exported there (another process may do each: one command per 10 minutes)")
    p.add_argument("--estimate-only", action="store_true", help="print the phases' estimated seconds and exit")
    args = p.parse_args(argv)
    args.precision = args.precision or (Precision.BF16 if args.device == Device.GPU else Precision.FP32)
    args.size_list = parse_sizes(args.sizes)
    args.tier_list = name_list(args.tiers, TIERS, "tiers")
    args.mode_list = name_list(args.modes, MODES, "modes")
    args.phase_list = name_list(args.phases, ("export", "serve"), "phases")
    if args.cfg == "off":
        args.guidance_scale = args.guidance_scale_2 = 1.0
    return args


def describe(args, argv: list[str] | None, served: list[str], spec: Path) -> dict[str, Any]:
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
            "spec_sizes": served, "steps": args.steps, "cfg": args.cfg, GUIDANCE_SCALE: args.guidance_scale,
            GUIDANCE_SCALE_2: args.guidance_scale_2, SEED: args.seed, PROMPT: args.prompt,
            NEGATIVE_PROMPT: args.negative_prompt, "device": args.device, "precision": args.precision,
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
    write_run_record(args.out_dir, results["meta"])
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
                    log(f"{tier}/{mode}: GPU memory after the export: {wait_gpu_free()} GiB")
                if "serve" in args.phase_list:
                    serve_phase(tier, mode, exported_repo(tier, mode, args, run), args, results)
            except Exception as e:
                log(f"{tier}/{mode}: FAILED {type(e).__name__}: {e}")
                run["status"] = f"failed: {type(e).__name__}: {e}"[:400]
                derive(run, args)
            run["phase_wall_s"] = time.monotonic() - started
            compare_modes(tier, results, args)
            save(results, args)
            log(f"{tier}/{mode}: done in {run['phase_wall_s']:.0f}s; GPU memory after stop: {wait_gpu_free()} GiB")
            print_estimates(args, results)
    save(results, args)
    print_results(render_table(results), args.out_dir)
