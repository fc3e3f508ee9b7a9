"""What the serving stack needs to know about a Wan diffusers checkpoint, read from its own configs.

Nothing here is hard-coded to one checkpoint: channels, patch size, scale factors, text length, boundary, per-token
timesteps and the VAE's latent statistics all come from the files under the checkpoint directory, and so does the
family (`Family`, told from model_index.json and the configs, never from the folder's name). The only values a
diffusers checkpoint does not carry are the generation defaults the Wan authors publish per family (guidance scales,
steps, fps: `GENERATION_DEFAULTS`, which `read_checkpoint` can override) and the video size where it is not
WanPipeline's (`VIDEO_DEFAULTS`).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

# The request fields are WanPipeline.__call__'s argument names: diffusers' defaults are read under the same names.
from wan22_triton.request.contract import (FLOW_SHIFT, GUIDANCE_SCALE, GUIDANCE_SCALE_2, HEIGHT, NUM_FRAMES,
                                           NUM_INFERENCE_STEPS, WIDTH)


class Family(StrEnum):
    """A checkpoint's model family, as its configs tell it (`family_of`)."""

    T2V_A14B = "wan2.2-t2v-a14b"  # two experts switched at the index's boundary_ratio
    I2V_A14B = "wan2.2-i2v-a14b"  # the same, conditioned on a first frame (mask + its latents as extra channels)
    TI2V_5B = "wan2.2-ti2v-5b"  # one transformer, per-token timesteps (the index's expand_timesteps), Wan2.2 VAE
    WAN21_T2V = "wan2.1-t2v"  # one transformer


@dataclass(frozen=True)
class GenerationDefaults:
    """Sampling defaults the Wan authors publish per model family; a diffusers checkpoint does not store them."""

    num_inference_steps: int
    guidance_scale: float
    guidance_scale_2: float
    fps: int


# Published sampling defaults of the Wan families (Wan-Video/Wan2.2 `wan/configs`), picked by the family the
# checkpoint's configs identify.
GENERATION_DEFAULTS: dict[Family, GenerationDefaults] = {
    Family.T2V_A14B: GenerationDefaults(num_inference_steps=40, guidance_scale=4.0, guidance_scale_2=3.0, fps=16),
    Family.I2V_A14B: GenerationDefaults(num_inference_steps=40, guidance_scale=3.5, guidance_scale_2=3.5, fps=16),
    Family.TI2V_5B: GenerationDefaults(num_inference_steps=50, guidance_scale=5.0, guidance_scale_2=5.0, fps=24),
    Family.WAN21_T2V: GenerationDefaults(num_inference_steps=50, guidance_scale=5.0, guidance_scale_2=5.0, fps=16),
}
# The published video size (num_frames, height, width) where it is not WanPipeline's default (81x480x832).
VIDEO_DEFAULTS: dict[Family, tuple[int, int, int]] = {Family.TI2V_5B: (121, 704, 1280)}
# Families that take an image as the first frame: I2V-A14B needs one, TI2V-5B does text or image to video.
IMAGE_FAMILIES = frozenset({Family.I2V_A14B, Family.TI2V_5B})
IMAGE_REQUIRED = frozenset({Family.I2V_A14B})
# The diffusers pipelines whose checkpoints are read (model_index.json's _class_name)
IMAGE_TO_VIDEO_PIPELINE = "WanImageToVideoPipeline"
PIPELINES = ("WanPipeline", IMAGE_TO_VIDEO_PIPELINE)


def _read_json(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _signature_default(func: Any, name: str) -> Any:
    """Default of a diffusers argument, so that values a checkpoint leaves out follow the library's."""
    return inspect.signature(func).parameters[name].default


def _pipeline_call_default(name: str) -> Any:
    from diffusers import WanPipeline

    return _signature_default(WanPipeline.__call__, name)


def _vae_config_value(vae_config: dict[str, Any], name: str) -> Any:
    from diffusers import AutoencoderKLWan

    return vae_config.get(name, _signature_default(AutoencoderKLWan.__init__, name))


@dataclass(frozen=True)
class CheckpointInfo:
    """Shapes, factors and defaults of one checkpoint, everything the export and the served models need.

    The export reads it once and hands it to every served model inside its manifest (wan22_triton.manifest).
    """

    # Where the export read it. Not in a manifest: a served model loads its own version folder, and a config must
    # not depend on the machine that exported it.
    path: str = field(default="", kw_only=True)
    family: Family
    expert_folders: tuple[str, ...]  # diffusers sub-folders, high-noise first: ("transformer", "transformer_2")
    boundary_ratio: float | None
    num_train_timesteps: int
    in_channels: int
    out_channels: int
    patch_size: tuple[int, int, int]
    text_dim: int
    text_len: int
    num_attention_heads: int  # the experts'; sequence parallelism splits them
    z_dim: int
    vae_scale_factor_temporal: int
    vae_scale_factor_spatial: int
    latents_mean: tuple[float, ...]
    latents_std: tuple[float, ...]
    default_height: int
    default_width: int
    default_num_frames: int
    generation: GenerationDefaults
    scheduler_config: dict[str, Any] = field(default_factory=dict)  # the checkpoint's scheduler_config.json
    # model_index.json's expand_timesteps: a timestep per latent token (batch, tokens), not one per batch item
    expand_timesteps: bool = False

    @property
    def takes_image(self) -> bool:
        """Whether requests may bring a first frame (the `image` input; a VAE encoder is served for it)."""
        return self.family in IMAGE_FAMILIES

    @property
    def requires_image(self) -> bool:
        return self.family in IMAGE_REQUIRED

    @property
    def image_as_channels(self) -> bool:
        """How an image conditions: as extra channels of every expert call, encoded with empty frames after it as a
        whole video (I2V-A14B), or, with `expand_timesteps` (TI2V-5B), as the first latent frame itself."""
        return not self.expand_timesteps

    def image_frames(self, num_frames: int) -> int:
        """The frames the VAE encoder gets for a request's image."""
        return num_frames if self.image_as_channels else 1

    @property
    def spatial_multiple(self) -> int:
        """Height and width must be multiples of this: VAE downsampling times the transformer's patch."""
        return self.vae_scale_factor_spatial * max(self.patch_size[1], self.patch_size[2])

    @property
    def boundary_timestep(self) -> float | None:
        """Timesteps at or above this go to the high-noise expert (WanPipeline's rule); None: one expert."""
        if self.boundary_ratio is None or len(self.expert_folders) == 1:
            return None
        return self.boundary_ratio * self.num_train_timesteps

    @property
    def request_defaults(self) -> dict[str, int | float]:
        """The request fields whose default is the checkpoint's (request.contract.Default.CHECKPOINT), by name."""
        return {
            NUM_FRAMES: self.default_num_frames,
            HEIGHT: self.default_height,
            WIDTH: self.default_width,
            NUM_INFERENCE_STEPS: self.generation.num_inference_steps,
            GUIDANCE_SCALE: self.generation.guidance_scale,
            GUIDANCE_SCALE_2: self.generation.guidance_scale_2,
            FLOW_SHIFT: float(self.scheduler_config.get(FLOW_SHIFT, 1.0)),  # the scheduler's own config key
        }

    def tokens(self, latent_frames: int, latent_height: int, latent_width: int) -> int:
        """The transformer's sequence length for a latent size (its patch embedding's output positions)."""
        return latent_frames // self.patch_size[0] * (latent_height // self.patch_size[1]) * (
            latent_width // self.patch_size[2])

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(channels, latent frames, latent height, latent width) of the noise for a video size, as diffusers computes
        it (the VAE's channels; an image-conditioned expert takes more, in_channels)."""
        return (
            self.z_dim,
            (num_frames - 1) // self.vae_scale_factor_temporal + 1,
            height // self.vae_scale_factor_spatial,
            width // self.vae_scale_factor_spatial,
        )


def read_checkpoint(path: str | Path, **generation: Any) -> CheckpointInfo:
    """Read a WanPipeline diffusers checkpoint directory (the tiny embedded ones or a real local one); `generation`
    overrides the family's published defaults (GenerationDefaults fields)."""
    root = Path(path)
    index_path = root / "model_index.json"
    if not index_path.is_file():
        raise FileNotFoundError(f"{root} is not a diffusers checkpoint: model_index.json is missing")
    index = _read_json(index_path)
    if index.get("_class_name") not in PIPELINES:
        raise ValueError(f"{root}: expected a {' or '.join(PIPELINES)} checkpoint, model_index.json names "
                         f"{index.get('_class_name')}")
    expert_folders = tuple(name for name in ("transformer", "transformer_2") if index.get(name, [None])[0] is not None)
    transformer = _read_json(root / expert_folders[0] / "config.json")
    vae = _read_json(root / "vae" / "config.json")
    text_encoder = _read_json(root / "text_encoder" / "config.json")
    scheduler = _read_json(root / "scheduler" / "scheduler_config.json")

    family = family_of(index, expert_folders)
    num_frames, height, width = VIDEO_DEFAULTS.get(family) or (
        _pipeline_call_default(NUM_FRAMES), _pipeline_call_default(HEIGHT), _pipeline_call_default(WIDTH))
    return CheckpointInfo(
        path=str(root.resolve()),
        family=family,
        expert_folders=expert_folders,
        boundary_ratio=index.get("boundary_ratio"),
        num_train_timesteps=int(scheduler["num_train_timesteps"]),
        in_channels=int(transformer["in_channels"]),
        out_channels=int(transformer["out_channels"]),
        patch_size=tuple(int(p) for p in transformer["patch_size"]),  # type: ignore[arg-type]
        text_dim=int(text_encoder["d_model"]),
        text_len=int(_pipeline_call_default("max_sequence_length")),
        num_attention_heads=int(transformer["num_attention_heads"]),
        z_dim=int(vae["z_dim"]),
        vae_scale_factor_temporal=int(_vae_config_value(vae, "scale_factor_temporal")),
        vae_scale_factor_spatial=int(_vae_config_value(vae, "scale_factor_spatial")),
        latents_mean=tuple(float(v) for v in vae["latents_mean"]),
        latents_std=tuple(float(v) for v in vae["latents_std"]),
        default_height=int(height),
        default_width=int(width),
        default_num_frames=int(num_frames),
        generation=dataclasses.replace(GENERATION_DEFAULTS[family], **generation),
        scheduler_config=scheduler,
        expand_timesteps=bool(index.get("expand_timesteps")),
    )


def family_of(index: dict[str, Any], expert_folders: tuple[str, ...]) -> Family:
    """The family a diffusers index describes: two experts, for text or (WanImageToVideoPipeline) image to video, or
    one transformer with or without per-token timesteps."""
    if len(expert_folders) == 2:
        return Family.I2V_A14B if index.get("_class_name") == IMAGE_TO_VIDEO_PIPELINE else Family.T2V_A14B
    return Family.TI2V_5B if index.get("expand_timesteps") else Family.WAN21_T2V
