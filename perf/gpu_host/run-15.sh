#!/usr/bin/env bash
# Run 15 on a 2-GPU host (device kind nvidia-h200-x2), from the repository root, with pa-bundle/perf_analyzer.tar.xz
# carried by one device call and gpu-bundle by the next (as run 12):
#   RUN_HEAD=<commit> setsid nohup bash perf/gpu_host/run-15.sh /tmp/res > /tmp/run-15.log 2>&1 &
# then poll for /tmp/res/done. Layout as run-11.sh (parts.txt, <part>.log, <part>.exit; PART_LIMIT_S guard).
# Issue 13, one part at a time (nothing else on the host while perf_analyzer measures):
#   replicas: perf_analyzer throughput of one pipeline (GPU 1), then of a replica per GPU, now that each generation
#             holds one replica and calls that replica's versions of the models (run 14: 1.70x, the components of
#             two requests met on one GPU); count windows of 6 requests
#   Ulysses 2 in the fast tier at 480p with the heads in 4 pieces (run 14: 2 pieces 1.831x, one exchange 1.791x)
set -u
res=${1:-/tmp/res}
limit=${PART_LIMIT_S:-1000}
# shellcheck source=perf/gpu_host/host.sh
source perf/gpu_host/host.sh
replicas_sweep_setup 6
# replicas2 first: if the replicas' routing fails on a GPU, the one-pipeline sweep is skipped
part replicas2 0,1 env PATH="/tmp/pa/bin:$PATH" python3 -m perf.perf_analyzer_sweep "${sweep[@]}" --replicas 2 \
  --label replicas2
if [ "$(cat "$res/replicas2.exit")" = 0 ]; then
  part replicas1 1 env PATH="/tmp/pa/bin:$PATH" python3 -m perf.perf_analyzer_sweep "${sweep[@]}" --replicas 1 \
    --label replicas1
  python3 - "$res/replicas" > "$res/ratio.log" 2>&1 <<'PY'
import json, sys
from pathlib import Path
from perf.perf_analyzer_sweep import throughput_ratio
folder = Path(sys.argv[1])
two, one = (json.loads((folder / n / "summary.json").read_text()) for n in ("replicas2", "replicas1"))
two["throughput_ratio"] = throughput_ratio(two["models"], one)
two["compared_to"] = str(folder / "replicas1" / "summary.json")
(folder / "replicas2" / "summary.json").write_text(json.dumps(two, indent=2))
print(two["throughput_ratio"])
PY
fi
bench ulysses-480p 480 832 4 fp8_attention,fp8_attention_ulysses2_4pieces 420
touch "$res/done"
