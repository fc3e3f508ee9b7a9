"""Where does a compile of the fast tier's block spend its time: just in time, again in the same process, and in a
fresh process that finds every graph in a cache (the served expert's warm-up with `--compile-artifacts`)?

A full-width A14B expert cut to `--layers` blocks (random weights), FP8 GEMMs + FP8 attention, compiled the way the
served expert is (`compile_repeated_blocks(fullgraph=True, dynamic=False)`), batch 2 at 480x832x81. Phases, each
its own process with its own Inductor cache directory (TORCHINDUCTOR_CACHE_DIR), so caches are what each phase says:

    jit        empty cache: compile, then `torch.compiler.reset()` and compile again in the same process (the
               export's second expert), then save torch's portable cache artifacts (the export's artifacts.bin)
    artifacts  empty cache, the artifacts loaded first: the served expert's warm-up
    disk       the jit phase's own cache directory, no artifacts: what a warm disk cache alone gives

Each phase records the first forward (compile + run) and a second one (run only), Inductor's cache counters and
torch's own per-stage compile times (`torch._dynamo.utils.compile_times`). Run a phase under `py-spy record` for
a sampled profile of where the rest goes.

    python -m perf.compile_profile --out-dir perf/results/gpu/compile_profile
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

PHASES = ("jit", "artifacts", "disk")
# Inductor's autotuning of its own kernels. torchao's quantize_ switches on coordinate descent over every direction
# (its `set_inductor_config`, on by default) for the whole process: "torchao" keeps that, the others turn it down.
TUNINGS = {"torchao": {}, "coordesc": {"coordinate_descent_check_all_directions": False},
           "off": {"coordinate_descent_tuning": False, "coordinate_descent_check_all_directions": False}}


def forward_seconds(model: torch.nn.Module, inputs: dict) -> float:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    with torch.inference_mode():
        model(**inputs)
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def inductor_counters() -> dict[str, int]:
    from torch._dynamo.utils import counters

    return {k: v for k, v in counters["inductor"].items() if "cache" in k} | {
        "graphs": counters["stats"]["unique_graphs"]}


def compiled_block(layers: int, tuning: str = "torchao") -> tuple[torch.nn.Module, dict]:
    from perf.fp16_probe import a14b_blocks_480p
    from wan22_triton.speed.fast_path import optimize_transformer
    from wan22_triton.options import Attention, Quantization, SpeedOptions

    model, inputs = a14b_blocks_480p(layers, seed=0)
    optimize_transformer(model, SpeedOptions(quantization=Quantization.FP8_ROWWISE, attention=Attention.FP8_CUDNN))
    for name, value in TUNINGS[tuning].items():
        setattr(torch._inductor.config, name, value)
    model.compile_repeated_blocks(fullgraph=True, dynamic=False)
    return model, inputs


def stage_times() -> dict[str, float]:
    """torch's cumulative seconds per compile stage (dynamo, AOT, Inductor, code load), from its own timers."""
    from torch._dynamo.utils import compilation_time_metrics

    return {name: round(sum(times), 3) for name, times in compilation_time_metrics.items()}


def run_time(layers: int, tuning: str, forwards: int = 20) -> dict:
    """Compile time and the median forward of one tuning (`--tuning`, compiled in this process)."""
    model, inputs = compiled_block(layers, tuning)
    result = {"tuning": tuning, "first_forward_s": forward_seconds(model, inputs),
              "coordinate_descent_s": stage_times().get("CachingAutotuner.coordinate_descent_tuning", 0.0)}
    for _ in range(3):
        forward_seconds(model, inputs)
    times = sorted(forward_seconds(model, inputs) for _ in range(forwards))
    return result | {"forward_median_s": times[len(times) // 2], "forward_min_s": times[0], "forwards": forwards}


def run_phase(phase: str, layers: int, out_dir: Path) -> dict:
    artifacts = out_dir / "artifacts.bin"
    result: dict = {"phase": phase, "cache_dir": os.environ.get("TORCHINDUCTOR_CACHE_DIR")}
    if phase == "artifacts":
        t0 = time.perf_counter()
        info = torch.compiler.load_cache_artifacts(artifacts.read_bytes())
        result["load_s"] = time.perf_counter() - t0
        result["loaded"] = {kind: len(keys) for kind, keys in info.artifacts.items()} if info else None
    model, inputs = compiled_block(layers)
    result["first_forward_s"] = forward_seconds(model, inputs)
    result["counters"] = inductor_counters()
    result["stages_s"] = stage_times()
    result["second_forward_s"] = forward_seconds(model, inputs)
    if phase == "jit":
        torch.compiler.reset()
        model.compile_repeated_blocks(fullgraph=True, dynamic=False)
        result["recompile_same_process_s"] = forward_seconds(model, inputs)
        result["counters_after_recompile"] = inductor_counters()
        saved = torch.compiler.save_cache_artifacts()
        assert saved is not None, "torch recorded no compile artifacts"
        artifacts.write_bytes(saved[0])
        result["artifacts_bytes"] = len(saved[0])
    print(json.dumps(result), flush=True)
    return result


def spawn(child: list[str], log_name: str, args: argparse.Namespace, cache_dir: Path,
          profiler: list[str] | None = None) -> subprocess.Popen:
    """This module again in a child process (`child`: its --phase or --tuning) with its own Inductor cache."""
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(cache_dir))
    command = [*(profiler or []), sys.executable, "-m", "perf.compile_profile", *child, "--layers", str(args.layers),
               "--out-dir", str(args.out_dir)]
    log = open(args.out_dir / f"{log_name}.log", "w")
    return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--phase", choices=PHASES, help="run one phase in this process (the driver's children)")
    parser.add_argument("--tunings", default="", help=f"instead of the phases: compile and forward time of each "
                        f"of {list(TUNINGS)}, each in its own process, in this order")
    parser.add_argument("--tuning", choices=TUNINGS, help="one tuning in this process (the driver's children)")
    parser.add_argument("--py-spy", default="", help="py-spy binary: the artifacts phase runs under `py-spy record`")
    args = parser.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    if args.tuning:
        result = run_time(args.layers, args.tuning)
        print(json.dumps(result), flush=True)
        (args.out_dir / f"tuning-{args.tuning}.json").write_text(json.dumps(result, indent=2) + "\n")
        return
    if args.tunings:
        for tuning in args.tunings.split(","):
            spawn(["--tuning", tuning], f"tuning-{tuning}", args, args.out_dir.resolve() / f"inductor-{tuning}").wait()
        return
    if args.phase:
        result = run_phase(args.phase, args.layers, args.out_dir)
        (args.out_dir / f"{args.phase}.json").write_text(json.dumps(result, indent=2) + "\n")
        return
    caches = {p: args.out_dir.resolve() / f"inductor-{p}" for p in ("jit", "artifacts")}
    started = time.perf_counter()
    if spawn(["--phase", "jit"], "jit", args, caches["jit"]).wait() != 0:
        sys.exit("jit phase failed: see jit.log")
    spy = [args.py_spy, "record", "-r", "25", "-f", "raw", "-o", str(args.out_dir / "artifacts.pyspy.txt"), "--"]
    # Both cache-hit phases at once, as the served experts warm up at once (one process each).
    children = [spawn(["--phase", "artifacts"], "artifacts", args, caches["artifacts"], spy if args.py_spy else None),
                spawn(["--phase", "disk"], "disk", args, caches["jit"])]
    codes = [c.wait() for c in children]
    summary = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "layers": args.layers,
               "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "codes": codes,
               "wall_s": time.perf_counter() - started,
               "phases": [json.loads((args.out_dir / f"{p}.json").read_text()) for p in PHASES
                          if (args.out_dir / f"{p}.json").exists()]}
    (args.out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
