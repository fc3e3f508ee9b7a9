# Wan2.2 T2V on Triton Inference Server. `make demo` runs the whole product on the embedded tiny checkpoint;
# `make test` runs the test suite against a real tritonserver.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CHECKPOINT ?= checkpoints/tiny-wan2.2-t2v-a14b
ENGINE ?= torch
DEVICE ?= cpu
PRECISION ?= fp32
REPOSITORY ?= model_repository
HTTP_PORT ?= 8000
GRPC_PORT ?= 8001
METRICS_PORT ?= 8002
# make serve VIDEO_API_PORT=8080: the OpenAI-compatible video jobs API beside tritonserver (docs/video-api.md)
VIDEO_API_PORT ?=
# 127.0.0.1: clients on this machine only; 0.0.0.0 exposes the server on every interface.
LISTEN_ADDRESS ?= 127.0.0.1
PYTEST_ARGS ?=
# make test's pytest-xdist workers; each takes a test module whole, so that its servers start once, in the order of
# tests/conftest.py (the longest first; xdist would order them by their number of tests); 0: one process
TEST_WORKERS ?= 2
# GPU=1 (the default where nvidia-smi lists a GPU): the lock's torch in its CUDA build (the default index's) and
# the fast tier's kernels at docker/versions.env's versions; GPU=0: the lock as it is (CPU torch)
GPU ?= $(if $(shell nvidia-smi -L 2>/dev/null),1,0)
# more `python -m export` flags for `make export` (a tier's speed options, limits, LoRAs)
EXPORT_ARGS ?=
TINY := checkpoints/tiny-wan2.2-t2v-a14b
include docker/versions.env
CHECKOV_VENV := .venv-checkov
CHECKOV_VERSION := 3.3.30
UV_PIN := uv==0.13.10

.PHONY: setup checkpoint export model-repository kubernetes serve demo test test-fast perf perf-gpu docker-export docker-serve clean

# Both venvs at once (pip is mostly single-threaded); nothing to do once both are ready.
setup:
	@$(MAKE) --no-print-directory -j2 $(VENV)/.ready $(CHECKOV_VENV)/.ready-$(CHECKOV_VERSION)

# Pinned dependencies (requirements.lock): torch with pip (this machine's pip configuration may say where its build
# lies), then the rest with uv, which installs them at once (pip: one at a time, 4x longer); uv must find torch there
# first, or it fetches another build for the packages that need it. Byte-compiled on every core afterwards (left to
# the first imports, the test workers and their servers' stubs would each compile torch at once); tensorrt-stubs
# without its `tensorrt` dependency, which downloads the real TensorRT from NVIDIA's index at install time.
# perf_analyzer needs Debian's libb64; the video API's job-store tests start Debian's PostgreSQL.
$(VENV)/.ready: requirements.lock pyproject.toml $(VENV)/.gpu-$(GPU)
	$(PYTHON) -m venv $(VENV)
	@lock=requirements.lock; if [ "$(GPU)" = 1 ]; then lock=$(VENV)/requirements.gpu.txt; \
	  sed 's/^torch==\([^+]*\)+cpu$$/torch==\1/' requirements.lock > $$lock; \
	  echo "torchao==$(TORCHAO_VERSION)" >> $$lock; echo "nvidia-cudnn-frontend==$(CUDNN_FRONTEND_VERSION)" >> $$lock; fi; \
	  grep -v '^torch==' $$lock > $(VENV)/requirements.rest.txt && \
	  $(PY) -m pip install -q --no-compile $(UV_PIN) -c $$lock "$$(grep '^torch==' $$lock)" && \
	  $(VENV)/bin/uv pip install -q --python $(PY) -r $(VENV)/requirements.rest.txt
	$(PY) -m pip install -q --no-deps tensorrt-stubs==10.13.0.35.1
	$(PY) -m pip install -q --no-deps -e .
	@$(PY) -m compileall -qq -j 0 $$($(PY) -c "import sysconfig; print(sysconfig.get_paths()['purelib'])") || true
	@if ! ldconfig -p | grep -q libb64.so.0d; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get install -y -qq libb64-0d >/dev/null || (apt-get update -qq && apt-get install -y -qq libb64-0d >/dev/null); \
	  else echo "note: install Debian's libb64-0d for perf_analyzer"; fi; fi
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get install -y -qq postgresql >/dev/null || (apt-get update -qq && apt-get install -y -qq postgresql >/dev/null); \
	  else echo "note: install Debian's postgresql for the video API's PostgreSQL tests"; fi; fi
	touch $@

# Which torch build the venv has: a change of GPU rebuilds it.
$(VENV)/.gpu-$(GPU):
	mkdir -p $(VENV)
	rm -f $(VENV)/.gpu-*
	touch $@

# checkov (the Kubernetes policy scanner of tests/test_kubernetes.py) in a venv of its own: its many pinned
# dependencies would fight requirements.lock. The stamp names the version, so a new pin rebuilds it.
$(CHECKOV_VENV)/.ready-$(CHECKOV_VERSION):
	rm -rf $(CHECKOV_VENV)
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install -q $(UV_PIN)
	$(CHECKOV_VENV)/bin/uv pip install -q --python $(CHECKOV_VENV)/bin/python checkov==$(CHECKOV_VERSION)
	touch $@

checkpoint: $(TINY)/model_index.json

$(TINY)/model_index.json: devtools/tiny_checkpoint.py | $(VENV)/.ready
	$(PY) -m devtools.tiny_checkpoint --out $(TINY)

export: $(VENV)/.ready $(if $(filter $(TINY),$(CHECKPOINT)),checkpoint)
	$(PY) -m export --checkpoint $(CHECKPOINT) --repository $(REPOSITORY) --engine $(ENGINE) --device $(DEVICE) --precision $(PRECISION) $(EXPORT_ARGS)

# The checked-in generated files, rewritten whole (tests/test_checked_in.py compares them with a fresh run):
# model_repository/ is the export's defaults on the tiny checkpoint, what `make export` writes; docker/kubernetes/
# holds the default render, one folder per tier (those with a Kustomization) and the dashboard.
model-repository: $(VENV)/.ready checkpoint
	rm -rf model_repository
	$(PY) -m export --checkpoint $(TINY) --repository model_repository

kubernetes: $(VENV)/.ready
	rm -rf $(dir $(wildcard docker/kubernetes/*/Kustomization))
	$(PY) docker/kubernetes/render.py --out docker/kubernetes
	$(PY) docker/kubernetes/render.py --dashboard

# The launcher refuses a repository without an export (it says how to make one) and prints the admin key
# ($WAN22_ADMIN_KEY, else generated per start).
serve: setup
	$(PY) -m server.launcher --model-repository $(REPOSITORY) --http-port $(HTTP_PORT) --grpc-port $(GRPC_PORT) --metrics-port $(METRICS_PORT) --listen-address $(LISTEN_ADDRESS) $(if $(VIDEO_API_PORT),--video-api-port $(VIDEO_API_PORT))

demo: setup checkpoint
	$(PY) -m devtools.demo --checkpoint $(CHECKPOINT) --engine $(ENGINE) --output outputs/demo.mp4

test: setup
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

# The edit loop: no tritonserver and nothing slow (the markers in pyproject.toml).
test-fast: setup
	$(PY) -m pytest -m "not server and not slow and not gpu_flow" $(PYTEST_ARGS)

perf: setup checkpoint
	$(PY) -m perf.perf_analyzer_sweep --checkpoint $(CHECKPOINT)

perf-gpu:
	$(PY) -m perf.gpu_benchmark $(ARGS)

# Image versions live in docker/versions.env; each KEY=VALUE becomes a --build-arg.
DOCKER_BUILD_ARGS = $(shell grep -v '^\#' docker/versions.env | grep = | sed 's/^/--build-arg /')

docker-export:
	docker build $(DOCKER_BUILD_ARGS) -f docker/Dockerfile.export -t wan22-triton-export .
	docker run --rm --gpus all -v $(abspath $(CHECKPOINT)):/ckpt:ro -v $(abspath $(REPOSITORY)):/workspace/model_repository \
	  wan22-triton-export make export CHECKPOINT=/ckpt ENGINE=tensorrt DEVICE=gpu PRECISION=fp16

docker-serve:
	docker build $(DOCKER_BUILD_ARGS) -f docker/Dockerfile.serve -t wan22-triton-serve .
	docker run --rm --gpus all --shm-size=16g -e WAN22_ADMIN_KEY \
	  -p $(LISTEN_ADDRESS):$(HTTP_PORT):8000 -p $(LISTEN_ADDRESS):$(GRPC_PORT):8001 -p $(LISTEN_ADDRESS):$(METRICS_PORT):8002 \
	  $(if $(VIDEO_API_PORT),-e VIDEO_API_PORT=8080 -e WAN22_API_KEY -p $(LISTEN_ADDRESS):$(VIDEO_API_PORT):8080) \
	  -v $(abspath $(REPOSITORY)):/models wan22-triton-serve

# model_repository/ keeps its checked-in files: only what git ignores there (weights, copied folders) goes.
clean:
	rm -rf $(VENV) checkpoints outputs .pytest_cache .mypy_cache .$(REPOSITORY).tensorrt
	git clean -q -d -f -X -- model_repository
