"""First request after READY, with and without compile artifacts (docs/compile_artifacts.md).

For each tier x mode on one GPU: export (mode `artifacts`: `--compile-artifacts` over a shape spec of exactly
--sizes; mode `warmup`, eager tiers: `--warmup` over that spec; mode `jit`: neither, the first request of each size
pays its first calls, compiles included), start tritonserver and time process
start -> READY (`ready_s`, Triton's `model_warmup` included), then requests in a fixed order: a first round that
alternates the sizes (A, B, A, B; one size: A, A), then warm repeats (A, A, B, B). Videos of the same size and seed
are compared across modes (PSNR), and the experts' `expert_compiled` events (wan22_triton/operations/events.py) are
counted before and after READY. results.json (saved after every phase and request), table.md, run.json and
command.txt go to --out-dir (default perf/results/gpu/first_request/).

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

Layout: `cli.py` (flags, the run's description, the order of the phases), `plan.py` (tiers, modes, request order,
targets, estimates), `export_phase.py` (the export in its own process, its record), `serve_phase.py` (start, READY,
the requests, per-size ratios, modes compared), `report.py` (table.md, results.json).
"""

from .cli import main

__all__ = ["main"]
