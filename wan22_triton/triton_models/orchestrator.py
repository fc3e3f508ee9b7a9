"""`wan22_t2v`: the BLS orchestrator users call. pb_utils I/O only; the request path is `pipeline.Wan22T2VPipeline`.

Low-memory mode (the manifest's `low_memory`, export `--low-memory`): the experts keep their weights in
host memory and load them when they get work; this model tells the expert that just became inactive to release
them (a request with the expert's optional `release` input alone) at the switch and after the last step
(offload.ExpertSwitch), and runs one generation at a time across all orchestrator instances of the repository,
both models included (a file lock; waiting requests still honour cancellation and `max_request_seconds`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from wan22_triton.operations import events, locks

from wan22_triton.memory import budget, offload

from wan22_triton.triton_models import heap_settled, triton_io
from wan22_triton.operations.abandonment import AbandonWatch
from wan22_triton.components.expert import (ENCODER_HIDDEN_STATES, HIDDEN_STATES, LORA, LORA_SCALE, NOISE_PRED,
                                            RELEASE_INPUT, TIMESTEP, WORKSPACE_INPUT, expert_models)
from wan22_triton.components.orchestrator import (PROGRESS, SEED_USED, STAGE_SECONDS, STEP_EXPERTS, STEP_TIMESTEPS,
                                                  VIDEO, VIDEO_MP4)
from wan22_triton.components.text_encoder import PROMPT_EMBEDS, TEXT, TEXT_ENCODER
from wan22_triton.components.vae_decoder import FRAMES, LATENTS, VAE_DECODER
from wan22_triton.components.vae_encoder import PIXELS, VAE_ENCODER
from wan22_triton.errors import Cancelled
from wan22_triton.request.contract import OutputFormat
from wan22_triton.request.lora import LoraChoice
from wan22_triton.manifest import Manifest
from wan22_triton.operations.metrics import GenerationMetrics
from wan22_triton.parallel.plan import ReplicaSlots, split_cfg
from wan22_triton.request.pipeline import StepInfo, Wan22T2VPipeline
from wan22_triton.request.validation import validate_request
from wan22_triton.request.video import encode_mp4


def bls_text_encoder(prompts: list[str], version: int = -1) -> np.ndarray:
    text = np.array([[p.encode("utf-8")] for p in prompts], dtype=object)
    out = triton_io.bls_infer(TEXT_ENCODER, {TEXT: text}, [PROMPT_EMBEDS], model_version=version)
    return out[PROMPT_EMBEDS]


def bls_expert(model: str, latents, timestep, embeds, output_device: str = "cpu", lora: LoraChoice | None = None,
               release_workspace: bool = False, version: int = -1):
    # a timestep per item travels as [B, 1] (the config's reshape hands the model the declared [B]); per token, as is
    inputs = {HIDDEN_STATES: latents, TIMESTEP: timestep.reshape(-1, 1) if timestep.ndim == 1 else timestep,
              ENCODER_HIDDEN_STATES: embeds}
    rows = latents.shape[0]
    if lora is not None:  # the expert selects this adapter for this call only (wan22_triton.request.lora)
        inputs[LORA] = np.array([[lora[0].encode("utf-8")]] * rows, dtype=object)
        inputs[LORA_SCALE] = np.full((rows, 1), lora[1], dtype=np.float32)
    if release_workspace:  # this expert's last step for now: its workspace back after it (components.expert)
        inputs[WORKSPACE_INPUT.name] = np.ones((rows, 1), dtype=bool)
    return triton_io.bls_infer(model, inputs, [NOISE_PRED], output_device, version)[NOISE_PRED]


def bls_release_expert(model: str, version: int = -1) -> None:
    """Low-memory mode: the expert's weights back to host memory (its optional `release` input, nothing else)."""
    triton_io.bls_infer(model, {RELEASE_INPUT.name: np.ones((1, 1), dtype=bool)}, [], model_version=version)


def bls_vae_decoder(latents, version: int = -1):
    # uint8, to the host
    return triton_io.bls_infer(VAE_DECODER, {LATENTS: latents}, [FRAMES], model_version=version)[FRAMES]


def bls_vae_encoder(pixels, version: int = -1):
    return triton_io.bls_infer(VAE_ENCODER, {PIXELS: pixels}, [LATENTS], model_version=version)[LATENTS]


class Route:
    """The component version this process's generation in progress calls: its replica's (-1: the only one)."""

    version: int = -1


class TritonPythonModel:
    """Serves both `wan22_t2v` and, when its config is decoupled, `wan22_t2v_stream` (per-step progress)."""

    def initialize(self, args):
        pb = triton_io.pb_utils()
        self.logger = pb.Logger
        self.model_config = json.loads(args["model_config"])
        self.manifest = Manifest.from_model_config(self.model_config)
        self.fps = float(self.manifest.checkpoint.generation.fps)
        self.max_request_seconds = float(self.manifest.limits.max_request_seconds)
        self.input_names = [i["name"] for i in self.model_config["input"]]
        self.streaming = pb.using_decoupled_model_transaction_policy(self.model_config)
        # On a GPU instance the denoising loop's tensors stay on that GPU, and so do the experts' answers.
        device = triton_io.torch_device(args)
        self.card_bytes = triton_io.card_bytes(device)
        budget.check_load(self.manifest.memory, self.manifest.checkpoint, self.manifest.video_sizes, self.card_bytes,
                          self.manifest.model)
        self.metrics = GenerationMetrics(pb, self.manifest.model)
        self.route = route = Route()
        self.replica_slots, self.own_replica = self._replicas(args, device)

        def expert(model, latents, timestep, embeds, **kwargs):  # the version of this generation's replica
            return bls_expert(model, latents, timestep, embeds, output_device=device, version=route.version, **kwargs)

        if self.manifest.parallel.cfg_parallel == 2:  # the two halves as concurrent BLS calls (parallel.split_cfg)
            self.cfg_pool = ThreadPoolExecutor(2, thread_name_prefix="cfg")
            expert = split_cfg(expert, self.cfg_pool)
        expert = self.metrics.timed_expert(expert)
        encoder = None
        if self.manifest.checkpoint.takes_image:
            encoder = lambda pixels: bls_vae_encoder(pixels, route.version)  # noqa: E731
        self.pipeline = Wan22T2VPipeline(self.manifest, lambda prompts: bls_text_encoder(prompts, route.version),
                                         expert, lambda latents: bls_vae_decoder(latents, route.version), device,
                                         vae_encoder=encoder)
        warm_s = self.pipeline.warm_up()  # the schedulers' imports and first steps, before READY
        self.generation_lock = (
            locks.InterProcessLock(locks.lock_path(args["model_repository"], "generation"))
            if self.manifest.low_memory else None
        )
        # A model process that dies is reloaded (or reported not ready) instead of failing every request after it.
        self.watchdog = triton_io.start_watchdog(args)
        self.logger.log_info(
            f"{self.manifest.model} ready: experts {expert_models(self.manifest.checkpoint)}, streaming "
            f"{self.streaming}, low memory {self.manifest.low_memory}, defaults {self.manifest.checkpoint.request_defaults}, "
            f"schedulers warmed up in {warm_s:.2f}s"
        )
        heap_settled()

    def _replicas(self, args, device: str) -> tuple[ReplicaSlots | None, int]:
        """With several replicas: the slots every orchestrator instance of the server shares (both models: as many
        per replica as they have instances in all, so a generation never waits for one), and this instance's own
        replica, preferred among equally busy ones."""
        plan = self.manifest.parallel
        if plan.replicas == 1:
            return None, 0
        instances = sum(g["count"] * max(1, len(g.get("gpus", []))) for g in self.model_config["instance_group"])
        own = plan.replica_of(int(device.partition(":")[2])) if device.startswith("cuda") else 0
        return ReplicaSlots(args["model_repository"], plan.replicas, slots=2 * instances), own

    @contextlib.contextmanager
    def _on_a_replica(self):
        """The generation's components: the least busy replica's versions, for as long as it runs."""
        if self.replica_slots is None:
            yield
            return
        with self.replica_slots.hold(prefer=self.own_replica) as replica:
            self.route.version = replica + 1
            events.emit("generation_replica", model=self.manifest.model, replica=replica)
            try:
                yield
            finally:
                self.route.version = -1

    def finalize(self):
        self.watchdog.stop()

    def execute(self, requests):
        if not self.streaming:
            return triton_io.execute_each(requests, self._measured_generate, self.logger)
        for request in requests:
            sender = request.get_response_sender()
            final = triton_io.pb_utils().TRITONSERVER_RESPONSE_COMPLETE_FINAL
            [response] = triton_io.execute_each([request], lambda r: self._measured_generate(r, sender), self.logger)
            sender.send(response, flags=final)
        return None

    def _measured_generate(self, request, sender=None):
        with self.metrics.request():  # wan22_* metrics on Triton's /metrics (wan22_triton.operations.metrics)
            return self._generate(request, sender)

    def _generate(self, request, sender=None):
        # 1. Validate (defaults from the checkpoint, limits from the manifest).
        req = validate_request(triton_io.request_inputs(request, self.input_names), self.manifest, self.card_bytes)
        self.logger.log_info(
            f"generate {req.num_frames}x{req.height}x{req.width}, {req.num_inference_steps} steps, seed {req.seed}"
            + (f", preset {req.preset}" if req.preset else "") + (f", lora {req.lora} x{req.lora_scale:g}" if req.lora else "")
        )
        started = time.monotonic()
        client_gone = AbandonWatch(request.parameters())  # HTTP: Triton 2.51 does not say so, the HTTP guard does

        def stop_requested() -> bool:
            if self.max_request_seconds and time.monotonic() - started > self.max_request_seconds:
                raise Cancelled(f"request exceeded max_request_seconds ({self.max_request_seconds:g} s)")
            if client_gone():
                raise Cancelled("request abandoned: the HTTP client went away")
            return (sender or request).is_cancelled()

        def report(step: StepInfo) -> None:
            progress = json.dumps(dataclasses.asdict(step)).encode()
            sender.send(triton_io.response({PROGRESS: np.array([progress], dtype=object)}))

        # 2-5. Encode, prepare latents, denoise with the expert switch, decode (pipeline.Wan22T2VPipeline), on
        # one replica's components.
        with self._on_a_replica():
            if self.manifest.low_memory:
                result = self._generate_low_memory(req, report if sender else None, stop_requested)
            else:
                result = self.pipeline(req, on_step=report if sender else None, is_cancelled=stop_requested)
        # 6. Video as frames or as an MP4 made here.
        outputs = {
            SEED_USED: np.array([result.seed], dtype=np.int64),
            STEP_TIMESTEPS: np.array(result.timesteps, dtype=np.float32),
            STEP_EXPERTS: np.array([e.encode() for e in result.experts], dtype=object),
        }
        if req.output_format == OutputFormat.MP4:
            t0 = time.perf_counter()
            outputs[VIDEO_MP4] = np.array([encode_mp4(result.video, self.fps)], dtype=object)
            result.stage_seconds["encode_mp4"] = time.perf_counter() - t0
        else:
            outputs[VIDEO] = result.video
        outputs[STAGE_SECONDS] = np.array([json.dumps(result.stage_seconds).encode()], dtype=object)
        self.metrics.stages(result.stage_seconds)
        self.logger.log_info("stages: " + ", ".join(f"{k} {v:.3f}s" for k, v in result.stage_seconds.items()))
        return triton_io.response(outputs)

    def _generate_low_memory(self, req, on_step, stop_requested):
        """The pipeline with an ExpertSwitch, one generation at a time; a stopped request releases its expert."""
        assert self.generation_lock is not None

        def should_stop() -> bool:
            if stop_requested():
                raise Cancelled("request cancelled by the client")
            return False

        waited = self.generation_lock.acquire(should_stop)
        events.emit("generation_lock_waited", seconds=waited)
        if waited > 0.001:  # another instance (or the other orchestrator model) was generating
            self.logger.log_info(f"low-memory: waited {waited:.3f}s for the generation in progress")
        switch = offload.ExpertSwitch(
            lambda model: bls_release_expert(model, self.route.version),
            keep=expert_models(self.manifest.checkpoint)[0], log=self.logger.log_info,
        )
        try:
            return self.pipeline(req, on_step=on_step, is_cancelled=stop_requested, expert_switch=switch)
        finally:
            try:
                switch.settle("request stopped")  # no-op after a finished denoising; else the expert leaves
            finally:
                self.generation_lock.release()
