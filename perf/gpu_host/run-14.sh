#!/usr/bin/env bash
# Run 14 on a 2-GPU host (device kind nvidia-h200-x2), from the repository root, with pa-bundle/perf_analyzer.tar.xz
# carried by one device call and gpu-bundle by the next (as run 12):
#   RUN_HEAD=<commit> setsid nohup bash perf/gpu_host/run-14.sh /tmp/res > /tmp/run-14.log 2>&1 &
# then poll for /tmp/res/done. Layout as run-11.sh (parts.txt, <part>.log, <part>.exit; PART_LIMIT_S guard).
# Issue 13, one part at a time (nothing else on the host while perf_analyzer measures):
#   replicas: perf_analyzer throughput of one pipeline (GPU 1), then of a replica per GPU, count windows of 8
#             requests (run 12's windows of 3 ended up to a second late on a 12 s span: perf_analyzer polls each
#             second)
#   Ulysses 2 in the fast tier at 480p, the heads' pieces overlapped with attention against one exchange, both
#             against the same tier on 1 GPU
#   CFG parallel in the fast tier at 720p against the same tier on 1 GPU, while time is left
set -u
res=${1:-/tmp/res}
limit=${PART_LIMIT_S:-1000}
# shellcheck source=perf/gpu_host/host.sh
source perf/gpu_host/host.sh
replicas_sweep_setup 8
part replicas1 1 env PATH="/tmp/pa/bin:$PATH" python3 -m perf.perf_analyzer_sweep "${sweep[@]}" --replicas 1 \
  --label replicas1
part replicas2 0,1 env PATH="/tmp/pa/bin:$PATH" python3 -m perf.perf_analyzer_sweep "${sweep[@]}" --replicas 2 \
  --label replicas2 --compare-to "$res/replicas/replicas1/summary.json"
bench ulysses-480p 480 832 4 fp8_attention,fp8_attention_ulysses2,fp8_attention_ulysses2_nooverlap 600
bench cfg-720p 720 1280 2 fp8_attention,fp8_attention_cfg2 420
touch "$res/done"
