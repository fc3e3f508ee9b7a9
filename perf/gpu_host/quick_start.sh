#!/usr/bin/env bash
# The README's GPU quick start, timed on a GPU host, with the full A14B architecture and random weights (a
# configs-only checkpoint: no download): the export with the fast tier's flags, `python -m server.launcher` to READY,
# the README's client command, the stop. From the repository root, with gpu-bundle/ beside it (benchmark.sh):
#   perf/gpu_host/quick_start.sh RESULTS_DIR [EXPORT_FLAGS...]
# writes RESULTS_DIR/results.json (seconds per step, the video's size, processes left after the stop), run.log,
# command.txt and the client's video. Set WAN22_COMMIT where the working tree has no .git. A CPU dry run, in the
# project's venv: PRESET=tiny CLIENT_ARGS="--num-frames 5 --height 32 --width 48 --num-inference-steps 2" \
#   PATH=.venv/bin:$PATH perf/gpu_host/quick_start.sh /tmp/qs --engine torch
set -uo pipefail
res=${1:?RESULTS_DIR}
shift
flags=("$@")
[ ${#flags[@]} -gt 0 ] || flags=(--engine torch --device gpu --precision bf16 --quantization fp8_rowwise
                                 --attention fp8_cudnn --compile regional --compile-artifacts)
mkdir -p "$res"
res=$(cd "$res" && pwd)
work=${WORKDIR:-/tmp/wan22-quick-start}
rm -rf "$work" && mkdir -p "$work"
if [ "$(df --output=size -k /dev/shm | tail -1)" -lt 33554432 ]; then  # the frames travel through shared memory
  mount -o remount,size=96G /dev/shm || echo "warning: /dev/shm is small and could not be enlarged" >&2
fi
if [ -f gpu-bundle/activate.sh ] && nvidia-smi -L > /dev/null 2>&1; then  # a GPU host
  # shellcheck disable=SC1091
  source gpu-bundle/activate.sh > "$res/activate.log" 2>&1
fi
if compgen -G ".whl/*.whl" > /dev/null; then  # what the host lacks (imageio-ffmpeg for the client's MP4)
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1
echo "perf/gpu_host/quick_start.sh $res ${flags[*]}" > "$res/command.txt"
exec > >(tee "$res/run.log") 2>&1

now() { date +%s.%N; }
since() { python3 -c "print(round($(now) - $1, 1))"; }

t=$(now)
python3 -m perf.gpu_checkpoint --out "$work/checkpoint" --preset "${PRESET:-a14b}" || exit 1
checkpoint_s=$(since "$t")

t=$(now)
python3 -m perf.random_export --checkpoint "$work/checkpoint" --repository "$work/model_repository" "${flags[@]}" || exit 1
export_s=$(since "$t")

t=$(now)
# The launcher runs in the bundle's numpy-1 stub environment, so that the stubs it starts get it (the README's venv
# plays that part on a host with a registry); --backend-directory: the bundle's Python backend
if [ -n "${TRITON_STUB_ENV:-}" ]; then
  stub_bin=$(python3 -c "from perf.gpu_benchmark.measure import stub_env_bin; print(stub_env_bin())")
  "$stub_bin/python3" -m server.launcher --model-repository "$work/model_repository" \
      --backend-directory="$TRITON_BACKENDS" &
else
  python3 -m server.launcher --model-repository "$work/model_repository" &
fi
launcher=$!
trap 'kill -INT $launcher 2> /dev/null' EXIT  # whatever ends this script stops the server
ready="import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=2)"
until python3 -c "$ready" 2>/dev/null; do
  kill -0 $launcher 2>/dev/null || { echo "the launcher exited before READY"; exit 1; }
  sleep 0.5
done
ready_s=$(since "$t")

t=$(now)
# shellcheck disable=SC2086  # CLIENT_ARGS: more client flags (a CPU dry run: a small size and 2 steps)
python3 -m clients.grpc_client --url localhost:8001 --prompt "a red panda in the snow" --output "$res/panda.mp4" \
    ${CLIENT_ARGS:-}
client_exit=$?
request_s=$(since "$t")

t=$(now)
kill -INT $launcher
wait $launcher
launcher_exit=$?
stop_s=$(since "$t")
sleep 1
left=$(pgrep -c -f 'tritonserver|triton_python_backend_stub' || true)

video_bytes=$(stat -c %s "$res/panda.mp4" 2>/dev/null || echo 0)
card=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2> /dev/null | head -1)
commit=${WAN22_COMMIT:-$(git describe --always --dirty --abbrev=10 2>/dev/null)}
python3 - "$res/results.json" "$card" "$commit" "${flags[*]}" "${CLIENT_ARGS:-}" <<EOF
import json, sys, time
path, card, commit, flags, client_args = sys.argv[1:]
json.dump({
    "card": card, "date_utc": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()), "commit": commit,
    "export_flags": flags, "client_args": client_args or "none: the checkpoint's default video and steps",
    "seconds": {"checkpoint_configs": $checkpoint_s, "export": $export_s, "start_to_ready": $ready_s,
                "request": $request_s, "stop": $stop_s},
    "client_exit": $client_exit, "launcher_exit": $launcher_exit, "video_bytes": $video_bytes,
    "processes_left_after_stop": $left,
}, open(path, "w"), indent=2)
EOF
cat "$res/results.json"
