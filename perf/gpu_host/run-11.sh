#!/usr/bin/env bash
# Run 11 on a 2-GPU host (device kind nvidia-h200-x2), from the repository root, with pa-bundle/perf_analyzer.tar.xz
# (make-pa-bundle.sh) carried by one device call and gpu-bundle by the next (together over the 64 MiB of a call):
#   RUN_HEAD=<commit> setsid nohup bash perf/gpu_host/run-11.sh /tmp/res > /tmp/run-11.log 2>&1 &
# then poll for /tmp/res/done. Same layout as run-10.sh (parts.txt, <part>.log, <part>.exit; PART_LIMIT_S guard):
#   GPU 0: the fast tier's first requests with compile artifacts at 480p and 720p (issue 14), after Inductor's
#          coordinate descent tuning was turned off (perf/compile_profile.py)
#   GPU 1: perf_analyzer throughput of one whole pipeline, BF16 (issue 13)
#   both:  the same with a replica per GPU
set -u
res=${1:-/tmp/res}
limit=${PART_LIMIT_S:-540}
# shellcheck source=perf/gpu_host/host.sh
source perf/gpu_host/host.sh
replicas_sweep_setup 2
gpu0() {
  part first-request 0 python3 -m perf.first_request_benchmark --sizes 480x832x81,720x1280x81 --tiers fp8_attention \
    --modes artifacts --steps 2 --out-dir "$res/first_request" --workdir /tmp/w-first --deadline-s 470
}
gpu1() {
  part replicas1 1 env PATH="/tmp/pa/bin:$PATH" python3 -m perf.perf_analyzer_sweep "${sweep[@]}" --replicas 1 \
    --label replicas1
}
gpu0 &
gpu1 &
wait
part replicas2 0,1 env PATH="/tmp/pa/bin:$PATH" python3 -m perf.perf_analyzer_sweep "${sweep[@]}" --replicas 2 \
  --label replicas2 --compare-to "$res/replicas/replicas1/summary.json"
touch "$res/done"
