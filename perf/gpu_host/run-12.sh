#!/usr/bin/env bash
# Run 12 on a 2-GPU host (device kind nvidia-h200-x2), from the repository root, with pa-bundle/perf_analyzer.tar.xz
# carried by one device call and gpu-bundle by the next (as run 11):
#   RUN_HEAD=<commit> setsid nohup bash perf/gpu_host/run-12.sh /tmp/res > /tmp/run-12.log 2>&1 &
# then poll for /tmp/res/done. Layout as run-11.sh (parts.txt, <part>.log, <part>.exit; PART_LIMIT_S guard):
#   GPU 0: the fast tier's start and first requests, spec 480p + 720p, now that the models of a device warm up one
#          at a time (issue 14: the start peak was 84.3 GB)
#   GPU 1: perf_analyzer throughput of one pipeline (issue 13), then the BF16 tier with --warmup against JIT (issue 14)
#   both:  the same throughput with a replica per GPU; then Ulysses 2 in the fast tier against the fast tier on one
#          GPU at 480p, then at 720p while time is left (issue 13)
set -u
res=${1:-/tmp/res}
limit=${PART_LIMIT_S:-1000}
# shellcheck source=perf/gpu_host/host.sh
source perf/gpu_host/host.sh
replicas_sweep_setup 3
ulysses() {  # ulysses NAME HEIGHT WIDTH DEADLINE_S
  part "$1" 0,1 python3 -m perf.gpu_benchmark --variants fp8_attention,fp8_attention_ulysses2 --height "$2" \
    --width "$3" --steps 4 --no-baseline --reference-variant fp8_attention --out-dir "$res/$1" \
    --workdir "/tmp/w-$1" --deadline-s "$4"
}
gpu0() {
  part first-request 0 python3 -m perf.first_request_benchmark --sizes 480x832x81,720x1280x81 --tiers fp8_attention \
    --modes artifacts --steps 2 --out-dir "$res/first_request" --workdir /tmp/w-first --deadline-s 500
}
gpu1() {
  part replicas1 1 env PATH="/tmp/pa/bin:$PATH" python3 -m perf.perf_analyzer_sweep "${sweep[@]}" --replicas 1 \
    --label replicas1
  part first-request-bf16 1 python3 -m perf.first_request_benchmark --sizes 480x832x81 --tiers bf16 \
    --modes warmup,jit --steps 2 --out-dir "$res/first_request_bf16" --workdir /tmp/w-first-bf16 --deadline-s 300
}
gpu0 &
gpu1 &
wait
part replicas2 0,1 env PATH="/tmp/pa/bin:$PATH" python3 -m perf.perf_analyzer_sweep "${sweep[@]}" --replicas 2 \
  --label replicas2 --compare-to "$res/replicas/replicas1/summary.json"
ulysses ulysses-480p 480 832 560
ulysses ulysses-720p 720 1280 520
touch "$res/done"
