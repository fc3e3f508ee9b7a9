"""A request's inputs checked against the contract (request/contract.py) before any work, as diffusers'
`check_inputs` does: defaults applied, then every rule; a bad value raises RequestError, one line naming the field
and the rule."""

from __future__ import annotations

import dataclasses
import secrets
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from wan22_triton.errors import RequestError, shown
from wan22_triton.operations.limits import check_prompt_bytes
from wan22_triton.request.contract import (FIELDS, HEIGHT, IMAGE, IMAGE_RGB, LORA, LORA_SCALE, NEGATIVE_PROMPT, NUM_FRAMES,
                                           PRESET, PROMPT, SEED, SEED_END, WIDTH, Default, GenerationRequest,
                                           RequestField)
from wan22_triton.request.image import decode_image, rgb_image
from wan22_triton.request.lora_names import name_problem
from wan22_triton.request.presets import DEFAULT_SAMPLER, find_preset

if TYPE_CHECKING:
    from wan22_triton.manifest import Manifest


def server_bounds(manifest: Manifest) -> dict[str, Any]:
    """What the contract's rules refer to: the limits, the checkpoint's factors, the LoRAs and presets served."""
    info = manifest.checkpoint
    return {**dataclasses.asdict(manifest.limits), "frame_step": info.vae_scale_factor_temporal,
            "spatial_multiple": info.spatial_multiple, "loras": list(manifest.loras),
            "presets": [p.name for p in manifest.presets]}


def _given(inputs: Mapping[str, np.ndarray], field: RequestField) -> Any:
    """The field's one value as its Python type, or its array; None when absent (for lora and preset, "" too)."""
    value = inputs.get(field.name)
    if value is None:
        return None
    if not field.scalar:
        return value
    if value.size != 1:
        raise RequestError(f"'{field.name}' must hold exactly one value, got shape {list(value.shape)}", field.name)
    item = value.reshape(-1)[0]
    if field.binary:
        data = item.encode("utf-8") if isinstance(item, str) else bytes(item)
        return data or None
    if field.kind is not str:
        return field.kind(item)
    try:
        text = item if isinstance(item, str) else bytes(item).decode("utf-8")
    except UnicodeDecodeError as e:
        raise RequestError(f"'{field.name}' must be valid UTF-8 text: {e}", field.name) from None
    return None if text == "" and field.default is None else text


def validate_request(inputs: Mapping[str, np.ndarray], manifest: Manifest,
                     card_bytes: int | None = None) -> GenerationRequest:
    """Apply defaults (the contract's, the checkpoint's, a preset's) and check every rule; with `card_bytes` (the
    orchestrator's GPU), that the size fits the card (wan22_triton.memory.budget)."""
    given = {f.name: _given(inputs, f) for f in FIELDS}
    bounds = server_bounds(manifest)
    if given[PROMPT] is None:
        raise RequestError(f"'{PROMPT}' is required", PROMPT)
    # A preset replaces the defaults it names and brings its LoRA; the request's own inputs still override both.
    preset = None if given[PRESET] is None else find_preset(manifest.presets, given[PRESET])
    defaults = {f.name: f.default for f in FIELDS} | manifest.checkpoint.request_defaults
    if preset is not None:
        defaults |= {**preset.settings(), LORA: preset.lora, LORA_SCALE: preset.lora_scale}
    values = {name: defaults[name] if value is None else value for name, value in given.items()}
    if given[LORA] is None and inputs.get(LORA) is not None:  # "" turns off even a preset's LoRA
        values[LORA] = None
    if values[SEED] is Default.RANDOM:
        values[SEED] = secrets.randbelow(SEED_END)
    for name in (PROMPT, NEGATIVE_PROMPT):  # the text encoder's own limit (it checks direct callers too)
        check_prompt_bytes(name, len(values[name].encode()), manifest.limits, manifest.checkpoint)
    for field in FIELDS:
        value = values[field.name]
        if field.check is not None and value is not None and not field.check(value, bounds):
            raise RequestError(f"'{field.name}' must be {field.describe(bounds)}, got {shown(value)}", field.name)
    req = GenerationRequest(**values, sampler=preset.sampler if preset else DEFAULT_SAMPLER)
    _check_size(req, manifest)
    _check_memory(req, manifest, card_bytes)
    _check_lora(req, manifest)
    return _with_image(req, manifest)  # last: decoding is the costliest check


def _check_size(req: GenerationRequest, manifest: Manifest) -> None:
    """A repository of TensorRT plans or compiled experts serves its shape spec's sizes only."""
    if manifest.video_sizes and (req.num_frames, req.height, req.width) not in manifest.video_sizes:
        sizes = ", ".join(f"{f}x{h}x{w}" for f, h, w in manifest.video_sizes)
        raise RequestError(
            f"'{NUM_FRAMES}' x '{HEIGHT}' x '{WIDTH}' {req.num_frames}x{req.height}x{req.width} is not a size this "
            f"repository was built for (TensorRT profiles or compiled experts); served: {sizes}", NUM_FRAMES
        )


def _check_memory(req: GenerationRequest, manifest: Manifest, card_bytes: int | None) -> None:
    """A size the GPU cannot hold is refused here, not as an out-of-memory error in an expert."""
    if manifest.memory is None or not card_bytes:
        return
    problem = manifest.memory.refusal(manifest.checkpoint, (req.num_frames, req.height, req.width), card_bytes)
    if problem:
        raise RequestError(f"'{NUM_FRAMES}' x '{HEIGHT}' x '{WIDTH}' {problem}: ask for fewer frames or a smaller "
                           "size", NUM_FRAMES)


def _with_image(req: GenerationRequest, manifest: Manifest) -> GenerationRequest:
    """The request with its picture (`image` decoded, or `image_rgb`) as a PIL RGB image in `image`, where the
    checkpoint takes one."""
    given = [name for name, value in ((IMAGE, req.image), (IMAGE_RGB, req.image_rgb)) if value is not None]
    if not given:
        if manifest.checkpoint.requires_image:
            raise RequestError(f"'{IMAGE}' is required by {manifest.model} ({manifest.checkpoint.family} makes video "
                               f"from a first frame): send the picture's PNG, JPEG or WebP bytes (or '{IMAGE_RGB}')", IMAGE)
        return req
    if not manifest.checkpoint.takes_image:
        raise RequestError(f"'{given[0]}' is not taken by {manifest.model}: {manifest.checkpoint.family} generates "
                           "video from text only; leave it out", given[0])
    if len(given) > 1:
        raise RequestError(f"send either '{IMAGE}' or '{IMAGE_RGB}', not both", IMAGE)
    if req.image_rgb is not None:
        return dataclasses.replace(req, image=rgb_image(req.image_rgb, manifest.limits), image_rgb=None)
    return dataclasses.replace(req, image=decode_image(req.image, manifest.limits))


def _check_lora(req: GenerationRequest, manifest: Manifest) -> None:
    """The request's adapter is one the export loaded: a name, never a path."""
    if req.lora is None:
        return
    problem = name_problem(req.lora)
    if problem is not None:
        raise RequestError(f"'{LORA}' {problem}", LORA)
    if req.lora not in manifest.loras:
        origin = f" (preset {req.preset!r}'s default; send {LORA} \"\" for none)" if req.preset else ""
        raise RequestError(f"'{LORA}' {req.lora!r}{origin} is not served here; served: {list(manifest.loras)}", LORA)
