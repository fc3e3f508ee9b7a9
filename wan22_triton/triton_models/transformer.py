"""`transformer_high_noise` / `transformer_low_noise`: one expert, one contract (components.transformer_spec).

Engines: `torch` runs the diffusers module (the manifest's speed options, see fast_path, and the benchmark seam
`random_weights_seed`, see random_weights); `onnx` runs the exported graph in onnxruntime. The
`tensorrt` engine is not a Python model at all: Triton's tensorrt_plan backend serves the plan under the same
contract. A GPU caller (the orchestrator on a GPU) sends CUDA tensors and gets `noise_pred` back on the GPU.

Low-memory mode (the manifest's `low_memory`, torch engine; see wan22_triton.memory.offload): the weights live in page-locked host
memory, go onto the GPU with the first request that brings work, and back when a request carries `release`
(BOOL, optional, declared only in this mode): after computing that request's step if it has one; a request with
`release` alone only releases (and answers with no outputs).

Workspace (the manifest's `release_workspace`, torch engine; base.ComponentModel): after a call the orchestrator
marks as the expert's last step before the switch or the decode (optional input `release_workspace`), the PyTorch
cache's unused blocks go back to the driver, on every rank of a sequence-parallel group, so that the expert waiting
for its turn holds its weights and not its last forward's activations. Steps in between keep the cache. The first
call at a new input shape releases too (base.ComponentModel): each warm-up sample, and a compile (so the READY
server holds weights, not its largest sample's workspace, which on an H200 made the first request's peak 84 GB where
later ones took 53).

Sequence parallel (the manifest's `parallel.ulysses` > 1, torch engine): the instance drives a group of devices
through worker processes (wan22_triton.parallel.worker_group) and answers with rank 0's result.

Compile artifacts (the manifest's `compile_points`, `--compile-artifacts`; wan22_triton.speed.compile_cache): loaded in
setup when made on a machine like this one; Triton's warm-up (model_warmup, one sample per point) then runs every
point before the model is READY. A forward that compiles logs it and emits `expert_compiled`. Warm-up samples
(`--warmup` or the artifacts) carry the optional `warmup` input: their forward runs the first block alone, which
compiles and tunes what all blocks share, so READY does not wait for 39 more blocks at every size and batch.
"""

from __future__ import annotations

import functools
import time

import numpy as np
import torch

from wan22_triton.speed import compile_cache, fast_path

from wan22_triton.operations import events

from wan22_triton.request import lora

from wan22_triton.triton_models import triton_io
from wan22_triton.operations.limits import check_latents
from wan22_triton.components import EXPERT_WARMUP_INPUT, EXPERT_WORKSPACE_INPUT
from wan22_triton.engines.onnx_runner import ONNX_GRAPH, OnnxRunner
from wan22_triton.errors import RequestError
from wan22_triton.engines.loading import build_expert, expert_forward
from wan22_triton.parallel.worker_group import WorkerGroup
from wan22_triton.triton_models.base import ComponentModel

INPUTS = ("hidden_states", "timestep", "encoder_hidden_states")
WARMUP = EXPERT_WARMUP_INPUT.name  # optional, declared with a warm-up: Triton's samples send it true
LORA_INPUTS = (lora.LORA_INPUT, lora.SCALE_INPUT)  # optional, declared when the export loaded LoRAs


class TritonPythonModel(ComponentModel):
    adapters: lora.ExpertAdapters | None = None  # torch engine: the LoRAs of the manifest, one active per call
    shape_input = "hidden_states"

    def setup(self) -> None:
        self.weights = None
        low_memory, speed = self.manifest.low_memory, self.manifest.speed
        if low_memory and self.engine != "torch":
            raise ValueError(f"{self.name}: low memory needs the torch engine, not {self.engine!r}")
        if self.engine == "torch" and self.manifest.parallel.ulysses > 1:
            self.model = self._sequence_parallel_group()
        elif self.engine == "torch":
            from diffusers import WanTransformer3DModel

            if low_memory and speed.quantization != "none":
                raise ValueError(f"{self.name}: low memory is not supported with quantization {speed.quantization!r}")
            model = self.load_weights(WanTransformer3DModel, "transformer", "transformer")
            if self.manifest.loras and (low_memory or speed.compile != "none"):
                raise ValueError(f"{self.name}: LoRA adapters are not supported with low memory or compile")
            # Before fast_path: FP8 quantizes the base layers, the adapters stay a BF16 low-rank path (lora.py).
            self.adapters = lora.ExpertAdapters.load(model, self.root, self.manifest.loras, log=self.logger.log_info)
            cache = compile_cache.CompileCache.of_expert(self.manifest, self.root, self.device)
            self.model = fast_path.optimize_transformer(model, speed, log=self.logger.log_info, compile_cache=cache)
        elif self.engine == "onnx":
            self.runner = OnnxRunner(self.root / ONNX_GRAPH, self.device)
        else:
            raise ValueError(f"{self.name}: unknown engine {self.engine!r}")

    def _sequence_parallel_group(self) -> WorkerGroup:
        """This instance and one worker process per further device of its group, each with the whole expert,
        every forward spread over them (wan22_triton.parallel.sequence_parallel)."""
        plan = self.manifest.parallel
        devices = plan.group_devices(torch.device(self.device))
        if devices[-1].type == "cuda" and devices[-1].index >= torch.cuda.device_count():
            raise ValueError(f"{self.name}: ulysses {plan.ulysses} from {self.device} needs GPUs up to "
                             f"{devices[-1]}; {torch.cuda.device_count()} visible")
        build = functools.partial(build_expert, self.manifest, self.root)
        return WorkerGroup(self.name, devices, build, plan.collective_timeout_s, self.logger.log_info,
                           self.logger.log_error).start()

    def finalize(self):
        if isinstance(getattr(self, "model", None), WorkerGroup):
            self.model.shutdown()

    def respond(self, requests):
        # Several requests in one call run as one batch when they can: Triton's warm-up sends a sample of batch_size
        # N as N batch-1 requests at once, and the batch-2 graph of CFG steps must be what it compiles (serving,
        # without a dynamic batcher, hands over one request at a time).
        if len(requests) > 1 and self.engine == "torch" and self.weights is None and not self.manifest.loras:
            warmup = all(triton_io.input_shape(r, WARMUP) is not None for r in requests)
            names = (*INPUTS, WARMUP) if warmup else INPUTS
            responses = triton_io.execute_together(requests, names, self._infer_inputs, self.logger)
            if responses is not None:
                return responses
        return super().respond(requests)

    def releases_after(self, requests) -> bool:
        if self.weights is not None:  # low-memory mode: its `release` moves the weights and empties the cache
            return False
        marked = (triton_io.request_inputs(r, (EXPERT_WORKSPACE_INPUT.name,)) for r in requests)
        return any(_marked(m.get(EXPERT_WORKSPACE_INPUT.name)) for m in marked)

    def release_workspace(self, requests: int) -> None:
        super().release_workspace(requests)
        if isinstance(self.model, WorkerGroup):
            self.model.release_workspace()

    @torch.inference_mode()
    def _infer_inputs(self, inputs: dict) -> dict:
        self._check(inputs)
        return {"noise_pred": self._forward(inputs, warmup=_marked(inputs.pop(WARMUP, None)))}

    @torch.inference_mode()
    def infer(self, request):
        if self.weights is not None:
            return self._infer_offloaded(request)
        inputs = triton_io.request_inputs(request, (*INPUTS, *LORA_INPUTS, WARMUP))
        warmup = _marked(inputs.pop(WARMUP, None))
        adapter = lora.requested(inputs, self.manifest.limits.max_lora_scale)
        self._check(inputs)
        if self.engine == "onnx":
            return triton_io.response(self.runner(inputs))
        self._select_adapter(adapter)
        return triton_io.response({"noise_pred": self._forward(inputs, warmup)})

    def _select_adapter(self, adapter: lora.LoraChoice | None) -> None:
        """This call's LoRA made active (None: the base model): requests of different LoRAs interleave here."""
        if self.adapters is not None:
            self.adapters.select(adapter)
        elif adapter is not None:
            raise RequestError(f"{self.name}: serves no LoRA adapters, got lora {adapter[0]!r}")

    def _check(self, inputs: dict) -> None:
        """The latent within the limits and divisible by the patch (else the output would come back cropped)."""
        info = self.manifest.checkpoint
        check_latents("hidden_states", inputs["hidden_states"].shape, info, self.manifest.limits, info.patch_size)

    def _forward(self, inputs: dict, warmup: bool = False) -> np.ndarray | torch.Tensor:
        """The noise prediction, float32, where the inputs came from: the GPU for a GPU caller, else the host.
        `warmup` (Triton's samples): the first block alone, except through a sequence-parallel group."""
        on_gpu = isinstance(inputs["hidden_states"], torch.Tensor) and inputs["hidden_states"].is_cuda
        started = time.time()
        first_block_only = warmup and not isinstance(self.model, WorkerGroup)
        forward = functools.partial(expert_forward, self.model, inputs, self.device, self.dtype, first_block_only)
        if self.manifest.speed.compile == "none":
            noise = forward()
        else:  # a compile after the warm-up (a shape outside the compile points) is logged and an event
            with compile_cache.reported_compiles(self.name, inputs["hidden_states"].shape, self.logger.log_info):
                noise = forward()
        # which instance computed what, when (tests check how CFG halves are placed; GPU: enqueue times)
        events.emit("expert_forward", model=self.name, version=self.version, batch=int(noise.shape[0]),
                    first_block_only=first_block_only, started=started)
        return noise if on_gpu else noise.cpu().numpy()

    def _infer_offloaded(self, request):
        assert self.weights is not None
        inputs = triton_io.request_inputs(request, (*INPUTS, "release"))
        release = _marked(inputs.pop("release", None))
        outputs = {}
        if inputs or not release:
            missing = [name for name in INPUTS if name not in inputs]
            if missing:
                raise RequestError(f"{self.name}: missing input(s) {missing} (only a 'release' request may omit them)")
            self._check(inputs)
            self.weights.load()
            outputs["noise_pred"] = self._forward(inputs)
        if release:
            self.weights.release()
        return triton_io.response(outputs)


def _marked(flag) -> bool:
    """An optional BOOL input: true when sent and any item is true."""
    return flag is not None and bool(np.asarray(flag.cpu() if isinstance(flag, torch.Tensor) else flag).any())
