#!/usr/bin/env bash
# perf_analyzer (and py-spy) for a GPU host without them: the gpu-bundle's tritonclient wheel ships no perf_analyzer
# binary, the tritonclient 2.50 wheel in this repository's venv does. Writes OUT_DIR/perf_analyzer.tar.xz (bin/
# perf_analyzer: a wrapper that puts lib/ on LD_LIBRARY_PATH for perf_analyzer alone, as a tritonserver started with
# that libcudart on its path finds two CUDA runtimes; bin/perf_analyzer.bin; lib/libb64.so.0d from Debian's
# libb64-0d, lib/libcudart.so.12 from the nvidia-cuda-runtime-cu12 wheel) and OUT_DIR/py-spy.xz (py-spy 0.4.3).
# Carry OUT_DIR in its own device call: gpu-bundle and it together exceed the 64 MiB a call carries.
# Usage, from the repository root: perf/gpu_host/make-pa-bundle.sh [OUT_DIR=pa-bundle]
# On the GPU host: mkdir -p /tmp/pa && tar -C /tmp/pa -xJf OUT_DIR/perf_analyzer.tar.xz; PATH=/tmp/pa/bin:$PATH
set -euo pipefail
out=${1:-pa-bundle}
venv=${VENV:-.venv}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$out" "$work/bin" "$work/lib" "$work/spy"
cp "$venv/bin/perf_analyzer" "$work/bin/perf_analyzer.bin"
cp -L /usr/lib/x86_64-linux-gnu/libb64.so.0d "$work/lib/"
cp -L "$venv"/lib/python3*/site-packages/nvidia/cuda_runtime/lib/libcudart.so.12 "$work/lib/"
cat > "$work/bin/perf_analyzer" <<'WRAP'
#!/bin/sh
d=$(dirname "$(readlink -f "$0")")
LD_LIBRARY_PATH="$d/../lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "$d/perf_analyzer.bin" "$@"
WRAP
chmod +x "$work/bin/perf_analyzer"
tar -C "$work" -cJf "$out/perf_analyzer.tar.xz" bin lib
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
  -d "$work/spy" py-spy==0.4.3
(cd "$work/spy" && unzip -q -o -j py_spy-*.whl '*/scripts/py-spy')
xz -9 -c "$work/spy/py-spy" > "$out/py-spy.xz"
ls -l "$out"
