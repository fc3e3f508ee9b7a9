#!/usr/bin/env bash
# One benchmark on a GPU host without a package registry, from the repository root, with the bundles beside it:
# gpu-bundle/ (tritonserver and the wheels; make-bundle.sh of the shared GPU folder), and where present
# fa4-bundle/ (make-fa4-bundle.sh: the FlashAttention-4 variants) and pa-bundle/ (make-pa-bundle.sh: perf_analyzer).
#   perf/gpu_host/benchmark.sh RESULTS_DIR MODULE [ARGS...]
# runs `python3 -m perf.MODULE ARGS` with its results in RESULTS_DIR (--out-dir; perf_analyzer_sweep: --results and
# --label from RESULTS_DIR; the single-file probes: --out RESULTS_DIR/results.json; unless ARGS name their output),
# its output in RESULTS_DIR/run.log.
# gpu_benchmark, lora_benchmark and first_request_benchmark write run.json (card, driver, date, commit) and
# command.txt there themselves (a working tree without .git: set WAN22_COMMIT). Examples (each kept result's own
# command: command.txt in its folder under perf/results/gpu/):
#   perf/gpu_host/benchmark.sh perf/results/gpu/gpu_benchmark gpu_benchmark --variants fp8_attention
#   CUDA_VISIBLE_DEVICES=1 perf/gpu_host/benchmark.sh perf/results/gpu/first_request/jit first_request_benchmark \
#       --modes jit
#   perf/gpu_host/benchmark.sh perf/results/gpu/replicas/replicas2 perf_analyzer_sweep --replicas 2 ...
set -uo pipefail
if [ $# -lt 2 ]; then
  sed -n '2,15p' "$0"
  exit 2
fi
res=$1 module=$2
shift 2
mkdir -p "$res"
# the frames travel through system shared memory: /dev/shm must hold a 720p video (and a server's own regions)
if [ "$(df --output=size -k /dev/shm | tail -1)" -lt 33554432 ]; then
  mount -o remount,size=96G /dev/shm || echo "warning: /dev/shm is small and could not be enlarged" >&2
fi
# shellcheck disable=SC1091
source gpu-bundle/activate.sh > "$res/activate.log" 2>&1
if [ -f fa4-bundle/part2/install.sh ]; then
  bash fa4-bundle/part2/install.sh >> "$res/activate.log" 2>&1
fi
if [ -f pa-bundle/perf_analyzer.tar.xz ]; then
  mkdir -p /tmp/pa && tar -C /tmp/pa -xJf pa-bundle/perf_analyzer.tar.xz
  export PATH=/tmp/pa/bin:$PATH  # a wrapper: perf_analyzer's libraries stay off the server's path
fi
export PYTHONUNBUFFERED=1
case $module in
  perf_analyzer_sweep) out=(--results "$(dirname "$res")" --label "$(basename "$res")") ;;
  attention_probe | block_profile | fp16_probe) out=(--out "$res/results.json") ;;
  *) out=(--out-dir "$res") ;;
esac
for arg in "$@"; do  # an output the command names itself wins
  case $arg in --out | --out=* | --out-dir | --out-dir=* | --results | --results=*) out=() ;; esac
done
nvidia-smi > "$res/nvidia-smi.log" 2>&1
python3 -m "perf.$module" "$@" "${out[@]}" 2>&1 | tee "$res/run.log"
exit "${PIPESTATUS[0]}"
