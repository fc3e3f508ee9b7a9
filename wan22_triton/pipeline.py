"""The Wan2.2 T2V request path as plain Python, testable without a server.

`Wan22T2VPipeline` follows diffusers' `WanPipeline.__call__` step by step (same scheduler, expert switch, CFG rule,
latent de-normalisation), but calls its three components through injected callables: the Triton orchestrator
passes BLS calls, tests may pass the diffusers modules. Inputs arrive as a dict of numpy arrays (Triton's view of
a request) and are validated here so that every bad value gets a message naming the field and the rule.

The loop's tensors (latents, embeddings, noise, the scheduler's state) live on `device`: the CPU, or the GPU of an
orchestrator instance placed there, whose BLS calls then hand CUDA tensors to the experts without a host copy.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np
import torch

from .errors import Cancelled, RequestError

OUTPUT_FORMATS = ("frames", "mp4")


@dataclass(frozen=True)
class Limits:
    min_num_frames: int
    max_num_frames: int
    min_size: int
    max_size: int
    max_inference_steps: int


@dataclass(frozen=True)
class PipelineConfig:
    """Everything the orchestrator needs, written by the export into the model's config parameters."""

    scheduler_config: dict[str, Any]
    boundary_ratio: float | None
    expert_names: tuple[str, ...]  # served model names, high-noise first
    latent_channels: int
    vae_scale_factor_temporal: int
    vae_scale_factor_spatial: int
    spatial_multiple: int
    latents_mean: tuple[float, ...]
    latents_std: tuple[float, ...]
    defaults: dict[str, Any]  # default per optional request input
    limits: Limits
    # TensorRT plans serve only the sizes their optimization profiles were built for: (num_frames, height, width)
    video_sizes: tuple[tuple[int, int, int], ...] | None = None


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    negative_prompt: str
    num_frames: int
    height: int
    width: int
    num_inference_steps: int
    guidance_scale: float
    guidance_scale_2: float
    flow_shift: float
    seed: int
    output_format: str = "frames"


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


class ExpertSwitch:
    """Low-memory mode: at most one expert's weights on the GPU (see wan22_triton.offload). One per request.

    The pipeline calls `before_step` before each expert call: when the step goes to another expert than the one
    that ran last, that one is told to release its weights first (high -> low at the boundary). `settle` runs after
    the last step, and must run when a request stops early (the orchestrator's `finally`): it releases the resident
    expert unless it is `keep`, the expert every request starts with. Between requests, therefore, at most `keep`
    is on the GPU (for A14B: neither, every request ends on the low-noise expert), and at the start of a request
    `keep` counts as possibly resident. `release(model)` does the call; `log(message)` reports each release.
    """

    def __init__(self, release: Callable[[str], None], keep: str | None = None,
                 log: Callable[[str], None] | None = None):
        self.release = release
        self.keep = keep
        self.log = log
        self.resident: str | None = keep
        self.step = 0  # steps done so far
        self.released: list[tuple[str, int]] = []  # (expert, steps done when it was released)
        self.release_seconds = 0.0

    def before_step(self, expert: str, step: int) -> None:
        self.step = step
        if self.resident is not None and self.resident != expert:
            self._release(self.resident, f"before step {step + 1} ({expert})")
        self.resident = expert

    def settle(self, when: str = "after the denoising") -> None:
        if self.resident is not None and self.resident != self.keep:
            self._release(self.resident, when)
            self.resident = None

    def after_step(self, step: int) -> None:
        self.step = step

    def _release(self, expert: str, when: str) -> None:
        t0 = time.perf_counter()
        self.release(expert)
        seconds = time.perf_counter() - t0
        self.release_seconds += seconds
        self.released.append((expert, self.step))
        if self.log is not None:
            self.log(f"low-memory: released {expert} after step {self.step}, {when}, in {seconds:.3f}s")


# Components take torch tensors (on the pipeline's device) and may answer with numpy arrays or torch tensors.
Array = np.ndarray | torch.Tensor
TextEncoderFn = Callable[[list[str]], Array]  # prompts -> [B, text_len, text_dim]
ExpertFn = Callable[[str, torch.Tensor, torch.Tensor, torch.Tensor], Array]  # (model, latents, t, embeds) -> noise
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


def validate_request(inputs: Mapping[str, np.ndarray], config: PipelineConfig) -> GenerationRequest:
    """Apply defaults and check every rule; raise RequestError naming the field and the rule."""
    d, lim = config.defaults, config.limits
    prompt = _scalar(inputs, "prompt", str, None)
    if prompt is None:
        raise RequestError("'prompt' is required")
    req = GenerationRequest(
        prompt=prompt,
        negative_prompt=_scalar(inputs, "negative_prompt", str, d["negative_prompt"]),
        num_frames=_scalar(inputs, "num_frames", int, d["num_frames"]),
        height=_scalar(inputs, "height", int, d["height"]),
        width=_scalar(inputs, "width", int, d["width"]),
        num_inference_steps=_scalar(inputs, "num_inference_steps", int, d["num_inference_steps"]),
        guidance_scale=_scalar(inputs, "guidance_scale", float, d["guidance_scale"]),
        guidance_scale_2=_scalar(inputs, "guidance_scale_2", float, d["guidance_scale_2"]),
        flow_shift=_scalar(inputs, "flow_shift", float, d["flow_shift"]),
        seed=_scalar(inputs, "seed", int, None) if "seed" in inputs else secrets.randbelow(2**63),
        output_format=_scalar(inputs, "output_format", str, "frames"),
    )
    if req.output_format not in OUTPUT_FORMATS:
        raise RequestError(f"'output_format' must be one of {list(OUTPUT_FORMATS)}, got {req.output_format!r}")
    k = config.vae_scale_factor_temporal
    if req.num_frames % k != 1 % k or not lim.min_num_frames <= req.num_frames <= lim.max_num_frames:
        raise RequestError(
            f"'num_frames' must be of the form {k}k+1 within [{lim.min_num_frames}, {lim.max_num_frames}], "
            f"got {req.num_frames}"
        )
    m = config.spatial_multiple
    for name in ("height", "width"):
        value = getattr(req, name)
        if value % m or not lim.min_size <= value <= lim.max_size:
            raise RequestError(f"'{name}' must be a multiple of {m} within [{lim.min_size}, {lim.max_size}], got {value}")
    if config.video_sizes and (req.num_frames, req.height, req.width) not in config.video_sizes:
        sizes = ", ".join(f"{f}x{h}x{w}" for f, h, w in config.video_sizes)
        raise RequestError(
            f"'num_frames' x 'height' x 'width' {req.num_frames}x{req.height}x{req.width} has no TensorRT profile here; "
            f"served: {sizes}"
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
    return req


def expert_for_timestep(t: float, config: PipelineConfig) -> tuple[str, str]:
    """(served expert, guidance field) for timestep t, as WanPipeline switches experts.

    t >= boundary_ratio * num_train_timesteps -> high-noise expert with `guidance_scale`, else low-noise expert
    with `guidance_scale_2`; a checkpoint without a boundary uses its single expert throughout.
    """
    if config.boundary_ratio is None or len(config.expert_names) == 1:
        return config.expert_names[0], "guidance_scale"
    boundary = config.boundary_ratio * config.scheduler_config["num_train_timesteps"]
    if t >= boundary:
        return config.expert_names[0], "guidance_scale"
    return config.expert_names[1], "guidance_scale_2"


def make_scheduler(config: PipelineConfig, flow_shift: float):
    """A fresh scheduler per request (schedulers are stateful), from the checkpoint's own config."""
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler.from_config(config.scheduler_config, flow_shift=flow_shift)


def frames_to_uint8(video: np.ndarray | torch.Tensor) -> torch.Tensor:
    """[B, 3, F, H, W] in [-1, 1] -> uint8 [B, F, H, W, 3] on the same device: diffusers' postprocess ((x+1)/2
    clamped to [0, 1]), then round(x*255), all in float32 (x*0.5 is exact, so CPU and GPU round alike)."""
    video = torch.as_tensor(video).float()
    video = (video * 0.5 + 0.5).clamp(0, 1)
    return (video.permute(0, 2, 3, 4, 1) * 255).round().to(torch.uint8)


class Wan22T2VPipeline:
    """validate -> encode -> prepare latents -> denoise (expert switch, CFG) -> decode to uint8 frames."""

    def __init__(
        self,
        config: PipelineConfig,
        text_encoder: TextEncoderFn,
        expert: ExpertFn,
        vae_decoder: VaeDecoderFn,
        device: str | torch.device = "cpu",
    ):
        self.config = config
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
        cfg, device = self.config, self.device
        result = GenerationResult(video=np.empty(0, np.uint8), seed=req.seed)

        def on_device(x: Array) -> torch.Tensor:
            return torch.as_tensor(x).to(device, torch.float32)

        clock = time.perf_counter()
        start = clock

        def lap(stage: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            result.stage_seconds[stage] = now - clock
            clock = now

        def check_cancelled() -> None:
            if is_cancelled is not None and is_cancelled():
                raise Cancelled("request cancelled by the client")

        # 1. Encode the prompt (and the negative prompt when CFG is on), as one batch.
        do_cfg = req.guidance_scale > 1.0
        prompts = [req.prompt, req.negative_prompt] if do_cfg else [req.prompt]
        embeds = on_device(self.text_encoder(prompts))
        lap("text_encoder")

        # 2. Timesteps from the checkpoint's scheduler.
        scheduler = make_scheduler(cfg, req.flow_shift)
        scheduler.set_timesteps(req.num_inference_steps, device=device)
        scheduler.set_begin_index(0)

        # 3. Initial noise exactly as diffusers draws it with torch.Generator("cpu").manual_seed(seed).
        from diffusers.utils.torch_utils import randn_tensor

        latent_frames = (req.num_frames - 1) // cfg.vae_scale_factor_temporal + 1
        shape = (
            1,
            cfg.latent_channels,
            latent_frames,
            req.height // cfg.vae_scale_factor_spatial,
            req.width // cfg.vae_scale_factor_spatial,
        )
        generator = torch.Generator("cpu").manual_seed(req.seed)
        latents = randn_tensor(shape, generator=generator, device=torch.device("cpu"), dtype=torch.float32).to(device)

        # 4. Denoise: each step goes to the expert its timestep belongs to; cond and uncond run as one batch.
        batch = len(prompts)
        for i, t in enumerate(scheduler.timesteps):
            check_cancelled()
            expert, guidance_field = expert_for_timestep(float(t), cfg)
            if expert_switch is not None:  # low-memory mode: the other expert leaves the GPU first
                expert_switch.before_step(expert, i)
            model_input = latents.expand(batch, *latents.shape[1:]).contiguous()
            timestep = torch.full((batch,), float(t), dtype=torch.float32, device=device)
            noise = on_device(self.expert(expert, model_input, timestep, embeds))
            if do_cfg:
                noise_cond, noise_uncond = noise[0:1], noise[1:2]
                noise = noise_uncond + getattr(req, guidance_field) * (noise_cond - noise_uncond)
            latents = scheduler.step(noise, t, latents, return_dict=False)[0]
            result.timesteps.append(float(t))
            result.experts.append(expert)
            if expert_switch is not None:
                expert_switch.after_step(i + 1)
            if on_step is not None:
                on_step(StepInfo(i + 1, req.num_inference_steps, float(t), expert, time.perf_counter() - start))
        if expert_switch is not None:  # the VAE and the next request's text encoder get the GPU
            expert_switch.settle()
        lap("denoise")

        # 5. Undo the VAE's latent normalisation (same operations as diffusers), decode to uint8 [F, H, W, 3]
        #    (the decoder model converts where it runs: frames_to_uint8).
        check_cancelled()
        mean = torch.tensor(cfg.latents_mean, device=device).view(1, -1, 1, 1, 1)
        inv_std = 1.0 / torch.tensor(cfg.latents_std, device=device).view(1, -1, 1, 1, 1)
        latents = latents / inv_std + mean
        result.video = torch.as_tensor(self.vae_decoder(latents))[0].cpu().numpy()
        lap("vae_decoder")
        return result
