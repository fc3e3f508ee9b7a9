"""Wan2.2 T2V-A14B served by Triton against diffusers' WanPipeline (BF16), side by side on one GPU.

One run (`make perf-gpu`, or `python3 -m perf.gpu_benchmark` on the GPU host after `source gpu-bundle/activate.sh`;
the flags and examples are in __main__.py):

1. writes a configs-only checkpoint of the full Wan2.2-T2V-A14B architecture (perf/gpu_checkpoint.py); every
   component gets RANDOM weights on the GPU from fixed seeds, identical on both sides
   (wan22_triton/engines/random_weights.py, the export's `random_weights_seed`);
2. baseline, in its own process (perf/gpu_baseline.py): an 8192^3 BF16 matmul (the TFLOP/s ceiling of this card),
   then stock diffusers WanPipeline BF16, eager, default attention, no offload: a 1-step warm-up, then the measured
   call; the process exits and frees the GPU;
3. for each variant (variants.py): export a model repository, start the real tritonserver, warm up, run the parity
   probes, then the measured request with Triton's statistics read before and after; stop the server (measure.py);
4. prints a table and writes results.json, table.md and gpu_benchmark.png under --out-dir (report.py), with run.json
   and command.txt (cli.py; docs/performance.md).

Layout:

* `__main__.py`: the command line, the run's description (meta, workload) and the order of the phases;
* `cli.py`: what the GPU benchmarks share (flags, comma lists, the deadline, the run's record);
* `variants.py`: what each variant exports (expert speed options, low-memory mode) and how long it may take;
* `measure.py`: the baseline process, a variant's server and requests, the parity probes, the CPU text-encoder probe;
* `stats.py`: Triton's statistics and what is derived from them: steps per expert, Triton overhead, swaps (events);
* `gpu_monitor.py`: GPU memory from NVML / nvidia-smi (peaks, per process), no CUDA context in this process;
* `quality.py`: video and tensor agreement (PSNR, SSIM, cosine), each variant against a reference variant;
* `report.py`: derived rates and speed-ups, the tables, the chart, results.json.

FLOP counts come from perf/flops.py.
"""

from __future__ import annotations

import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STARTED = time.monotonic()


def log(msg: str) -> None:
    print(f"[{time.monotonic() - STARTED:7.1f}s] {msg}", flush=True)
