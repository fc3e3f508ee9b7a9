#!/usr/bin/env bash
# Run 10 on a 2-GPU host (device kind nvidia-h200-x2), from the repository root with gpu-bundle carried:
#   RUN_HEAD=<commit> setsid nohup bash perf/gpu_host/run-10.sh /tmp/res > /tmp/run-10.log 2>&1 &
# then poll for /tmp/res/done. Benchmarks that need one GPU run two at a time, one per GPU (CUDA_VISIBLE_DEVICES;
# gpu_monitor watches the GPU each is given); the 2-GPU parts run after both chains. Parts that would start after
# PART_LIMIT_S (default 1260 s) since the start are skipped, so that the results can still be copied.
#   GPU 0: LoRA and the few-step preset (issue 15), then 720p diffusers and the BF16 tier on one GPU (issue 13)
#   GPU 1: the fast tier's first requests with compile artifacts, memory per process (issue 14), then
#          perf_analyzer throughput of one whole pipeline (issue 13)
#   both:  perf_analyzer throughput of 2 replicas, then 720p BF16 CFG parallel and Ulysses 2 (issue 13,
#          --resume on GPU 0's results)
# Each part writes <name>.log and <name>.exit into the results folder; parts.txt has their times.
set -u
res=${1:-/tmp/res}
limit=${PART_LIMIT_S:-1260}
# shellcheck source=perf/gpu_host/host.sh
source perf/gpu_host/host.sh

# Throughput of whole pipelines: BF16 eager, a short video so that each concurrency gets its windows in the time
# there is; the 720p benchmark's configs-only checkpoint, written first.
sweep=(--checkpoint /tmp/w-720/checkpoint --weights-seed 1234 --device gpu --precision bf16 --models wan22_t2v
       --concurrency 4 --warmup 1 --measurement-request-count 2 --num-frames 17 --height 480 --width 832
       --num-inference-steps 2 --results "$res/replicas")
python3 -c "from perf.gpu_checkpoint import write_configs_checkpoint as w; w('/tmp/w-720/checkpoint')" \
  > "$res/checkpoint.log" 2>&1
gpu0() {
  part lora 0 python3 -m perf.lora_benchmark --out-dir "$res/lora" --workdir /tmp/w-lora --deadline-s 480
  part 720p-1gpu 0 python3 -m perf.gpu_benchmark --variants bf16 --height 720 --width 1280 --steps 2 \
    --no-repeat-baseline --out-dir "$res/720p" --workdir /tmp/w-720 --deadline-s 420
}
gpu1() {
  part first-request 1 python3 -m perf.first_request_benchmark --sizes 480x832x81 --tiers fp8_attention \
    --modes artifacts --steps 4 --out-dir "$res/first_request" --workdir /tmp/w-first --deadline-s 720
  part replicas1 1 python3 -m perf.perf_analyzer_sweep "${sweep[@]}" --replicas 1 --label replicas1
}
gpu0 &
gpu1 &
wait
part replicas2 0,1 python3 -m perf.perf_analyzer_sweep "${sweep[@]}" --replicas 2 --label replicas2 \
  --compare-to "$res/replicas/replicas1/summary.json"
part 720p-2gpu 0,1 python3 -m perf.gpu_benchmark --resume --variants bf16,bf16_cfg2,bf16_ulysses2 --height 720 \
  --width 1280 --steps 2 --reference-variant bf16 --no-repeat-baseline --out-dir "$res/720p" --workdir /tmp/w-720 \
  --deadline-s 300
touch "$res/done"
