"""Each served component declared once: tensor names, dtypes, dynamic axes, sample inputs, optimization profiles.

The ONNX export, the TensorRT build, the generated `config.pbtxt` files and the serving models all read these
declarations (as TensorRT's demo/Diffusion does with its model classes), so a name or a shape lives in one place.
Dimensions are either fixed ints taken from the checkpoint or symbols ("latent_frames") resolved per request; a
symbol may carry a factor for tensors that scale with it (the VAE's per-layer feature caches).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping

import numpy as np

from wan22_triton.checkpoint import CheckpointInfo

# Triton's names for the numpy dtypes we use (model_config.proto DataType without the TYPE_ prefix).
TRITON_DTYPES = {"float32": "FP32", "float16": "FP16", "int32": "INT32", "int64": "INT64", "uint8": "UINT8", "object": "STRING"}

TEXT_ENCODER = "text_encoder"
TRANSFORMER_HIGH_NOISE = "transformer_high_noise"
TRANSFORMER_LOW_NOISE = "transformer_low_noise"
VAE_DECODER = "vae_decoder"
VAE_DECODER_FRAME_MODELS = ("vae_decoder_first_frame", "vae_decoder_step")  # the two graphs vae_decoder drives
ORCHESTRATOR = "wan22_t2v"
ORCHESTRATOR_STREAM = "wan22_t2v_stream"  # decoupled: per-step progress, then the video

# Served expert name per diffusers sub-folder: `transformer` denoises high-noise steps, `transformer_2` low-noise.
EXPERT_MODELS = {"transformer": TRANSFORMER_HIGH_NOISE, "transformer_2": TRANSFORMER_LOW_NOISE}


def expert_models(info: CheckpointInfo) -> tuple[str, ...]:
    """The served expert models of a checkpoint, high-noise first."""
    return tuple(EXPERT_MODELS[folder] for folder in info.expert_folders)


@dataclass(frozen=True)
class Dim:
    """A dynamic dimension: `factor` times the value of `symbol`."""

    symbol: str
    factor: int = 1

    def resolve(self, sizes: Mapping[str, int]) -> int:
        return sizes[self.symbol] * self.factor

    @property
    def label(self) -> str:
        return self.symbol if self.factor == 1 else f"{self.symbol}_x{self.factor}"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name
    shape: tuple[int | Dim, ...]  # full shape, batch first when the component is batched

    def resolve(self, sizes: Mapping[str, int]) -> tuple[int, ...]:
        return tuple(d.resolve(sizes) if isinstance(d, Dim) else d for d in self.shape)

    def dynamic_axes(self) -> dict[int, str]:
        return {i: d.label for i, d in enumerate(self.shape) if isinstance(d, Dim)}

    @property
    def triton_dtype(self) -> str:
        """The config's name (TYPE_ prefix left out): strings are STRING."""
        return TRITON_DTYPES[self.dtype]

    @property
    def wire_dtype(self) -> str:
        """The inference protocol's name, what clients send: strings are BYTES."""
        return "BYTES" if self.dtype == "object" else self.triton_dtype


@dataclass(frozen=True)
class CompilePoint:
    """One video size at one expert batch: what the export compiles an expert for and the server warms it up with
    (`--compile-artifacts`, wan22_triton.speed.compile_cache)."""

    num_frames: int
    height: int
    width: int
    batch: int

    def sizes(self, info: CheckpointInfo) -> dict[str, int]:
        """The symbols' values the expert's tensors have at this point."""
        _, frames, height, width = info.latent_shape(self.num_frames, self.height, self.width)
        return {"batch": self.batch, "latent_frames": frames, "latent_height": height, "latent_width": width}

    @property
    def label(self) -> str:
        return f"{self.num_frames}x{self.height}x{self.width}_batch{self.batch}"


@dataclass(frozen=True)
class ShapeSpec:
    """Video sizes an engine must serve; TensorRT optimization profiles and the compile points of
    `--compile-artifacts` are derived from it.

    Users edit this (export CLI `--shape-spec file.json`); the defaults cover 81 frames at 480p and 720p.
    """

    num_frames: tuple[int, ...] = (81,)
    resolutions: tuple[tuple[int, int], ...] = ((480, 832), (720, 1280))  # (height, width)
    max_batch: int = 2  # cond + uncond

    def compile_points(self, batches: Iterable[int]) -> tuple[CompilePoint, ...]:
        """Every size at every batch, in the spec's order (the first size first: the common case)."""
        return tuple(CompilePoint(f, h, w, b) for f in self.num_frames for (h, w) in self.resolutions for b in batches)

    def symbol_ranges(self, info: CheckpointInfo) -> dict[str, tuple[int, int, int]]:
        """(min, opt, max) of every symbol; opt is the first listed size (the common case)."""
        shapes = [info.latent_shape(f, h, w) for f in self.num_frames for (h, w) in self.resolutions]
        first = info.latent_shape(self.num_frames[0], *self.resolutions[0])

        def rng(axis: int) -> tuple[int, int, int]:
            values = [s[axis] for s in shapes]
            return (min(values), first[axis], max(values))

        return {
            "batch": (1, self.max_batch, self.max_batch),
            "latent_frames": rng(1),
            "latent_height": rng(2),
            "latent_width": rng(3),
            "video_frames": (min(self.num_frames), self.num_frames[0], max(self.num_frames)),
        }


@dataclass(frozen=True)
class ComponentSpec:
    """One model of the repository as the engines see it."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int  # Triton's; 0 means the model is not batched
    sample_sizes: Mapping[str, int] = field(default_factory=dict)  # symbol values for a sample input

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {t.name: t.dynamic_axes() for t in (*self.inputs, *self.outputs) if t.dynamic_axes()}

    def sample_inputs(self, sizes: Mapping[str, int] | None = None, seed: int = 0) -> dict[str, np.ndarray]:
        """Random inputs of the declared dtypes and shapes (timesteps in the scheduler's [0, 1000) range)."""
        rng = np.random.default_rng(seed)
        sizes = {**self.sample_sizes, **(sizes or {})}
        out = {}
        for t in self.inputs:
            shape = t.resolve(sizes)
            if t.name == "timestep":
                out[t.name] = rng.uniform(0, 999, size=shape).round().astype(t.dtype)
            else:
                out[t.name] = rng.standard_normal(shape).astype(t.dtype)
        return out

    def profile(self, ranges: Mapping[str, tuple[int, int, int]]) -> dict[str, tuple[tuple[int, ...], ...]]:
        """TensorRT optimization profile: input name -> (min, opt, max) shapes."""
        return {
            t.name: tuple(t.resolve({k: v[i] for k, v in ranges.items()}) for i in range(3))  # type: ignore[misc]
            for t in self.inputs
        }


BATCH = Dim("batch")
LATENT = (Dim("latent_frames"), Dim("latent_height"), Dim("latent_width"))


def text_encoder_spec(info: CheckpointInfo) -> ComponentSpec:
    """Tokenizer + UMT5 as diffusers runs them; embeddings past each prompt's length are zero."""
    return ComponentSpec(
        name=TEXT_ENCODER,
        inputs=(TensorSpec("text", "object", (BATCH, 1)),),
        outputs=(TensorSpec("prompt_embeds", "float32", (BATCH, info.text_len, info.text_dim)),),
        max_batch_size=2,
        sample_sizes={"batch": 2},
    )


def transformer_spec(info: CheckpointInfo, name: str) -> ComponentSpec:
    """The contract both experts share; batch 2 carries cond and uncond together."""
    return ComponentSpec(
        name=name,
        inputs=(
            TensorSpec("hidden_states", "float32", (BATCH, info.in_channels, *LATENT)),
            TensorSpec("timestep", "float32", (BATCH,)),
            TensorSpec("encoder_hidden_states", "float32", (BATCH, info.text_len, info.text_dim)),
        ),
        outputs=(TensorSpec("noise_pred", "float32", (BATCH, info.out_channels, *LATENT)),),
        max_batch_size=2,
        sample_sizes={"batch": 2, "latent_frames": 3, "latent_height": 4, "latent_width": 6},
    )


def with_inputs(spec: ComponentSpec, *extra: TensorSpec) -> ComponentSpec:
    """`spec` with more (optional) inputs in its config.pbtxt; the ONNX/TensorRT contract stays `spec`'s."""
    return ComponentSpec(spec.name, (*spec.inputs, *extra), spec.outputs, spec.max_batch_size, spec.sample_sizes)


# Low-memory mode (export `low_memory`, wan22_triton.memory.offload): the experts' config adds one optional input.
TRITON_DTYPES.setdefault("bool", "BOOL")
EXPERT_RELEASE_INPUT = TensorSpec("release", "bool", (BATCH, 1))  # true: weights back to host memory after this


def transformer_offload_spec(info: CheckpointInfo, name: str) -> ComponentSpec:
    """The expert contract of the low-memory mode (config.pbtxt only, never an ONNX/TensorRT graph): the same
    tensors plus the optional `release`; the data inputs become optional too, so that a request may carry
    `release` alone. `transformer_spec` itself, and so the ONNX/TensorRT contract, does not change."""
    return with_inputs(transformer_spec(info, name), EXPERT_RELEASE_INPUT)


def transformer_offload_optional_inputs(info: CheckpointInfo) -> frozenset[str]:
    return frozenset(t.name for t in transformer_offload_spec(info, TRANSFORMER_HIGH_NOISE).inputs)


# LoRA adapters (export `--lora`, wan22_triton.request.lora): the experts' config adds two optional inputs, the adapter of
# this call and its scale (absent: the base model); the ONNX/TensorRT contract (`transformer_spec`) is unchanged.
EXPERT_LORA_INPUTS = (TensorSpec("lora", "object", (BATCH, 1)), TensorSpec("lora_scale", "float32", (BATCH, 1)))


# Workspace release (the manifest's `release_workspace`): true on the last call of an expert's run of steps for
# its request (the switch, the last step); the expert hands its PyTorch cache back after that call.
EXPERT_WORKSPACE_INPUT = TensorSpec("release_workspace", "bool", (BATCH, 1))
# Warm-up (`--warmup`, `--compile-artifacts`): true in Triton's warm-up samples only. The expert then runs its first
# block alone (triton_models/transformer.py): the compile, its kernels and the attention plans are the block's, which
# all 40 blocks share, so the warm-up skips 39 blocks' work whose output Triton throws away. The orchestrator never
# sends it; a direct caller that does gets the first block's output, not the expert's.
EXPERT_WARMUP_INPUT = TensorSpec("warmup", "bool", (BATCH, 1))


def vae_decoder_spec(info: CheckpointInfo) -> ComponentSpec:
    """De-normalised latents -> `video`: frames in [-1, 1] (batch, rgb, frames, height, width), float32, what
    diffusers' decode returns; `frames`: the same as uint8 (batch, frames, height, width, rgb), converted where the
    decoder runs (a quarter of the bytes to move; the orchestrator asks for this one)."""
    s = info.vae_scale_factor_spatial
    height, width = Dim("latent_height", s), Dim("latent_width", s)
    return ComponentSpec(
        name=VAE_DECODER,
        inputs=(TensorSpec("latents", "float32", (BATCH, info.z_dim, *LATENT)),),
        outputs=(
            TensorSpec("video", "float32", (BATCH, 3, Dim("video_frames"), height, width)),
            TensorSpec("frames", "uint8", (BATCH, Dim("video_frames"), height, width, 3)),
        ),
        max_batch_size=1,
        sample_sizes={"batch": 1, "latent_frames": 3, "latent_height": 4, "latent_width": 6},
    )


@dataclass(frozen=True)
class CacheEntry:
    """One causal convolution's feature cache in the VAE decoder: (batch, channels, 2, h*scale, w*scale)."""

    channels: int
    scale: int


def vae_decoder_frame_specs(info: CheckpointInfo, caches: Iterable[CacheEntry]) -> tuple[ComponentSpec, ComponentSpec]:
    """The two graphs behind `vae_decoder` for ONNX and TensorRT: the first latent frame, then one frame per step.

    Wan's VAE decodes latent frames one by one, each causal convolution reading the previous frames' features;
    a graph traced for one frame count would bake that loop in. With the caches as explicit inputs and outputs
    the same two graphs serve every frame count, and memory stays at one frame's worth of features.
    """
    caches = tuple(caches)
    s, t = info.vae_scale_factor_spatial, info.vae_scale_factor_temporal
    latent_frame = TensorSpec("latent_frame", "float32", (BATCH, info.z_dim, 1, *LATENT[1:]))

    def cache_specs(prefix: str) -> tuple[TensorSpec, ...]:
        return tuple(
            TensorSpec(f"{prefix}_{i}", "float32", (BATCH, c.channels, 2, Dim("latent_height", c.scale), Dim("latent_width", c.scale)))
            for i, c in enumerate(caches)
        )

    def frames(n: int) -> TensorSpec:
        return TensorSpec("frames", "float32", (BATCH, 3, n, Dim("latent_height", s), Dim("latent_width", s)))

    sizes = {"batch": 1, "latent_height": 4, "latent_width": 6}
    first_name, step_name = VAE_DECODER_FRAME_MODELS
    first = ComponentSpec(first_name, (latent_frame,), (frames(1), *cache_specs("cache_out")), 1, sizes)
    step = ComponentSpec(
        step_name, (latent_frame, *cache_specs("cache_in")), (frames(t), *cache_specs("cache_out")), 1, sizes
    )
    return first, step


# The request contract of `wan22_t2v` / `wan22_t2v_stream` (non-batched, every input shape [1]; see README).
SCALAR = (1,)
REQUEST_INPUTS = (
    TensorSpec("prompt", "object", SCALAR),
    TensorSpec("negative_prompt", "object", SCALAR),
    TensorSpec("num_frames", "int32", SCALAR),
    TensorSpec("height", "int32", SCALAR),
    TensorSpec("width", "int32", SCALAR),
    TensorSpec("num_inference_steps", "int32", SCALAR),
    TensorSpec("guidance_scale", "float32", SCALAR),
    TensorSpec("guidance_scale_2", "float32", SCALAR),
    TensorSpec("flow_shift", "float32", SCALAR),
    TensorSpec("seed", "int64", SCALAR),
    TensorSpec("output_format", "object", SCALAR),  # "frames" (default) or "mp4"
    TensorSpec("lora", "object", SCALAR),  # an adapter the export loaded (manifest `loras`); "" or absent: none
    TensorSpec("lora_scale", "float32", SCALAR),  # its strength, default 1.0
    TensorSpec("preset", "object", SCALAR),  # named sampler settings (wan22_triton.request.presets), its LoRA by default
)
OPTIONAL_REQUEST_INPUTS = frozenset(t.name for t in REQUEST_INPUTS if t.name != "prompt")


def orchestrator_spec(info: CheckpointInfo, stream: bool = False) -> ComponentSpec:
    """The model users call: `REQUEST_INPUTS` in, the video and what produced it out.

    The streaming variant takes the same inputs and adds `progress` (JSON per step) to its responses.
    """
    progress = (TensorSpec("progress", "object", SCALAR),) if stream else ()
    return ComponentSpec(
        name=ORCHESTRATOR_STREAM if stream else ORCHESTRATOR,
        inputs=REQUEST_INPUTS,
        outputs=(
            *progress,
            TensorSpec("video", "uint8", (Dim("video_frames"), Dim("height"), Dim("width"), 3)),
            TensorSpec("video_mp4", "object", SCALAR),
            TensorSpec("seed_used", "int64", SCALAR),
            TensorSpec("step_timesteps", "float32", (Dim("steps"),)),
            TensorSpec("step_experts", "object", (Dim("steps"),)),
            TensorSpec("stage_seconds", "object", SCALAR),  # JSON {stage: seconds}
        ),
        max_batch_size=0,
    )
