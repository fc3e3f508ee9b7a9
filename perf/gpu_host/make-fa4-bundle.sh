#!/usr/bin/env bash
# FlashAttention-4 (export --attention flash_attn_4) for a GPU host without a package registry: downloads the
# wheels from the package index pip is configured with (versions from docker/versions.env) into OUT_DIR, split
# into part1/ and part2/ so that each fits one device call (64 MiB); OUT_DIR/part2/install.sh installs them there.
# Usage, from the repository root:
#   perf/gpu_host/make-fa4-bundle.sh [OUT_DIR=fa4-bundle]
# On the GPU host, after `source gpu-bundle/activate.sh` (with both parts present): bash OUT_DIR/part2/install.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-fa4-bundle}
# shellcheck disable=SC1091
source <(grep -E '^(FLASH_ATTN_4_VERSION|CUTLASS_DSL_VERSION)=' "$here/../../docker/versions.env")
rm -rf "$out" && mkdir -p "$out/part1" "$out/part2" "$out/download"
python3 -m pip download -q --no-deps --only-binary=:all: \
  --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 -d "$out/download" \
  "flash-attn-4==$FLASH_ATTN_4_VERSION" "nvidia-cutlass-dsl==$CUTLASS_DSL_VERSION" \
  "nvidia-cutlass-dsl-libs-base==$CUTLASS_DSL_VERSION" "nvidia-cutlass-dsl-libs-core==$CUTLASS_DSL_VERSION" \
  "nvidia-cutlass-dsl-libs-cu13==$CUTLASS_DSL_VERSION" "apache-tvm-ffi==0.1.15.post2" "quack-kernels==0.6.5" \
  "torch-c-dlpack-ext==0.1.5"
big=$(ls "$out"/download/nvidia_cutlass_dsl_libs_cu13-*.whl)
echo "$(basename "$big")" > "$out/part2/cu13-wheel-name"
split -b 52M "$big" "$out/part1/cu13.whl.part-"
mv "$out/part1/cu13.whl.part-ab" "$out/part2/" && rm "$big"
mv "$out"/download/*.whl "$out/part2/" && rmdir "$out/download"
cp "$here/install-fa4.sh" "$out/part2/install.sh"
du -sh "$out/part1" "$out/part2"
