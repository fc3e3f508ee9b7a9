#!/usr/bin/env bash
# Run 13 on a 2-GPU host (device kind nvidia-h200-x2), from the repository root, gpu-bundle carried:
#   RUN_HEAD=<commit> setsid nohup bash perf/gpu_host/run-13.sh /tmp/res > /tmp/run-13.log 2>&1 &
# then poll for /tmp/res/done. Layout as run-11.sh. The fast tier, spec 480p + 720p, 2-step requests (issue 14),
# after the warm-up samples went through the experts' first block only:
#   GPU 0: with compile artifacts: export, start -> READY, first and warm requests
#   GPU 1: JIT (no artifacts, no warm-up), started once GPU 0 is READY (its compiles would share the host's CPUs
#          with GPU 0's start), for the videos' parity with the artifacts' (same --workdir)
set -u
res=${1:-/tmp/res}
limit=${PART_LIMIT_S:-600}
# shellcheck source=perf/gpu_host/host.sh
source perf/gpu_host/host.sh
mode() {  # mode MODE GPU
  part "first-request-$1" "$2" python3 -m perf.first_request_benchmark --sizes 480x832x81,720x1280x81 \
    --tiers fp8_attention --modes "$1" --steps 2 --out-dir "$res/first_request_$1" --workdir /tmp/w-first \
    --deadline-s 480
}
mode artifacts 0 &
until grep -q "start -> READY" "$res/first-request-artifacts.log" 2>/dev/null || [ -f "$res/first-request-artifacts.exit" ]; do
  sleep 2
done
mode jit 1 &
wait
# the warm videos of both modes, whichever process ended first
python3 - > "$res/parity.json" <<'PY'
import json
from pathlib import Path
import numpy as np
from perf.gpu_benchmark.quality import psnr
videos = sorted(Path("/tmp/w-first/videos").glob("*.npy"))
out = {}
for a in (v for v in videos if "-artifacts-" in v.name):
    j = a.with_name(a.name.replace("-artifacts-", "-jit-"))
    if j.exists():
        va, vj = np.load(a), np.load(j)
        out[a.name] = {"psnr_db": psnr(va, vj), "equal": bool(np.array_equal(va, vj))}
print(json.dumps(out, indent=1, default=str))
PY
touch "$res/done"
