# Sourced by the run-N.sh scripts on a GPU host, from the repository root, with `res` (the results folder) and
# `limit` (seconds after which parts are skipped) set: /dev/shm large enough for the frames' shared memory, the
# bundle activated, the host described, and part().
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
