# Sourced by the run-N.sh scripts on a GPU host, from the repository root, with `res` (the results folder) and
# `limit` (seconds after which parts are skipped) set: /dev/shm large enough for the frames' shared memory, the
# bundle activated, the host described, and part(), replicas_sweep_setup() and bench().
mkdir -p "$res"
s=$(df --output=size -k /dev/shm | tail -1)
if [ "$s" -lt 33554432 ]; then mount -o remount,size=96G /dev/shm; fi
# shellcheck disable=SC1091
source gpu-bundle/activate.sh > "$res/activate.log" 2>&1
export PYTHONUNBUFFERED=1
nvidia-smi > "$res/nvidia-smi.txt" 2>&1
echo "started $(date -u +%FT%TZ) head ${RUN_HEAD:-unknown}" > "$res/started.txt"

part() {  # part NAME GPUS COMMAND...: one benchmark, its log and exit code
  local name=$1 gpus=$2
  shift 2
  if [ "$SECONDS" -gt "$limit" ]; then
    echo "$(date -u +%T) skip $name ($SECONDS s > $limit s)" >> "$res/parts.txt"
    return
  fi
  echo "$(date -u +%T) start $name (GPUs $gpus)" >> "$res/parts.txt"
  CUDA_VISIBLE_DEVICES=$gpus "$@" > "$res/$name.log" 2>&1
  echo $? > "$res/$name.exit"
  echo "$(date -u +%T) end $name exit $(cat "$res/$name.exit") at $SECONDS s" >> "$res/parts.txt"
}

replicas_sweep_setup() {  # replicas_sweep_setup COUNT: perf_analyzer unpacked, the configs-only checkpoint written,
  # and `sweep` set: the replicas sweep's arguments (BF16 eager, 480x832x17, 2 steps, count windows of COUNT)
  # perf_analyzer from the tritonclient 2.50 wheel, its libcudart 12 and libb64 beside it (bin/perf_analyzer is a
  # wrapper that puts them on LD_LIBRARY_PATH for perf_analyzer alone)
  mkdir -p /tmp/pa && tar -C /tmp/pa -xJf pa-bundle/perf_analyzer.tar.xz
  sweep=(--checkpoint /tmp/w-pa/checkpoint --weights-seed 1234 --device gpu --precision bf16 --models wan22_t2v
         --concurrency 4 --warmup 1 --measurement-request-count "$1" --num-frames 17 --height 480 --width 832
         --num-inference-steps 2 --results "$res/replicas")
  python3 -c "from perf.gpu_checkpoint import write_configs_checkpoint as w; w('/tmp/w-pa/checkpoint')" \
    > "$res/checkpoint.log" 2>&1
}

bench() {  # bench NAME HEIGHT WIDTH STEPS VARIANTS DEADLINE_S: the benchmark on both GPUs, Triton variants only,
  # videos against the fast tier on one GPU
  part "$1" 0,1 python3 -m perf.gpu_benchmark --variants "$5" --height "$2" --width "$3" --steps "$4" --no-baseline \
    --reference-variant fp8_attention --out-dir "$res/$1" --workdir "/tmp/w-$1" --deadline-s "$6"
}
