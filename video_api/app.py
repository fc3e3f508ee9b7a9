"""The HTTP service: OpenAI's video job API (`/v1/videos`) over the job store, `/metrics`, `/health/ready`.

Every `/v1` call needs a bearer API key (stored hashed; a key sees only its own jobs). Errors are OpenAI's error
object (`error.type`, `error.message`, `error.param`, `error.code`) with the HTTP status; a key over its queued-job
quota gets 429 with `Retry-After`; bodies are bounded before they are read whole.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from wan22_triton.components.orchestrator import ORCHESTRATOR_MODELS
from wan22_triton.manifest import Limits, Manifest
from wan22_triton.operations import events

from .mapping import INPUT_REFERENCE, MODEL, ApiError, as_video, job_request
from .runner import JobMetrics, JobRunner, remove_files
from .store import ApiKey, JobStore, Status

BODY_SLACK = 1 << 20  # the form's fields and framing, beyond the largest image
LIST_LIMIT = 100
THUMBNAIL, SPRITESHEET, VIDEO = "thumbnail", "spritesheet", "video"
VARIANTS = {VIDEO: (".mp4", "video/mp4"), THUMBNAIL: (".webp", "image/webp"), SPRITESHEET: (".jpg", "image/jpeg")}
SPRITES = 4  # a spritesheet is SPRITES x SPRITES frames, evenly spaced
POLL_HELPER = "x-stainless-poll-helper"  # the openai SDK's `poll` / `create_and_poll` send it
LONG_POLL_S = 5.0
DATABASE_POLL_S = 0.25  # a job another process runs is read again this often during a long poll
UNFINISHED = (Status.QUEUED, Status.IN_PROGRESS)


@dataclass(frozen=True)
class Settings:
    triton_url: str  # gRPC host:port
    database: str
    results: Path
    workers: int = 2
    lease_s: float = 30.0
    retention_s: float = 86400.0
    max_results_bytes: int = 50 << 30
    poll_after_ms: int = 1000  # the SDK's poll interval hint
    max_body_bytes: int = Limits().max_image_bytes + BODY_SLACK  # the default largest image and the form around it


class Models:
    """The orchestrators Triton serves and their manifests, read from Triton (refreshed when a name is missing)."""

    def __init__(self, url: str) -> None:
        self.url, self._lock, self._served = url, threading.Lock(), {}

    def served(self, refresh: bool = False) -> dict[str, Manifest]:
        with self._lock:
            if refresh or not self._served:
                found = {}
                with grpcclient.InferenceServerClient(self.url) as client:
                    for name in dict.fromkeys(ORCHESTRATOR_MODELS.values()):
                        try:
                            if client.is_model_ready(name):
                                config = client.get_model_config(name, as_json=True)["config"]
                                found[name] = Manifest.from_model_config(config)
                        except Exception:  # Triton not up (yet): nothing served
                            continue
                self._served = found
            return dict(self._served)

    def pick(self, name: str | None) -> tuple[str, Manifest]:
        served = self.served() or self.served(refresh=True)
        if not served:
            raise ApiError(503, "the inference server serves no video model right now; try again shortly",
                           code="model_unavailable", kind="server_error", headers={"Retry-After": "10"})
        if name is None:
            name = next(iter(served))
        if name not in served:
            served = self.served(refresh=True)
        if name not in served:
            raise ApiError(400, f"model {name!r} is not served here; served: {', '.join(served)}", MODEL,
                           "model_not_found")
        return name, served[name]


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes is refused with 413 as it streams in."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await _send_error(send, ApiError(413, f"the request body is {int(length)} bytes; the limit is "
                                                         f"{self.limit}", code="request_too_large"))
        seen = 0

        async def bounded():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise ApiError(413, f"the request body is over the limit of {self.limit} bytes",
                               code="request_too_large")
            return message

        return await self.app(scope, bounded, send)


async def _send_error(send, error: ApiError) -> None:
    response = JSONResponse(error.body(), status_code=error.status, headers=error.headers)
    await send({"type": "http.response.start", "status": response.status_code, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})


def create_app(settings: Settings, store: JobStore | None = None, start_runner: bool = True) -> FastAPI:
    store = store or JobStore(settings.database)
    metrics = JobMetrics(store)
    runner = JobRunner(store, settings.triton_url, settings.results, metrics, workers=settings.workers,
                       lease_s=settings.lease_s, retention_s=settings.retention_s,
                       max_results_bytes=settings.max_results_bytes)
    models = Models(settings.triton_url)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        if start_runner:
            runner.start()
        yield
        runner.stop()

    app = FastAPI(title="Wan2.2 video jobs (OpenAI-compatible)", lifespan=lifespan)
    app.state.store, app.state.runner, app.state.models = store, runner, models

    @app.exception_handler(ApiError)
    async def api_error(_request, error: ApiError):
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    @app.exception_handler(HTTPException)
    async def http_error(_request, error: HTTPException):
        return JSONResponse(ApiError(error.status_code, str(error.detail)).body(), status_code=error.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request, error: RequestValidationError):
        first = error.errors()[0]
        param = str(first["loc"][-1]) if first.get("loc") else None
        return JSONResponse(ApiError(400, f"{param}: {first['msg']}", param, "invalid_value").body(), 400)

    def authorised(request: Request) -> ApiKey:
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        found = store.find_key(key.strip()) if scheme.lower() == "bearer" and key.strip() else None
        if found is None:
            raise ApiError(401, "a valid API key is required: send 'Authorization: Bearer <key>'",
                           code="invalid_api_key")
        return found

    def own_job(request: Request, video_id: str) -> dict[str, Any]:
        job = store.get(video_id, authorised(request).id)
        if job is None:
            raise _not_found(video_id)
        return job

    @app.post("/v1/videos")
    async def create(request: Request):
        key = await run_in_threadpool(authorised, request)
        form, image = await _read_create_body(request, settings.max_body_bytes)
        name, manifest = await run_in_threadpool(models.pick, form.pop(MODEL, None))
        job = await run_in_threadpool(job_request, form, image, name, manifest)
        row = await run_in_threadpool(store.create, key, model=job.model, prompt=job.prompt, seconds=job.seconds,
                                      size=job.size, inputs=job.inputs, image=job.image)
        if row is None:
            raise ApiError(429, f"this key has {key.max_queued} jobs queued or running, its limit: wait for one to "
                                "finish", code="too_many_jobs", kind="rate_limit_error",
                           headers={"Retry-After": "30"})
        runner.job_created()
        events.emit("video_job_created", job=row["id"], model=name, key=key.name)
        return as_video(row)

    @app.get("/v1/videos/{video_id}")
    async def retrieve(video_id: str, request: Request):
        """With the SDK's poll helper header, an unfinished job is held up to LONG_POLL_S until it ends, and the
        client is told to ask again at once: a job is seen done within a few milliseconds, with few requests."""
        job = await run_in_threadpool(own_job, request, video_id)
        if request.headers.get(POLL_HELPER) == "true":
            deadline = time.monotonic() + LONG_POLL_S
            while job["status"] in UNFINISHED and time.monotonic() < deadline:
                await _finished_or(runner, video_id, DATABASE_POLL_S)
                job = await run_in_threadpool(own_job, request, video_id)
            wait_ms = 0
        else:
            wait_ms = settings.poll_after_ms
        headers = {"openai-poll-after-ms": str(wait_ms)} if job["status"] in UNFINISHED else None
        return JSONResponse(as_video(job), headers=headers)

    @app.get("/v1/videos")
    def list_videos(request: Request, after: str | None = None, limit: int = 20, order: str = "desc"):
        key = authorised(request)
        if order not in ("asc", "desc"):
            raise ApiError(400, f"'order' must be 'asc' or 'desc', got {order[:20]!r}", "order", "invalid_value")
        if not 1 <= limit <= LIST_LIMIT:
            raise ApiError(400, f"'limit' must be within [1, {LIST_LIMIT}], got {limit}", "limit", "invalid_value")
        rows, more = store.list(key.id, after=after, limit=limit, ascending=order == "asc")
        data = [as_video(row) for row in rows]
        return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None, "has_more": more}

    @app.delete("/v1/videos/{video_id}")
    def delete(video_id: str, request: Request):
        row = store.delete(video_id, authorised(request).id)
        if row is None:
            raise _not_found(video_id)
        if row["status"] == Status.IN_PROGRESS:  # its runner stops it and removes it
            runner.job_deleted(video_id)
        else:
            remove_files(settings.results, video_id)
        events.emit("video_job_deleted", job=video_id, running=row["status"] == Status.IN_PROGRESS)
        return {"id": video_id, "object": "video.deleted", "deleted": True}

    @app.get("/v1/videos/{video_id}/content")
    def content(video_id: str, request: Request, variant: str = VIDEO):
        job = own_job(request, video_id)
        if variant not in VARIANTS:
            raise ApiError(400, f"'variant' must be one of {list(VARIANTS)}, got {variant[:20]!r}", "variant",
                           "invalid_value")
        if job["status"] != Status.COMPLETED:
            raise ApiError(409, f"video {video_id} is {job['status']}: its content exists once it is completed",
                           "video_id", "video_not_ready")
        if not job["result_path"] or not Path(job["result_path"]).is_file():
            raise ApiError(404, f"video {video_id}'s content has expired (kept {settings.retention_s:g} s)",
                           "video_id", "video_expired")
        suffix, media = VARIANTS[variant]
        path = Path(job["result_path"]).with_suffix(suffix)
        if not path.is_file():
            _render_variant(Path(job["result_path"]), path, variant)
        return Response(path.read_bytes(), media_type=media)

    @app.get("/metrics")
    def prometheus():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/health/ready")
    def ready():
        store.counts()  # the database answers
        return {"status": "ready"}

    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    return app


def _not_found(video_id: str) -> ApiError:
    """Another key's job is as absent as one that never was."""
    return ApiError(404, f"no video {video_id!r} for this key", "video_id", "video_not_found")


async def _finished_or(runner: JobRunner, job_id: str, timeout_s: float) -> None:
    """Returns once this process's runner ended the job, or after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not runner.ended(job_id) and time.monotonic() < deadline:
        await asyncio.sleep(0.005)


async def _read_create_body(request: Request, limit: int) -> tuple[dict[str, str], bytes | None]:
    """The create call's fields as text and its image bytes, from a multipart form (the SDK's) or a JSON body."""
    kind = request.headers.get("content-type", "")
    if kind.startswith("multipart/form-data") or kind.startswith("application/x-www-form-urlencoded"):
        form = await request.form(max_files=1, max_fields=64, max_part_size=limit)
        fields, image = {}, None
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                if name != INPUT_REFERENCE:
                    raise ApiError(400, f"only '{INPUT_REFERENCE}' may be a file, got {name!r}", name,
                                   "invalid_value")
                image = await value.read()
            else:
                fields[name] = value
        return fields, image
    try:
        body = await request.json()
    except ValueError:
        raise ApiError(400, "the body must be a multipart form or a JSON object", code="invalid_body") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object", code="invalid_body")
    reference = body.pop(INPUT_REFERENCE, None)
    fields = {k: v if isinstance(v, str) else json.dumps(v) for k, v in body.items()}
    return fields, None if reference is None else _data_url(reference)


def _data_url(reference: Any) -> bytes:
    """An `input_reference` object's `image_url` as a base64 data URL (the service fetches nothing)."""
    url = reference.get("image_url") if isinstance(reference, dict) else None
    if not isinstance(url, str) or not url.startswith("data:") or ";base64," not in url:
        raise ApiError(400, "'input_reference' must be an uploaded file or {\"image_url\": \"data:image/...;base64,"
                            "...\"}; URLs and file ids are not fetched", INPUT_REFERENCE, "invalid_value")
    try:
        return base64.b64decode(url.split(";base64,", 1)[1], validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "'input_reference' holds invalid base64", INPUT_REFERENCE, "invalid_value") from None


def _render_variant(mp4: Path, out: Path, variant: str) -> None:
    """The first frame (thumbnail) or a grid of frames (spritesheet) of the stored MP4."""
    from PIL import Image

    from wan22_triton.request.video import read_mp4

    frames, _ = read_mp4(mp4)
    if variant == THUMBNAIL:
        picture = Image.fromarray(frames[0])
    else:
        picks = frames[np.linspace(0, len(frames) - 1, SPRITES * SPRITES).round().astype(int)]
        rows = [np.concatenate(list(picks[r * SPRITES:(r + 1) * SPRITES]), axis=1) for r in range(SPRITES)]
        picture = Image.fromarray(np.concatenate(rows, axis=0))
    buffer = io.BytesIO()
    picture.save(buffer, "WEBP" if variant == THUMBNAIL else "JPEG")
    partial = out.with_suffix(out.suffix + ".partial")
    partial.write_bytes(buffer.getvalue())
    partial.replace(out)
