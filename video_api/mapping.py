"""OpenAI's video job fields to the served model's request contract, and a job row to OpenAI's `Video` object.

`seconds` and `size` become frames and pixels from the served checkpoint's facts (its fps, the VAE's temporal step,
the limits in its manifest); the Wan-specific fields come as extra body fields named as the contract's inputs
(`negative_prompt`, `seed`, `num_inference_steps`, `guidance_scale`, ...). Everything is checked by the contract's
own validation (wan22_triton.request.validation) before a job exists: a bad field is a 400 naming it, never a job
that fails later.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping

from clients.common import request_arrays
from wan22_triton.errors import RequestError
from wan22_triton.manifest import Manifest
from wan22_triton.request.contract import (BY_NAME, HEIGHT, IMAGE, IMAGE_RGB, NUM_FRAMES, OUTPUT_FORMAT, PROMPT, WIDTH,
                                           OutputFormat)
from wan22_triton.request.validation import validate_request

SECONDS, SIZE, MODEL, INPUT_REFERENCE = "seconds", "size", "model", "input_reference"
# Contract inputs the API sets itself: the prompt and image from OpenAI's fields, the MP4 it stores
OWN_INPUTS = frozenset({PROMPT, IMAGE, IMAGE_RGB, OUTPUT_FORMAT})
EXTRA_FIELDS = tuple(name for name in BY_NAME if name not in OWN_INPUTS)
# Where a contract input came from an OpenAI field, its errors name that field
OPENAI_PARAM = {NUM_FRAMES: SECONDS, HEIGHT: SIZE, WIDTH: SIZE, IMAGE: INPUT_REFERENCE, PROMPT: PROMPT}
SIZE_FORMAT = re.compile(r"^(\d{1,5})x(\d{1,5})$")


class ApiError(Exception):
    """An OpenAI-style error: HTTP status, type, message, the parameter it is about and a code."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class JobRequest:
    """What a job runs: the contract's inputs (JSON-able, the image aside) and what the job shows."""

    model: str
    prompt: str
    seconds: str
    size: str
    inputs: dict[str, Any]
    image: bytes | None


def frames_for(seconds: float, manifest: Manifest) -> int:
    """The frame count of a clip that long at the checkpoint's fps: the nearest of the VAE's form step*k + 1."""
    info = manifest.checkpoint
    step = info.vae_scale_factor_temporal
    return max(round(seconds * info.generation.fps / step), 0) * step + 1


def seconds_of(frames: int, manifest: Manifest) -> str:
    return f"{(frames - 1) / manifest.checkpoint.generation.fps:g}"


def _number(name: str, text: str, kind: type) -> Any:
    try:
        return kind(text)
    except ValueError:
        raise ApiError(400, f"'{name}' must be {'an integer' if kind is int else 'a number'}, got {text[:80]!r}",
                       name, "invalid_value") from None


def job_request(form: Mapping[str, str], image: bytes | None, model: str, manifest: Manifest) -> JobRequest:
    """The job of a create call's fields (strings, as a multipart form or JSON body gives them), checked against the
    served model's contract; ApiError names the field otherwise."""
    unknown = sorted(set(form) - {PROMPT, SECONDS, SIZE, MODEL, INPUT_REFERENCE, *EXTRA_FIELDS})
    if unknown:
        raise ApiError(400, f"unknown parameter {unknown[0]!r}; Wan fields: {', '.join(EXTRA_FIELDS)}", unknown[0],
                       "unknown_parameter")
    prompt = form.get(PROMPT)
    if not prompt:
        raise ApiError(400, "'prompt' is required", PROMPT, "missing_required_parameter")
    values: dict[str, Any] = {PROMPT: prompt, OUTPUT_FORMAT: str(OutputFormat.MP4)}
    for name in EXTRA_FIELDS:
        if name in form:
            field = BY_NAME[name]
            values[name] = form[name] if field.kind is str else _number(name, form[name], field.kind)
    if SECONDS in form:
        seconds = _number(SECONDS, form[SECONDS], float)
        if not seconds > 0:
            raise ApiError(400, f"'seconds' must be > 0, got {form[SECONDS]!r}", SECONDS, "invalid_value")
        values[NUM_FRAMES] = frames_for(seconds, manifest)
    if SIZE in form:
        match = SIZE_FORMAT.match(form[SIZE])
        if match is None:
            raise ApiError(400, f"'size' must be WIDTHxHEIGHT in pixels (e.g. 832x480), got {form[SIZE][:80]!r}",
                           SIZE, "invalid_value")
        values[WIDTH], values[HEIGHT] = int(match[1]), int(match[2])
    if image is not None:
        values[IMAGE] = image
    try:
        req = validate_request({name: array for name, (_, array) in request_arrays(values).items()}, manifest)
    except RequestError as e:
        param = e.param if e.param in form else OPENAI_PARAM.get(e.param, e.param)
        raise ApiError(400, str(e), param, "invalid_value") from None
    inputs = {k: v for k, v in values.items() if k != IMAGE}
    inputs.update({NUM_FRAMES: req.num_frames, HEIGHT: req.height, WIDTH: req.width})
    return JobRequest(model, prompt, seconds_of(req.num_frames, manifest), f"{req.width}x{req.height}", inputs,
                      image)


def as_video(job: Mapping[str, Any]) -> dict[str, Any]:
    """OpenAI's `Video` object of a job row."""
    error = None
    if job["error_code"]:
        error = {"code": job["error_code"], "message": job["error_message"]}
    return {
        "id": job["id"], "object": "video", "model": job["model"], "status": job["status"],
        "progress": job["progress"], "created_at": int(job["created_at"]),
        "completed_at": None if job["completed_at"] is None else int(job["completed_at"]),
        "expires_at": None if job["expires_at"] is None else int(job["expires_at"]),
        "error": error, "prompt": job["prompt"], "seconds": job["seconds"], "size": job["size"],
        "remixed_from_video_id": None,
    }


def inputs_for_triton(job: Mapping[str, Any], inputs: dict[str, Any]) -> dict[str, Any]:
    """The stored inputs with the job's image back in."""
    return {**inputs, IMAGE: job["image"]} if job["image"] is not None else dict(inputs)

