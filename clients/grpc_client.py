"""Generate a video over gRPC: python -m clients.grpc_client --prompt "..." [--stream] --output out.mp4

With --stream the request goes to the decoupled `wan22_t2v_stream`, which answers once per denoising step; a
progress bar with ETA follows them. Ctrl-C or --timeout cancels the request on the server. With
--shared-memory (client on the server's host; unary requests) the frames come back through a system shared-memory
region instead of the gRPC message (a 480p 81-frame video is 97 MB); registering the region is an admin call, so it
needs the server's admin key (--admin-key or $WAN22_ADMIN_KEY).
"""

from __future__ import annotations

import json
import os
import queue
import time
import uuid
import warnings
from typing import Any, Callable

import numpy as np
import tritonclient.grpc as grpcclient

from .admin import admin_headers
from wan22_triton.components.orchestrator import ORCHESTRATOR_STREAM, PROGRESS, VIDEO, stream_model
from wan22_triton.request.contract import HEIGHT, NUM_FRAMES, OUTPUT_FORMAT, WIDTH, OutputFormat

from .common import (MODEL, model_fps, one_line_errors, output_names, parse_args, request_arrays, request_values, save,
                     served_checkpoint, unpack, unpack_metadata)

STREAM_MODEL = ORCHESTRATOR_STREAM


def infer_inputs(values: dict[str, Any]) -> list[grpcclient.InferInput]:
    """The request's input tensors (common.REQUEST_INPUTS' types), for any `client.infer` of wan22_t2v."""
    inputs = []
    for name, (dtype, array) in request_arrays(values).items():
        tensor = grpcclient.InferInput(name, list(array.shape), dtype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def generate(
    url: str, values: dict[str, Any], model: str = MODEL, timeout: float | None = None,
    shared_memory: "bool | VideoSharedMemory" = False, admin_key: str | None = None,
) -> dict[str, Any]:
    """One request to `wan22_t2v`; returns the video (frames or MP4 bytes), seed and the server's stage seconds.

    shared_memory (client and server on one host): the raw frames come back through a system shared-memory
    region instead of the gRPC message: True makes one for this request (registering it needs `admin_key`); a
    `VideoSharedMemory` is reused. `admin_key` is sent with every call."""
    headers = admin_headers(admin_key, "grpc")
    with grpcclient.InferenceServerClient(url) as client:
        if shared_memory is not False and values.get(OUTPUT_FORMAT) != OutputFormat.MP4:
            if isinstance(shared_memory, VideoSharedMemory):
                return shared_memory.generate(client, values, model, timeout)
            with VideoSharedMemory(url, video_bytes(client, values, model, headers), admin_key) as region:
                return region.generate(client, values, model, timeout)
        outputs = [grpcclient.InferRequestedOutput(n) for n in output_names(values)]
        return unpack(client.infer(model, infer_inputs(values), outputs=outputs, client_timeout=timeout, headers=headers))


def video_bytes(client: grpcclient.InferenceServerClient, values: dict[str, Any], model: str,
                headers: dict[str, str] | None = None) -> int:
    """Size of the uint8 frames a request will return: its own frames/height/width, else the checkpoint's."""
    config = client.get_model_config(model, as_json=True, headers=headers)["config"]
    defaults = served_checkpoint(config).request_defaults
    size = 3
    for name in (NUM_FRAMES, HEIGHT, WIDTH):
        size *= int(values[name]) if values.get(name) is not None else int(defaults[name])
    return size


def _shared_memory_utils():
    """tritonclient's system shared-memory helpers, without the setuptools deprecation warning that their import of
    pkg_resources prints every time."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated as an API", category=UserWarning)
        import tritonclient.utils.shared_memory as shm
    return shm


class VideoSharedMemory:
    """A system shared-memory region registered with the server for the frames of requests up to `size` bytes.

    Keep one for many requests: a fresh region costs its creation, registration and the page faults of its first
    write on every request (~0.1 s for 97 MB). Unregistered and destroyed on exit. Registering and unregistering
    are admin calls: they carry `admin_key` (the server refuses them without it)."""

    def __init__(self, url: str, size: int, admin_key: str | None = None):
        self._shm, self.url, self.size = _shared_memory_utils(), url, int(size)
        self.headers = admin_headers(admin_key, "grpc")
        self.name = f"wan22_video_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        self._region = None

    def __enter__(self) -> "VideoSharedMemory":
        self._region = self._shm.create_shared_memory_region(self.name, "/" + self.name, self.size)
        try:
            with grpcclient.InferenceServerClient(self.url) as client:
                client.register_system_shared_memory(self.name, "/" + self.name, self.size, headers=self.headers)
        except BaseException:
            self._shm.destroy_shared_memory_region(self._region)
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            with grpcclient.InferenceServerClient(self.url) as client:
                self._unregister(client)
        finally:
            self._shm.destroy_shared_memory_region(self._region)

    def _unregister(self, client, timeout_s: float = 10.0) -> None:
        """The server lets go of a response's output buffer only after sending it: right after a request the
        region may still be "in use" for a moment, so that refusal is retried until it passes."""
        from tritonclient.utils import InferenceServerException

        deadline = time.monotonic() + timeout_s
        while True:
            try:
                client.unregister_system_shared_memory(self.name, headers=self.headers)
                return
            except InferenceServerException as e:
                if "currently in use" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def generate(self, client, values: dict[str, Any], model: str, timeout: float | None) -> dict[str, Any]:
        size = video_bytes(client, values, model, self.headers)
        if size > self.size:
            raise ValueError(f"the video needs {size} bytes, the shared-memory region has {self.size}")
        outputs = [grpcclient.InferRequestedOutput(n) for n in output_names(values)]
        for output in outputs:
            if output.name() == VIDEO:
                output.set_shared_memory(self.name, size)
        result = client.infer(model, infer_inputs(values), outputs=outputs, client_timeout=timeout,
                              headers=self.headers)
        shape = list(result.get_output(VIDEO).shape)
        return {**unpack_metadata(result), VIDEO: self._shm.get_contents_as_numpy(self._region, np.uint8, shape).copy()}


def generate_stream(
    url: str,
    values: dict[str, Any],
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    model: str = STREAM_MODEL,
    timeout: float | None = None,
    cancel_after_steps: int | None = None,
    admin_key: str | None = None,
) -> dict[str, Any]:
    """One request to the decoupled model: `on_progress` gets each step's progress, then the result returns.

    On timeout (or after `cancel_after_steps` progress messages) the stream is stopped with its requests
    cancelled and TimeoutError / the server's CANCELLED error is raised. `admin_key` is sent with the stream.
    """
    responses: queue.Queue = queue.Queue()
    with grpcclient.InferenceServerClient(url) as client:
        client.start_stream(callback=lambda result, error: responses.put((result, error)),
                            headers=admin_headers(admin_key, "grpc"))
        try:
            client.async_stream_infer(model, infer_inputs(values))
            deadline = time.monotonic() + timeout if timeout else None
            steps = 0
            while True:
                wait = None if deadline is None else max(deadline - time.monotonic(), 0)
                try:
                    result, error = responses.get(timeout=wait)
                except queue.Empty:
                    raise TimeoutError(f"no result within {timeout} s; request cancelled") from None
                if error is not None:
                    raise error
                progress = result.as_numpy(PROGRESS)
                if progress is None:
                    return unpack(result)
                steps += 1
                if on_progress is not None:
                    on_progress(json.loads(progress[0]))
                if cancel_after_steps is not None and steps >= cancel_after_steps:
                    client.stop_stream(cancel_requests=True)
                    # progress sent before the cancellation reached the server may still be queued ahead of it
                    result, error = responses.get(timeout=60)
                    while error is None and result is not None and result.as_numpy(PROGRESS) is not None:
                        result, error = responses.get(timeout=60)
                    raise error or RuntimeError("stream ended without the CANCELLED error")
        finally:
            client.stop_stream(cancel_requests=True)


def fps_of(url: str, model: str = MODEL, admin_key: str | None = None) -> float:
    with grpcclient.InferenceServerClient(url) as client:
        config = client.get_model_config(model, as_json=True, headers=admin_headers(admin_key, "grpc"))
        return model_fps(config["config"])


def main() -> None:
    args = parse_args("localhost:8001", __doc__, streaming=True)
    with one_line_errors(args.url, "gRPC", args.timeout):
        fps = args.fps or fps_of(args.url, args.model, args.admin_key)
        values = request_values(args)
        started = time.perf_counter()
        if not args.stream:
            out = generate(args.url, values, args.model, args.timeout, shared_memory=args.shared_memory,
                           admin_key=args.admin_key)
        else:
            from tqdm import tqdm

            with tqdm(unit="step", desc="denoising") as bar:

                def on_progress(p: dict[str, Any]) -> None:
                    bar.total = p["total"]
                    bar.set_postfix(expert=p["expert"].replace("transformer_", ""), t=int(p["timestep"]))
                    bar.update(p["step"] - bar.n)

                out = generate_stream(args.url, values, on_progress, stream_model(args.model), args.timeout,
                                      admin_key=args.admin_key)
        save(out, args.output, fps, time.perf_counter() - started)


if __name__ == "__main__":
    main()
