"""The Wan2.2 request path as plain Python, testable without a server.

`Wan22T2VPipeline` follows diffusers' `WanPipeline.__call__` step by step (same scheduler, expert switch, CFG rule,
latent de-normalisation), and with an image `WanImageToVideoPipeline`'s `expand_timesteps` path (TI2V-5B); its
`__call__` reads as the numbered steps 1. encode prompts, 2. timesteps, 3. initial noise (and the image's first
frame), 4. denoise, 5. de-normalise and decode, each a method of its own. It calls its components through
injected callables: the Triton orchestrator passes BLS calls, tests/test_pipeline_diffusers.py passes the
diffusers modules. It takes a validated `GenerationRequest` (request/validation.py turns Triton's view of a request,
a dict of numpy arrays, into one).

The loop's tensors (latents, embeddings, noise, the scheduler's state) live on `device`: the CPU, or the GPU of an
orchestrator instance placed there, whose BLS calls then hand CUDA tensors to the experts without a host copy.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch

from wan22_triton.components.expert import expert_models
from wan22_triton.components.text_encoder import TEXT_ENCODER
from wan22_triton.components.vae_decoder import VAE_DECODER
from wan22_triton.components.vae_encoder import VAE_ENCODER
from wan22_triton.errors import Cancelled
from wan22_triton.manifest import Manifest
from wan22_triton.request.contract import FLOW_SHIFT, GUIDANCE_SCALE, GUIDANCE_SCALE_2, GenerationRequest
from wan22_triton.request.lora import LoraChoice
from wan22_triton.request.presets import DEFAULT_SAMPLER, euler_sigmas

if TYPE_CHECKING:  # the annotation only: the switch belongs to the low-memory mode (offload)
    from wan22_triton.memory.offload import ExpertSwitch


@dataclass
class StepInfo:
    """What progress reporting sees after each denoising step."""

    step: int  # 1-based
    total: int
    timestep: float
    expert: str
    elapsed_s: float


@dataclass
class GenerationResult:
    video: np.ndarray  # uint8 [frames, height, width, 3]
    seed: int
    timesteps: list[float] = field(default_factory=list)
    experts: list[str] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class FirstFrame:
    """An image as the video's first frame, in WanImageToVideoPipeline's two ways:

    * `expand_timesteps` (TI2V-5B): its latents replace the first latent frame before every expert call and at the
      end, and that frame's tokens denoise at timestep 0 (`mask` 0 there);
    * extra channels (I2V-A14B, `as_channels`): the mask (1 on the given frame) and the latents of the image followed
      by empty frames go into every expert call after the latents; the denoised latents are the video's.
    """

    latents: torch.Tensor  # normalised: [1, z, 1, h, w], or [1, z, f, h, w] as channels
    mask: torch.Tensor  # [1, 1, f, h, w], or [1, temporal factor, f, h, w] as channels
    as_channels: bool = False

    def model_input(self, latents: torch.Tensor) -> torch.Tensor:
        if self.as_channels:
            return torch.cat([latents, self.mask, self.latents], dim=1)
        return (1 - self.mask) * self.latents + self.mask * latents

    def final(self, latents: torch.Tensor) -> torch.Tensor:
        return latents if self.as_channels else self.model_input(latents)


# Components take torch tensors (on the pipeline's device) and may answer with numpy arrays or torch tensors.
Array = np.ndarray | torch.Tensor
TextEncoderFn = Callable[[list[str]], Array]  # prompts -> [B, text_len, text_dim]
# (model, latents, t, embeds) -> noise; a request with a LoRA adds the keyword `lora=(name, scale)`
ExpertFn = Callable[..., Array]
VaeDecoderFn = Callable[[torch.Tensor], Array]  # latents [1, z, f, h, w] -> uint8 frames [1, F, H, W, 3]
VaeEncoderFn = Callable[[torch.Tensor], Array]  # pixels [1, 3, 1, H, W] in [-1, 1] -> latents [1, z, 1, h, w]


def expert_for_timestep(t: float, manifest: Manifest) -> tuple[str, str]:
    """(served expert, guidance field) for timestep t, as WanPipeline switches experts.

    t >= boundary_ratio * num_train_timesteps -> high-noise expert with `guidance_scale`, else low-noise expert
    with `guidance_scale_2`; a checkpoint without a boundary uses its single expert throughout.
    """
    experts, boundary = expert_models(manifest.checkpoint), manifest.checkpoint.boundary_timestep
    if boundary is None or t >= boundary:
        return experts[0], GUIDANCE_SCALE
    return experts[1], GUIDANCE_SCALE_2


def make_scheduler(manifest: Manifest, flow_shift: float, sampler: str = DEFAULT_SAMPLER):
    """A fresh scheduler per request (schedulers are stateful): the checkpoint's own (UniPC) from its config, or for
    `euler` (presets.SAMPLERS) diffusers' FlowMatchEulerDiscreteScheduler, the solver Wan2.2-Lightning was
    distilled with; `flow_shift` is either one's shift."""
    if sampler == "euler":
        from diffusers import FlowMatchEulerDiscreteScheduler

        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=manifest.checkpoint.num_train_timesteps,
                                               shift=flow_shift)
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler.from_config(manifest.checkpoint.scheduler_config, flow_shift=flow_shift)


def frames_to_uint8(video: np.ndarray | torch.Tensor) -> torch.Tensor:
    """[B, 3, F, H, W] in [-1, 1] -> uint8 [B, F, H, W, 3] on the same device: diffusers' postprocess ((x+1)/2
    clamped to [0, 1]), then round(x*255), all in float32 (x*0.5 is exact, so CPU and GPU round alike)."""
    video = torch.as_tensor(video).float()
    video = (video * 0.5 + 0.5).clamp(0, 1)
    return (video.permute(0, 2, 3, 4, 1) * 255).round().to(torch.uint8)


class StageTimer:
    """Wall-clock seconds per stage of one request: `lap(stage)` closes a stage that began at the previous lap
    (the first one at the timer's creation)."""

    def __init__(self) -> None:
        self.start = self._last_lap = time.perf_counter()
        self.seconds: dict[str, float] = {}

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] = now - self._last_lap
        self._last_lap = now

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


def _raise_if_cancelled(is_cancelled: Callable[[], bool] | None) -> None:
    if is_cancelled is not None and is_cancelled():
        raise Cancelled("request cancelled by the client")


def uses_cfg(req: GenerationRequest) -> bool:
    """Classifier-free guidance is on when `guidance_scale` > 1, as in diffusers (whatever `guidance_scale_2`)."""
    return req.guidance_scale > 1.0


class Wan22T2VPipeline:
    """encode -> timesteps -> initial noise -> denoise (expert switch, CFG) -> de-normalise and decode.

    `__call__` runs the steps in WanPipeline's order; each is a method of its own. Stage times (`text_encoder`,
    `denoise`, `vae_decoder`) go to `GenerationResult.stage_seconds`; a request stops with `Cancelled` at the start
    of a denoising step or before the decode once `is_cancelled()` says so.
    """

    def __init__(
        self,
        manifest: Manifest,
        text_encoder: TextEncoderFn,
        expert: ExpertFn,
        vae_decoder: VaeDecoderFn,
        device: str | torch.device = "cpu",
        vae_encoder: VaeEncoderFn | None = None,
    ):
        self.manifest = manifest
        self.text_encoder = text_encoder
        self.expert = expert
        self.vae_decoder = vae_decoder
        self.vae_encoder = vae_encoder  # checkpoints that take an image
        self.device = torch.device(device)

    def __call__(
        self,
        req: GenerationRequest,
        on_step: Callable[[StepInfo], None] | None = None,
        is_cancelled: Callable[[], bool] | None = None,
        expert_switch: ExpertSwitch | None = None,
    ) -> GenerationResult:
        timer = StageTimer()
        result = GenerationResult(video=np.empty(0, np.uint8), seed=req.seed, stage_seconds=timer.seconds)

        # 1. Encode the prompt (and the negative prompt when CFG is on), as one batch.
        embeds = self.encode_prompts(req)
        timer.lap(TEXT_ENCODER)

        # 2. Timesteps from the checkpoint's scheduler.
        scheduler = self.prepare_scheduler(req)

        # 3. Initial noise, drawn as diffusers draws it; with an image, its latents as the first frame.
        latents = self.prepare_latents(req)
        first_frame = None
        if req.image is not None:
            first_frame = self.encode_image(req, latents)
            timer.lap(VAE_ENCODER)

        # 4. Denoise: each step on the expert of its timestep, with that expert's guidance scale.
        latents = self.denoise(req, scheduler, latents, embeds, result, timer, first_frame,
                               on_step=on_step, is_cancelled=is_cancelled, expert_switch=expert_switch)
        if first_frame is not None:
            latents = first_frame.final(latents)
        timer.lap("denoise")

        # 5. Undo the VAE's latent normalisation and decode to uint8 frames.
        _raise_if_cancelled(is_cancelled)
        result.video = self.decode(self.denormalize(latents))
        timer.lap(VAE_DECODER)
        return result

    def encode_prompts(self, req: GenerationRequest) -> torch.Tensor:
        """[1 or 2, text_len, text_dim]: the prompt, then the negative prompt when CFG is on."""
        prompts = [req.prompt, req.negative_prompt] if uses_cfg(req) else [req.prompt]
        return self._on_device(self.text_encoder(prompts))

    def warm_up(self) -> float:
        """What the first request would otherwise pay in this process (seconds spent): importing the samplers'
        schedulers (~2 s for UniPC) and their first step on the pipeline's device. No other model is called."""
        t0 = time.perf_counter()
        shift = self.manifest.checkpoint.request_defaults[FLOW_SHIFT]
        samplers = {DEFAULT_SAMPLER, *(p.sampler for p in self.manifest.presets)}
        for sampler in sorted(samplers):
            scheduler = make_scheduler(self.manifest, shift, sampler)
            scheduler.set_timesteps(2, device=self.device)
            latents = torch.zeros(1, 1, 1, 1, 1, device=self.device)
            scheduler.step(torch.zeros_like(latents), scheduler.timesteps[0], latents, return_dict=False)
        return time.perf_counter() - t0

    def prepare_scheduler(self, req: GenerationRequest):
        """A fresh scheduler (they are stateful) holding the request's timesteps on the pipeline's device."""
        scheduler = make_scheduler(self.manifest, req.flow_shift, req.sampler)
        if req.sampler == "euler":  # the Lightning release's sigma grid, shifted by the scheduler
            scheduler.set_timesteps(sigmas=euler_sigmas(req.num_inference_steps), device=self.device)
        else:
            scheduler.set_timesteps(req.num_inference_steps, device=self.device)
        scheduler.set_begin_index(0)
        return scheduler

    def prepare_latents(self, req: GenerationRequest) -> torch.Tensor:
        """[1, z, f, h, w] float32 noise exactly as diffusers draws it with torch.Generator("cpu").manual_seed(seed):
        on the CPU whatever the device, so every device starts from the same noise."""
        from diffusers.utils.torch_utils import randn_tensor

        shape = (1, *self.manifest.checkpoint.latent_shape(req.num_frames, req.height, req.width))
        generator = torch.Generator("cpu").manual_seed(req.seed)
        return randn_tensor(shape, generator=generator, device=torch.device("cpu"), dtype=torch.float32).to(self.device)

    def encode_image(self, req: GenerationRequest, latents: torch.Tensor) -> FirstFrame:
        """The request's image resized to the video's size and scaled to [-1, 1] by diffusers' VideoProcessor (as
        its pipelines do), encoded by the VAE (alone, or followed by empty frames as a whole video for the channels
        way), normalised like the latents; the mask from the latents' shape."""
        from diffusers.video_processor import VideoProcessor

        info = self.manifest.checkpoint
        processor = VideoProcessor(vae_scale_factor=info.vae_scale_factor_spatial)
        pixels = processor.preprocess(req.image, height=req.height, width=req.width).unsqueeze(2).to(self.device)
        as_channels = info.image_as_channels
        empty = info.image_frames(req.num_frames) - 1
        pixels = torch.cat([pixels, pixels.new_zeros(1, 3, empty, req.height, req.width)], dim=2)
        encoded = self._on_device(self.vae_encoder(pixels.to(torch.float32)))
        mean, inv_std = self._latent_statistics()
        if as_channels:  # diffusers' mask_lat_size: the given frame's temporal slots are 1, in the first latent frame
            mask = torch.zeros(1, info.vae_scale_factor_temporal, *latents.shape[2:], device=self.device)
            mask[:, :, 0] = 1
        else:
            mask = torch.ones(1, 1, *latents.shape[2:], device=self.device)
            mask[:, :, 0] = 0
        return FirstFrame((encoded - mean) * inv_std, mask, as_channels)

    def denoise(
        self,
        req: GenerationRequest,
        scheduler,
        latents: torch.Tensor,
        embeds: torch.Tensor,
        result: GenerationResult,
        timer: StageTimer,
        first_frame: FirstFrame | None = None,
        *,
        on_step: Callable[[StepInfo], None] | None,
        is_cancelled: Callable[[], bool] | None,
        expert_switch: ExpertSwitch | None,
    ) -> torch.Tensor:
        """The scheduler's loop; records each step's timestep and expert in `result`, then reports it to `on_step`.

        Low-memory mode: `expert_switch` hears of each step's expert before the call (the other expert leaves the
        GPU first) and settles after the last step, so that the VAE and the next request's text encoder get the GPU.
        """
        timesteps = [float(t) for t in scheduler.timesteps]
        for i, t in enumerate(scheduler.timesteps):
            _raise_if_cancelled(is_cancelled)
            expert, guidance_field = expert_for_timestep(float(t), self.manifest)
            if expert_switch is not None:
                expert_switch.before_step(expert, i)
            guidance_scale = getattr(req, guidance_field) if uses_cfg(req) else None
            noise = self.predict_noise(expert, latents, t, embeds, guidance_scale, req.adapter,
                                       release_workspace=self.last_of_expert(timesteps, i, expert),
                                       first_frame=first_frame)
            latents = scheduler.step(noise, t, latents, return_dict=False)[0]
            result.timesteps.append(float(t))
            result.experts.append(expert)
            if expert_switch is not None:
                expert_switch.after_step(i + 1)
            if on_step is not None:
                on_step(StepInfo(i + 1, req.num_inference_steps, float(t), expert, timer.elapsed()))
        if expert_switch is not None:
            expert_switch.settle()
        return latents

    def last_of_expert(self, timesteps: list[float], i: int, expert: str) -> bool:
        """With the manifest's `release_workspace` (not in low-memory mode, whose switch releases more): whether
        step `i` is `expert`'s last before the other expert or the decode, so that it hands its workspace back."""
        if not self.manifest.release_workspace or self.manifest.low_memory:
            return False
        return i + 1 == len(timesteps) or expert_for_timestep(timesteps[i + 1], self.manifest)[0] != expert

    def predict_noise(self, expert: str, latents: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor,
                      guidance_scale: float | None, lora: LoraChoice | None = None,
                      release_workspace: bool = False, first_frame: FirstFrame | None = None) -> torch.Tensor:
        """One expert call on [cond, uncond] as one batch, combined by CFG with `guidance_scale` (None: CFG off,
        a batch of one); `lora`: the adapter the expert applies to this call (None: the base model);
        `release_workspace`: the expert's last call for now (it hands its PyTorch cache back after it);
        `first_frame`: the image's condition (FirstFrame)."""
        batch = 1 if guidance_scale is None else 2
        conditioned = latents if first_frame is None else first_frame.model_input(latents)
        model_input = conditioned.expand(batch, *conditioned.shape[1:]).contiguous()
        timestep = self.expert_timestep(latents, t, batch, first_frame)
        # optional arguments only when set: callables that know neither keep working for the base model
        options: dict[str, Any] = {} if lora is None else dict(lora=lora)
        if release_workspace:
            options.update(release_workspace=True)
        noise = self._on_device(self.expert(expert, model_input, timestep, embeds, **options))
        if guidance_scale is None:
            return noise
        noise_cond, noise_uncond = noise[0:1], noise[1:2]
        return noise_uncond + guidance_scale * (noise_cond - noise_uncond)

    def expert_timestep(self, latents: torch.Tensor, t: torch.Tensor, batch: int,
                        first_frame: FirstFrame | None = None) -> torch.Tensor:
        """`t` for each batch item, or, where the checkpoint expands timesteps (TI2V-5B), for each latent token of
        each item (WanPipeline's `expand_timesteps`): `t` everywhere, or 0 on the first frame's tokens with an image
        (the mask at each patch's first position, in the transformer's token order)."""
        info = self.manifest.checkpoint
        if not info.expand_timesteps:
            return torch.full((batch,), float(t), dtype=torch.float32, device=self.device)
        if first_frame is None:
            return torch.full((batch, info.tokens(*latents.shape[2:])), float(t), dtype=torch.float32,
                              device=self.device)
        pt, ph, pw = info.patch_size
        per_token = (first_frame.mask[0, 0, ::pt, ::ph, ::pw] * float(t)).flatten().to(torch.float32)
        return per_token.unsqueeze(0).expand(batch, -1).contiguous()

    def denormalize(self, latents: torch.Tensor) -> torch.Tensor:
        """The VAE's latent space from the normalised one the experts work in (diffusers' operations)."""
        mean, inv_std = self._latent_statistics()
        return latents / inv_std + mean

    def _latent_statistics(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The VAE's latent mean and 1/std, shaped to broadcast over [1, z, f, h, w] (diffusers' operations)."""
        info = self.manifest.checkpoint
        mean = torch.tensor(info.latents_mean, device=self.device).view(1, -1, 1, 1, 1)
        inv_std = 1.0 / torch.tensor(info.latents_std, device=self.device).view(1, -1, 1, 1, 1)
        return mean, inv_std

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """uint8 [F, H, W, 3] on the host (the decoder model converts to uint8 where it runs: frames_to_uint8)."""
        return torch.as_tensor(self.vae_decoder(latents))[0].cpu().numpy()

    def _on_device(self, x: Array) -> torch.Tensor:
        """A component's answer as float32 on the pipeline's device."""
        return torch.as_tensor(x).to(self.device, torch.float32)
