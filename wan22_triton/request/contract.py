"""The request contract of `wan22_t2v` / `wan22_t2v_stream`, declared once: `FIELDS`.

Each field names a request input, its dtype, its default, its rule and its help. From the table come the
orchestrators' inputs (`REQUEST_INPUTS`, each of shape [1] but an image's pixels), the typed request (`GenerationRequest`), its
validation (request/validation.py) and the clients' flags (clients/common.py). Adding an input means adding a row
here (and using it in the pipeline). numpy only: the clients import it.

A rule is text with {placeholders} for what the server decides (its limits, the checkpoint's factors, the LoRAs
and presets it serves: validation.server_bounds); `--help` shows the placeholders' names.
"""

from __future__ import annotations

import dataclasses
import math
import string
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Any, Callable, Mapping

import numpy as np

from wan22_triton.components.common import SCALAR, Dim, TensorSpec

PROMPT = "prompt"
NEGATIVE_PROMPT = "negative_prompt"
NUM_FRAMES = "num_frames"
HEIGHT = "height"
WIDTH = "width"
NUM_INFERENCE_STEPS = "num_inference_steps"
GUIDANCE_SCALE = "guidance_scale"
GUIDANCE_SCALE_2 = "guidance_scale_2"
FLOW_SHIFT = "flow_shift"
SEED = "seed"
OUTPUT_FORMAT = "output_format"
LORA = "lora"
LORA_SCALE = "lora_scale"
PRESET = "preset"
IMAGE = "image"
IMAGE_RGB = "image_rgb"
RGB_SHAPE = (Dim("image_height"), Dim("image_width"), 3)


class OutputFormat(StrEnum):
    FRAMES = "frames"  # raw uint8 frames
    MP4 = "mp4"  # an MP4 encoded on the server at the checkpoint's fps


class Default(Enum):
    """Defaults that are not one value."""

    REQUIRED = "required"
    CHECKPOINT = "the checkpoint's"  # CheckpointInfo.request_defaults (a preset may replace it)
    RANDOM = "random"


SEED_END = 2**63
Check = Callable[[Any, Mapping[str, Any]], bool]  # (value, server bounds) -> whether the rule holds


@dataclass(frozen=True)
class RequestField:
    name: str
    dtype: str  # numpy dtype name; "object": UTF-8 text
    default: Any  # a value, or a `Default`; None: absent (for lora and preset, "" means absent too)
    rule: str  # what a value must be; {placeholders}: the server's bounds
    help: str
    # None: checked by validation.py with a message of its own (text sizes, LoRA names, images)
    check: Check | None = None
    binary: bool = False  # "object" holding bytes, not text (an encoded image)
    shape: tuple[int | Dim, ...] = SCALAR  # other than SCALAR: an array, taken whole (no client flag)

    @property
    def scalar(self) -> bool:
        return self.shape == SCALAR

    @property
    def kind(self) -> type:
        if not self.scalar:
            return np.ndarray
        if self.binary:
            return bytes
        return {"object": str, "int32": int, "int64": int, "float32": float}[self.dtype]

    @property
    def tensor(self) -> TensorSpec:
        return TensorSpec(self.name, self.dtype, self.shape)

    def describe(self, bounds: Mapping[str, Any] | None = None) -> str:
        """The rule, its placeholders filled from `bounds`, or shown as <name> without them."""
        if bounds is not None:
            return self.rule.format_map(bounds)
        return string.Formatter().vformat(self.rule, (), _Named())


class _Named(dict):
    def __missing__(self, key: str) -> Any:
        return _Placeholder(key)


class _Placeholder:
    def __init__(self, name: str):
        self.name = name

    def __format__(self, spec: str) -> str:
        return f"<{self.name}>"


def _finite(low: float, high: float = math.inf, low_open: bool = False) -> Check:
    return lambda v, b: math.isfinite(v) and (v > low if low_open else v >= low) and v <= high


TEXT_RULE = "UTF-8 text of at most {max_prompt_bytes} bytes"
FIELDS: tuple[RequestField, ...] = (
    RequestField(PROMPT, "object", Default.REQUIRED, TEXT_RULE, "what the video shows"),
    RequestField(NEGATIVE_PROMPT, "object", "", TEXT_RULE, "what to steer away from (with CFG)"),
    RequestField(NUM_FRAMES, "int32", Default.CHECKPOINT,
                 "of the form {frame_step}k+1 within [{min_num_frames}, {max_num_frames}]", "video length in frames",
                 lambda v, b: v % b["frame_step"] == 1 % b["frame_step"]
                 and b["min_num_frames"] <= v <= b["max_num_frames"]),
    *(RequestField(name, "int32", Default.CHECKPOINT, "a multiple of {spatial_multiple} within [{min_size}, {max_size}]",
                   f"video {name} in pixels",
                   lambda v, b: not v % b["spatial_multiple"] and b["min_size"] <= v <= b["max_size"])
      for name in (HEIGHT, WIDTH)),
    RequestField(NUM_INFERENCE_STEPS, "int32", Default.CHECKPOINT, "within [1, {max_inference_steps}]",
                 "denoising steps", lambda v, b: 1 <= v <= b["max_inference_steps"]),
    RequestField(GUIDANCE_SCALE, "float32", Default.CHECKPOINT, "a finite number >= 0",
                 "CFG scale of the high-noise expert; CFG is off at 1 or below", _finite(0)),
    RequestField(GUIDANCE_SCALE_2, "float32", Default.CHECKPOINT, "a finite number >= 0",
                 "CFG scale of the low-noise expert", _finite(0)),
    RequestField(FLOW_SHIFT, "float32", Default.CHECKPOINT, "a finite number > 0", "the scheduler's shift",
                 _finite(0, low_open=True)),
    RequestField(SEED, "int64", Default.RANDOM, "within [0, 2**63)", "initial noise; the response says which was used",
                 lambda v, b: 0 <= v < SEED_END),
    RequestField(OUTPUT_FORMAT, "object", OutputFormat.FRAMES, f"one of {[f.value for f in OutputFormat]}",
                 "raw frames, or an MP4 made on the server", lambda v, b: v in list(OutputFormat)),
    RequestField(LORA, "object", None, "a LoRA the server loaded, {loras}; \"\" for none",
                 "adapter for every expert call (a preset brings its own)"),
    RequestField(LORA_SCALE, "float32", 1.0, "a finite number within [-{max_lora_scale:g}, {max_lora_scale:g}]",
                 "the adapter's strength",
                 lambda v, b: _finite(-b["max_lora_scale"], b["max_lora_scale"])(v, b)),
    RequestField(PRESET, "object", None, "one of {presets}",
                 "named sampler settings and LoRA (request inputs still win)",
                 lambda v, b: v in b["presets"]),
    RequestField(IMAGE, "object", None,
                 "a PNG, JPEG or WebP of at most {max_image_bytes} bytes and {max_image_pixels} pixels, to a model "
                 "that takes one", "the first frame (image to video), resized to the video's size as diffusers does",
                 binary=True),
    RequestField(IMAGE_RGB, "uint8", None,
                 "an [height, width, 3] RGB array of at most {max_image_pixels} pixels, instead of '" + IMAGE + "'",
                 f"'{IMAGE}' as decoded pixels (programs that hold the picture already)", shape=RGB_SHAPE),
)
BY_NAME = {f.name: f for f in FIELDS}

REQUEST_INPUTS = tuple(f.tensor for f in FIELDS)
OPTIONAL_REQUEST_INPUTS = frozenset(f.name for f in FIELDS if f.default is not Default.REQUIRED)


def _adapter(self: Any) -> tuple[str, float] | None:
    """(name, scale) of the request's LoRA (request.lora.LoraChoice); None: the base model."""
    return None if self.lora is None else (self.lora, self.lora_scale)


# A validated request: every field resolved, plus the sampler (presets.SAMPLERS, set by a preset only).
GenerationRequest = dataclasses.make_dataclass(
    "GenerationRequest",
    [(f.name, f.kind | None if f.default is None else f.kind) for f in FIELDS] + [("sampler", str)],
    frozen=True, namespace={"adapter": property(_adapter), "__module__": __name__},
)
