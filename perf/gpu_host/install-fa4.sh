# On the GPU host (made by make-fa4-bundle.sh, run from the repository root after `source gpu-bundle/activate.sh`):
# reassembles the CuTe DSL libs wheel and installs flash-attn-4 with its needs into the host's Python environment.
set -e
_d=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if ! python3 -c "import flash_attn.cute" 2>/dev/null; then
  mkdir -p /tmp/fa4w
  cat "$_d"/part1/cu13.whl.part-aa "$_d"/part2/cu13.whl.part-ab > "/tmp/fa4w/$(cat "$_d"/part2/cu13-wheel-name)"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir /tmp/fa4w/*.whl "$_d"/part2/*.whl
fi
python3 -c "import flash_attn.cute, importlib.metadata as m; print('flash-attn-4', m.version('flash-attn-4'), 'cutlass-dsl', m.version('nvidia-cutlass-dsl'))"
# The stub's venv (gpu-bundle) reaches the host's site-packages through a .pth path line, where the host's own
# .pth files are not run: the CuTe DSL's (it puts its `cutlass` package on sys.path) is copied in after that line.
if [ -n "${TRITON_STUB_ENV:-}" ]; then
  _sp=$(echo "$TRITON_STUB_ENV"/lib/python3*/site-packages)
  cp "$(python3 -c 'import site; print(site.getsitepackages()[0])')"/nvidia_cutlass_dsl_packages.pth "$_sp"/zzz-nvidia-cutlass-dsl.pth
  "$TRITON_STUB_ENV"/bin/python3 -c "import flash_attn.cute; print('stub env: flash_attn.cute imports')"
fi
set +e
