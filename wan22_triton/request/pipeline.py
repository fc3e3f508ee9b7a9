"""The Wan2.2 T2V request path as plain Python, testable without a server.

`Wan22T2VPipeline` follows diffusers' `WanPipeline.__call__` step by step (same scheduler, expert switch, CFG rule,
latent de-normalisation); its `__call__` reads as the numbered steps 1. encode prompts, 2. timesteps, 3. initial
noise, 4. denoise, 5. de-normalise and decode, each a method of its own. It calls its three components through
injected callables: the Triton orchestrator passes BLS calls, tests/test_pipeline_diffusers.py passes the
diffusers modules. Inputs arrive as a dict of numpy arrays (Triton's view of a request) and are validated here
(`validate_request`) so that every bad value gets a message naming the field and the rule.

The loop's tensors (latents, embeddings, noise, the scheduler's state) live on `device`: the CPU, or the GPU of an
orchestrator instance placed there, whose BLS calls then hand CUDA tensors to the experts without a host copy.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np
import torch

from wan22_triton.checkpoint import RequestSettings
from wan22_triton.operations.limits import check_prompt_bytes
from wan22_triton.components import expert_models
from wan22_triton.errors import Cancelled, RequestError
from wan22_triton.request.lora import LoraChoice, name_problem
from wan22_triton.manifest import Manifest
from wan22_triton.request.presets import DEFAULT_SAMPLER, euler_sigmas, find_preset

if TYPE_CHECKING:  # the annotation only: the switch belongs to the low-memory mode (offload)
    from wan22_triton.memory.offload import ExpertSwitch

OUTPUT_FORMATS = ("frames", "mp4")


@dataclass(frozen=True, kw_only=True)
class GenerationRequest(RequestSettings):
    """A validated request: every optional input resolved, plus the prompt and the seed."""

    prompt: str
    seed: int
    lora: str | None = None  # the adapter every expert call of this request uses; None: the base model
    lora_scale: float = 1.0
    preset: str | None = None
    sampler: str = DEFAULT_SAMPLER  # set by a preset only (presets.SAMPLERS)

    @property
    def adapter(self) -> LoraChoice | None:
        return None if self.lora is None else (self.lora, self.lora_scale)


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


# Components take torch tensors (on the pipeline's device) and may answer with numpy arrays or torch tensors.
Array = np.ndarray | torch.Tensor
TextEncoderFn = Callable[[list[str]], Array]  # prompts -> [B, text_len, text_dim]
# (model, latents, t, embeds) -> noise; a request with a LoRA adds the keyword `lora=(name, scale)`
ExpertFn = Callable[..., Array]
VaeDecoderFn = Callable[[torch.Tensor], Array]  # latents [1, z, f, h, w] -> uint8 frames [1, F, H, W, 3]


def _scalar(inputs: Mapping[str, np.ndarray], name: str, kind: type, default: Any) -> Any:
    value = inputs.get(name)
    if value is None:
        return default
    if value.size != 1:
        raise RequestError(f"'{name}' must hold exactly one value, got shape {list(value.shape)}")
    item = value.reshape(-1)[0]
    if kind is str:
        if isinstance(item, str):
            return item
        try:
            return bytes(item).decode("utf-8")
        except UnicodeDecodeError as e:
            raise RequestError(f"'{name}' must be valid UTF-8 text: {e}") from None
    return kind(item)


def validate_request(inputs: Mapping[str, np.ndarray], manifest: Manifest) -> GenerationRequest:
    """Apply defaults and check every rule; raise RequestError naming the field and the rule."""
    d, lim, info = manifest.checkpoint.request_defaults, manifest.limits, manifest.checkpoint
    prompt = _scalar(inputs, "prompt", str, None)
    if prompt is None:
        raise RequestError("'prompt' is required")
    # A preset replaces the defaults it names and brings its LoRA; the request's own inputs still override both.
    preset_name = _scalar(inputs, "preset", str, "") or None
    preset = None if preset_name is None else find_preset(manifest.presets, preset_name)
    if preset_name is not None and preset is None:
        raise RequestError(f"'preset' must be one of {[p.name for p in manifest.presets]}, got {preset_name!r}")
    if preset is not None:
        d = dataclasses.replace(d, **preset.settings())
    req = GenerationRequest(
        prompt=prompt,
        negative_prompt=_scalar(inputs, "negative_prompt", str, d.negative_prompt),
        num_frames=_scalar(inputs, "num_frames", int, d.num_frames),
        height=_scalar(inputs, "height", int, d.height),
        width=_scalar(inputs, "width", int, d.width),
        num_inference_steps=_scalar(inputs, "num_inference_steps", int, d.num_inference_steps),
        guidance_scale=_scalar(inputs, "guidance_scale", float, d.guidance_scale),
        guidance_scale_2=_scalar(inputs, "guidance_scale_2", float, d.guidance_scale_2),
        flow_shift=_scalar(inputs, "flow_shift", float, d.flow_shift),
        seed=_scalar(inputs, "seed", int, None) if "seed" in inputs else secrets.randbelow(2**63),
        output_format=_scalar(inputs, "output_format", str, d.output_format),
        lora=_scalar(inputs, "lora", str, preset.lora if preset else None) or None,  # "": none, even a preset's
        lora_scale=_scalar(inputs, "lora_scale", float, preset.lora_scale if preset else 1.0),
        preset=preset_name,
        sampler=preset.sampler if preset else DEFAULT_SAMPLER,
    )
    for name in ("prompt", "negative_prompt"):
        check_prompt_bytes(name, len(getattr(req, name).encode()), lim, info)
    if req.output_format not in OUTPUT_FORMATS:
        raise RequestError(f"'output_format' must be one of {list(OUTPUT_FORMATS)}, got {req.output_format!r}")
    k = info.vae_scale_factor_temporal
    if req.num_frames % k != 1 % k or not lim.min_num_frames <= req.num_frames <= lim.max_num_frames:
        raise RequestError(
            f"'num_frames' must be of the form {k}k+1 within [{lim.min_num_frames}, {lim.max_num_frames}], "
            f"got {req.num_frames}"
        )
    m = info.spatial_multiple
    for name in ("height", "width"):
        value = getattr(req, name)
        if value % m or not lim.min_size <= value <= lim.max_size:
            raise RequestError(f"'{name}' must be a multiple of {m} within [{lim.min_size}, {lim.max_size}], got {value}")
    if manifest.video_sizes and (req.num_frames, req.height, req.width) not in manifest.video_sizes:
        sizes = ", ".join(f"{f}x{h}x{w}" for f, h, w in manifest.video_sizes)
        raise RequestError(
            f"'num_frames' x 'height' x 'width' {req.num_frames}x{req.height}x{req.width} is not a size this repository "
            f"was built for (TensorRT profiles or compiled experts); served: {sizes}"
        )
    if not 1 <= req.num_inference_steps <= lim.max_inference_steps:
        raise RequestError(
            f"'num_inference_steps' must be within [1, {lim.max_inference_steps}], got {req.num_inference_steps}"
        )
    for name in ("guidance_scale", "guidance_scale_2"):
        if not np.isfinite(getattr(req, name)) or getattr(req, name) < 0:
            raise RequestError(f"'{name}' must be a finite number >= 0, got {getattr(req, name)}")
    if not np.isfinite(req.flow_shift) or req.flow_shift <= 0:
        raise RequestError(f"'flow_shift' must be a finite number > 0, got {req.flow_shift}")
    if not 0 <= req.seed < 2**63:
        raise RequestError(f"'seed' must be within [0, 2**63), got {req.seed}")
    _check_lora(req, manifest, preset_name)
    return req


def _check_lora(req: GenerationRequest, manifest: Manifest, preset: str | None) -> None:
    """The request's adapter is one the export loaded (a name, never a path), its scale finite and bounded."""
    bound = manifest.limits.max_lora_scale
    if not np.isfinite(req.lora_scale) or abs(req.lora_scale) > bound:
        raise RequestError(f"'lora_scale' must be a finite number within [-{bound:g}, {bound:g}], got {req.lora_scale}")
    if req.lora is None:
        return
    problem = name_problem(req.lora)
    if problem is not None:
        raise RequestError(f"'lora' {problem}")
    if req.lora not in manifest.loras:
        origin = f" (preset {preset!r}'s default; send lora \"\" for none)" if preset else ""
        raise RequestError(f"'lora' {req.lora!r}{origin} is not served here; served: {list(manifest.loras)}")


def expert_for_timestep(t: float, manifest: Manifest) -> tuple[str, str]:
    """(served expert, guidance field) for timestep t, as WanPipeline switches experts.

    t >= boundary_ratio * num_train_timesteps -> high-noise expert with `guidance_scale`, else low-noise expert
    with `guidance_scale_2`; a checkpoint without a boundary uses its single expert throughout.
    """
    experts, boundary = expert_models(manifest.checkpoint), manifest.checkpoint.boundary_timestep
    if boundary is None or t >= boundary:
        return experts[0], "guidance_scale"
    return experts[1], "guidance_scale_2"


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
    ):
        self.manifest = manifest
        self.text_encoder = text_encoder
        self.expert = expert
        self.vae_decoder = vae_decoder
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
        timer.lap("text_encoder")

        # 2. Timesteps from the checkpoint's scheduler.
        scheduler = self.prepare_scheduler(req)

        # 3. Initial noise, drawn as diffusers draws it.
        latents = self.prepare_latents(req)

        # 4. Denoise: each step on the expert of its timestep, with that expert's guidance scale.
        latents = self.denoise(req, scheduler, latents, embeds, result, timer,
                               on_step=on_step, is_cancelled=is_cancelled, expert_switch=expert_switch)
        timer.lap("denoise")

        # 5. Undo the VAE's latent normalisation and decode to uint8 frames.
        _raise_if_cancelled(is_cancelled)
        result.video = self.decode(self.denormalize(latents))
        timer.lap("vae_decoder")
        return result

    def encode_prompts(self, req: GenerationRequest) -> torch.Tensor:
        """[1 or 2, text_len, text_dim]: the prompt, then the negative prompt when CFG is on."""
        prompts = [req.prompt, req.negative_prompt] if uses_cfg(req) else [req.prompt]
        return self._on_device(self.text_encoder(prompts))

    def warm_up(self) -> float:
        """What the first request would otherwise pay in this process (seconds spent): importing the samplers'
        schedulers (~2 s for UniPC) and their first step on the pipeline's device. No other model is called."""
        t0 = time.perf_counter()
        shift = self.manifest.checkpoint.request_defaults.flow_shift
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

    def denoise(
        self,
        req: GenerationRequest,
        scheduler,
        latents: torch.Tensor,
        embeds: torch.Tensor,
        result: GenerationResult,
        timer: StageTimer,
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
                                       release_workspace=self.last_of_expert(timesteps, i, expert))
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
                      release_workspace: bool = False) -> torch.Tensor:
        """One expert call on [cond, uncond] as one batch, combined by CFG with `guidance_scale` (None: CFG off,
        a batch of one); `lora`: the adapter the expert applies to this call (None: the base model);
        `release_workspace`: the expert's last call for now (it hands its PyTorch cache back after it)."""
        batch = 1 if guidance_scale is None else 2
        model_input = latents.expand(batch, *latents.shape[1:]).contiguous()
        timestep = torch.full((batch,), float(t), dtype=torch.float32, device=self.device)
        # optional arguments only when set: callables that know neither keep working for the base model
        options: dict[str, Any] = {} if lora is None else {"lora": lora}
        if release_workspace:
            options["release_workspace"] = True
        noise = self._on_device(self.expert(expert, model_input, timestep, embeds, **options))
        if guidance_scale is None:
            return noise
        noise_cond, noise_uncond = noise[0:1], noise[1:2]
        return noise_uncond + guidance_scale * (noise_cond - noise_uncond)

    def denormalize(self, latents: torch.Tensor) -> torch.Tensor:
        """The VAE's latent space from the normalised one the experts work in (diffusers' operations)."""
        info = self.manifest.checkpoint
        mean = torch.tensor(info.latents_mean, device=self.device).view(1, -1, 1, 1, 1)
        inv_std = 1.0 / torch.tensor(info.latents_std, device=self.device).view(1, -1, 1, 1, 1)
        return latents / inv_std + mean

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """uint8 [F, H, W, 3] on the host (the decoder model converts to uint8 where it runs: frames_to_uint8)."""
        return torch.as_tensor(self.vae_decoder(latents))[0].cpu().numpy()

    def _on_device(self, x: Array) -> torch.Tensor:
        """A component's answer as float32 on the pipeline's device."""
        return torch.as_tensor(x).to(self.device, torch.float32)
