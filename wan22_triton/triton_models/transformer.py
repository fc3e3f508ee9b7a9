"""`transformer_high_noise` / `transformer_low_noise`: one expert, one contract (components.expert).

Engines, a runner each (`RUNNERS`, picked once in setup): `torch` runs the diffusers module (the manifest's speed
options, see fast_path, and the benchmark seam `random_weights_seed`, see random_weights); `onnx` runs the exported
graph in onnxruntime. The `tensorrt` engine is not a Python model at all: Triton's tensorrt_plan backend serves the
plan under the same contract. A GPU caller (the orchestrator on a GPU) sends CUDA tensors and gets `noise_pred` back
on the GPU.

Low-memory mode (the manifest's `low_memory`, torch engine; see wan22_triton.memory.offload): the weights live in page-locked host
memory, go onto the GPU with the first request that brings work, and back when a request carries `release`
(BOOL, optional, declared only in this mode): after computing that request's step if it has one; a request with
`release` alone only releases (and answers with no outputs).

Workspace (the manifest's `release_workspace`, torch engine; base.ComponentModel): after a call the orchestrator
marks as the expert's last step before the switch or the decode (optional input `release_workspace`), the PyTorch
cache's unused blocks go back to the driver, on every rank of a sequence-parallel group, so that the expert waiting
for its turn holds its weights and not its last forward's activations. Steps in between keep the cache. The first
call at a new input shape releases too (base.ComponentModel): each warm-up sample, and a compile (so the READY
server holds weights, not its largest sample's workspace: with it, A14B's first request peaks at 84 GB where later
ones take 53).

Sequence parallel (the manifest's `parallel.ulysses` > 1, torch engine): the instance drives a group of devices
through worker processes (wan22_triton.parallel.worker_group) and answers with rank 0's result.

Compile artifacts (the manifest's `compile_points`, `--compile-artifacts`; wan22_triton.speed.compile_cache): loaded in
setup when made on a machine like this one; Triton's warm-up (model_warmup, one sample per point) then runs every
point before the model is READY. A forward that compiles logs it and emits `expert_compiled`. Warm-up samples
(`--warmup` or the artifacts) carry the optional `warmup` input: their forward runs the first block alone, which
compiles and tunes what all blocks share, so READY does not wait for 39 more blocks at every size and batch.
"""

from __future__ import annotations

import contextlib
import functools
import time

import numpy as np
import torch

from wan22_triton.speed import compile_cache, fast_path

from wan22_triton.operations import events

from wan22_triton.request import lora

from wan22_triton.triton_models import triton_io
from wan22_triton.operations.limits import check_latents
from wan22_triton.components.expert import (HIDDEN_STATES, INPUTS, LORA, LORA_SCALE, NOISE_PRED, RELEASE_INPUT,
                                            WARMUP_INPUT, WORKSPACE_INPUT)
from wan22_triton.engines import runners
from wan22_triton.engines.onnx_runner import OnnxRunner
from wan22_triton.errors import RequestError
from wan22_triton.engines.loading import build_expert, expert_forward
from wan22_triton.options import Compile, Engine, Quantization
from wan22_triton.parallel.worker_group import WorkerGroup
from wan22_triton.triton_models.base import ComponentModel

WARMUP = WARMUP_INPUT.name  # optional, declared with a warm-up: Triton's samples send it true
LORA_INPUTS = (LORA, LORA_SCALE)  # optional, declared when the export loaded LoRAs


class ExpertRunner(runners.Runner):
    """What the model asks of an expert's runner, besides `__call__(inputs, warmup) -> noise_pred`."""

    adapters: lora.ExpertAdapters | None = None  # the LoRAs of the manifest, one active per call
    batches = False  # several requests' inputs in one forward (execute_together)

    def release_workspace(self) -> None:
        """Whatever the model's own release (base.ComponentModel) does not reach."""


class OnnxExpert(ExpertRunner):
    """The exported graph in ONNX Runtime (the export declares no adapters and no warm-up for it)."""

    def __init__(self, model: ComponentModel) -> None:
        self.graph = OnnxRunner.served(model)

    def __call__(self, inputs: dict, warmup: bool = False) -> np.ndarray:
        return self.graph(inputs)[NOISE_PRED]


class TorchExpert(ExpertRunner):
    """The diffusers module with the manifest's speed options (fast_path) and LoRA adapters; with `parallel.ulysses`
    > 1, a sequence-parallel group of worker processes."""

    torch_work = True
    batches = True

    def __init__(self, model: ComponentModel) -> None:
        manifest, self.log = model.manifest, model.logger.log_info
        self.name, self.version, self.device, self.dtype = model.name, model.version, model.device, model.dtype
        self.compiles = manifest.speed.compile != Compile.NONE
        if manifest.parallel.ulysses > 1:
            self.module = _sequence_parallel_group(model)
            return
        from diffusers import WanTransformer3DModel

        # FP8 holds the loaded weights as it quantizes them: one expert at a time on a GPU (the first-call lock), as
        # the memory budget counts (wan22_triton.memory.budget)
        quantizes = manifest.speed.quantization != Quantization.NONE
        with model.first_call_lock if quantizes else contextlib.nullcontext():
            module = model.load_weights(WanTransformer3DModel, "transformer", "transformer")
            # Before fast_path: FP8 quantizes the base layers, the adapters stay a BF16 low-rank path (lora.py).
            self.adapters = lora.ExpertAdapters.load(module, model.root, manifest.loras, log=self.log)
            cache = compile_cache.CompileCache.of_expert(manifest, model.root, model.device)
            self.module = fast_path.optimize_transformer(module, manifest.speed, log=self.log, compile_cache=cache)

    def __call__(self, inputs: dict, warmup: bool = False) -> np.ndarray | torch.Tensor:
        """The noise prediction, float32, where the inputs came from: the GPU for a GPU caller, else the host.
        `warmup` (Triton's samples): the first block alone, except through a sequence-parallel group."""
        on_gpu = isinstance(inputs[HIDDEN_STATES], torch.Tensor) and inputs[HIDDEN_STATES].is_cuda
        started = time.time()
        first_block_only = warmup and not isinstance(self.module, WorkerGroup)
        forward = functools.partial(expert_forward, self.module, inputs, self.device, self.dtype, first_block_only)
        if not self.compiles:
            noise = forward()
        else:  # a compile after the warm-up (a shape outside the compile points) is logged and an event
            with compile_cache.reported_compiles(self.name, inputs[HIDDEN_STATES].shape, self.log):
                noise = forward()
        # which instance computed what, when (tests check how CFG halves are placed; GPU: enqueue times)
        events.emit("expert_forward", model=self.name, version=self.version, batch=int(noise.shape[0]),
                    first_block_only=first_block_only, started=started)
        return noise if on_gpu else noise.cpu().numpy()

    def release_workspace(self) -> None:
        if isinstance(self.module, WorkerGroup):  # every rank's
            self.module.release_workspace()

    def close(self) -> None:
        if isinstance(self.module, WorkerGroup):
            self.module.shutdown()


def _sequence_parallel_group(model: ComponentModel) -> WorkerGroup:
    """This instance and one worker process per further device of its group, each with the whole expert,
    every forward spread over them (wan22_triton.parallel.sequence_parallel)."""
    plan = model.manifest.parallel
    devices = plan.group_devices(torch.device(model.device))
    if devices[-1].type == "cuda" and devices[-1].index >= torch.cuda.device_count():
        raise ValueError(f"{model.name}: ulysses {plan.ulysses} from {model.device} needs GPUs up to "
                         f"{devices[-1]}; {torch.cuda.device_count()} visible")
    build = functools.partial(build_expert, model.manifest, model.root)
    return WorkerGroup(model.name, devices, build, plan.collective_timeout_s, model.logger.log_info,
                       model.logger.log_error).start()


RUNNERS = {Engine.TORCH: TorchExpert, Engine.ONNX: OnnxExpert}  # tensorrt: Triton's tensorrt backend serves the plan


class TritonPythonModel(ComponentModel):
    runner: ExpertRunner
    shape_input = HIDDEN_STATES

    def setup(self) -> None:
        self.weights = None  # low-memory mode: load_weights sets them (torch engine)
        self.runner = runners.pick(RUNNERS, self)

    def respond(self, requests):
        # Several requests in one call run as one batch when they can: Triton's warm-up sends a sample of batch_size
        # N as N batch-1 requests at once, and the batch-2 graph of CFG steps must be what it compiles (serving,
        # without a dynamic batcher, hands over one request at a time).
        if len(requests) > 1 and self.runner.batches and self.weights is None and not self.manifest.loras:
            warmup = all(triton_io.input_shape(r, WARMUP) is not None for r in requests)
            names = (*INPUTS, WARMUP) if warmup else INPUTS
            responses = triton_io.execute_together(requests, names, self._infer_inputs, self.logger)
            if responses is not None:
                return responses
        return super().respond(requests)

    def releases_after(self, requests) -> bool:
        if self.weights is not None:  # low-memory mode: its `release` moves the weights and empties the cache
            return False
        marked = (triton_io.request_inputs(r, (WORKSPACE_INPUT.name,)) for r in requests)
        return any(_marked(m.get(WORKSPACE_INPUT.name)) for m in marked)

    def release_workspace(self, requests: int) -> None:
        super().release_workspace(requests)
        self.runner.release_workspace()

    @torch.inference_mode()
    def _infer_inputs(self, inputs: dict) -> dict:
        self._check(inputs)
        return {NOISE_PRED: self.runner(inputs, warmup=_marked(inputs.pop(WARMUP, None)))}

    @torch.inference_mode()
    def infer(self, request):
        if self.weights is not None:
            return self._infer_offloaded(request)
        inputs = triton_io.request_inputs(request, (*INPUTS, *LORA_INPUTS, WARMUP))
        warmup = _marked(inputs.pop(WARMUP, None))
        adapter = lora.requested(inputs, self.manifest.limits.max_lora_scale)
        self._check(inputs)
        self._select_adapter(adapter)
        return triton_io.response({NOISE_PRED: self.runner(inputs, warmup)})

    def _select_adapter(self, adapter: lora.LoraChoice | None) -> None:
        """This call's LoRA made active (None: the base model): requests of different LoRAs interleave here."""
        if self.runner.adapters is not None:
            self.runner.adapters.select(adapter)
        elif adapter is not None:
            raise RequestError(f"{self.name}: serves no LoRA adapters, got lora {adapter[0]!r}")

    def _check(self, inputs: dict) -> None:
        """The latent within the limits and divisible by the patch (else the output would come back cropped)."""
        info = self.manifest.checkpoint
        check_latents(HIDDEN_STATES, inputs[HIDDEN_STATES].shape, info, self.manifest.limits, info.patch_size)

    def _infer_offloaded(self, request):
        assert self.weights is not None
        inputs = triton_io.request_inputs(request, (*INPUTS, RELEASE_INPUT.name))
        release = _marked(inputs.pop(RELEASE_INPUT.name, None))
        outputs = {}
        if inputs or not release:
            missing = [name for name in INPUTS if name not in inputs]
            if missing:
                raise RequestError(f"{self.name}: missing input(s) {missing} "
                                   f"(only a '{RELEASE_INPUT.name}' request may omit them)")
            self._check(inputs)
            self.weights.load()
            outputs[NOISE_PRED] = self.runner(inputs)
        if release:
            self.weights.release()
        return triton_io.response(outputs)


def _marked(flag) -> bool:
    """An optional BOOL input: true when sent and any item is true."""
    return flag is not None and bool(np.asarray(flag.cpu() if isinstance(flag, torch.Tensor) else flag).any())
