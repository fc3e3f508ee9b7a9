"""The limits each component model enforces itself: they can be called directly, not only by the orchestrator.

The orchestrator checks a request as a whole (request.validation); these checks keep a direct caller of
`text_encoder`, an expert or `vae_decoder` inside the same `Limits` (the manifest's) and reject, with the rule,
what a model would otherwise compute silently wrong (a latent the transformer's patch does not divide).
"""

from __future__ import annotations

from typing import Sequence

from wan22_triton.checkpoint import CheckpointInfo
from wan22_triton.components.common import LATENT
from wan22_triton.errors import RequestError
from wan22_triton.manifest import Limits
from wan22_triton.request.contract import HEIGHT, NUM_FRAMES, WIDTH


def check_prompt_bytes(name: str, size: int, limits: Limits, info: CheckpointInfo) -> None:
    """A prompt's UTF-8 size within `max_prompt_bytes` (the text encoder reads `text_len` tokens at most)."""
    if size > limits.max_prompt_bytes:
        raise RequestError(f"'{name}' is {size} bytes; the limit is {limits.max_prompt_bytes} bytes of UTF-8 "
                           f"(the text encoder reads {info.text_len} tokens)")


def latent_bounds(info: CheckpointInfo, limits: Limits) -> tuple[int, int, int]:
    """The largest (latent frames, latent height, latent width) the limits allow."""
    _, frames, height, width = info.latent_shape(limits.max_num_frames, limits.max_size, limits.max_size)
    return frames, height, width


def _check_video_axes(name: str, shape: Sequence[int], axes: Sequence[str], largest: Sequence[int],
                      multiples: Sequence[int]) -> None:
    """The last three axes of `shape` within [1, largest] and multiples of `multiples`, else RequestError naming the
    axis and the rule."""
    for axis, size, top, multiple in zip(axes, (int(d) for d in shape[-3:]), largest, multiples):
        if not 1 <= size <= top or size % multiple:
            raise RequestError(f"'{name}' {axis} must be within [1, {top}] and a multiple of {multiple}, got {size} "
                               f"(shape {list(shape)})")


def check_latents(name: str, shape: Sequence[int], info: CheckpointInfo, limits: Limits,
                  multiples: Sequence[int] = (1, 1, 1)) -> None:
    """[batch, channels, frames, height, width] within the limits; frames/height/width multiples of `multiples`
    (the transformer's patch: a latent it does not divide would come back cropped)."""
    _check_video_axes(name, shape, [axis.symbol for axis in LATENT], latent_bounds(info, limits), multiples)


def check_pixels(name: str, shape: Sequence[int], info: CheckpointInfo, limits: Limits) -> None:
    """[batch, rgb, frames, height, width] within the limits, height and width multiples of the VAE's factor."""
    spatial = info.vae_scale_factor_spatial
    _check_video_axes(name, shape, (NUM_FRAMES, HEIGHT, WIDTH),
                      (limits.max_num_frames, limits.max_size, limits.max_size), (1, spatial, spatial))
