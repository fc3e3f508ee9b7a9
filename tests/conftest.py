"""Shared fixtures: the tiny checkpoint, real tritonservers on its exports and diffusers references.

Servers: `served(options)` in a test module is a tritonserver on the tiny checkpoint exported with `options` (or on
a repository it is given), shared by every module that asks for the same while it runs (ServerPool); `torch_server`
runs for the whole session (under pytest-xdist, once per worker). A test that kills, stops or watches the start of
its server builds one of its own with `Server(repository)`.

Markers (pyproject.toml): tests that use the shared servers get `server` here; tests that start theirs mark
themselves.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import pytest

from export.onnx_cache import ONNX_CACHE_ENV
from export.options import ExportOptions
from export.repository import export_repository
from perf.gpu_benchmark.quality import psnr  # noqa: F401 (the tests import it from here)
from server.triton_server import TritonServer
from wan22_triton.manifest import Limits
from wan22_triton.operations import events

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Inductor compiles in the process itself (the exports, the servers' experts): its worker pool costs more than it
# saves on two cores, as for perf/first_request_benchmark's CPU runs
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
# One OpenMP thread per process (the workers, their servers' stubs, the diffusers references): two workers keep both
# cores busy, and a second thread per process spins at every barrier for nothing on the tiny models
os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
TEST_LIMITS = Limits(max_num_frames=33, max_size=256, max_inference_steps=50)
# A queue as long as the most requests a test sends at once (test_streaming): Triton queues requests that arrive
# together before its instances take any, so a shorter one refuses some of them
TORCH = ExportOptions(engine="torch", limits=TEST_LIMITS, orchestrator_instances=2, max_queue_size=4)
# Every model's stub imports torch: a slow start where two workers share two cores
STARTUP_TIMEOUT_S = 300
SESSION = "session"


class Server(TritonServer):
    """TritonServer as the tests run it: its log and its models' events (wan22_triton.operations.events) beside the
    repository (`log_file`, `events_file`), a startup timeout for a busy machine, `ready_at` (time.time() once READY);
    other arguments as TritonServer's."""

    def __init__(self, repository: Path | str, *, env: Mapping[str, str] | None = None, **kwargs) -> None:
        repository = Path(repository)
        self.events_file = repository.with_name(f"{repository.name}-events.jsonl")
        self.ready_at: float | None = None
        kwargs = {"log_file": repository.with_name(f"{repository.name}-tritonserver.log"),
                  "startup_timeout": STARTUP_TIMEOUT_S, **kwargs}
        super().__init__(repository, env={events.EVENTS_FILE_ENV: str(self.events_file), **(env or {})}, **kwargs)

    def start(self) -> "Server":
        super().start()
        self.ready_at = time.time()
        return self


def _frozen(value):
    """`value` as a dictionary key: mappings and sequences as tuples."""
    if isinstance(value, Mapping):
        return tuple(sorted((k, _frozen(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    return value


class ServerPool:
    """The running servers by what they serve and who holds them (a test module's node id, or SESSION). One that no
    one holds any more is kept for a later module that asks for the same until another server starts, which stops
    it first (memory is for the servers in use)."""

    def __init__(self, checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
        self._checkpoint, self._tmp = checkpoint, tmp_path_factory
        self._servers: dict[tuple, Server] = {}
        self._holders: dict[tuple, set[str]] = {}

    def get(self, holder: str, options: ExportOptions | None = None, *,
            repository: Path | Callable[[Path], Path] | None = None, **server_kwargs) -> Server:
        """A running server on an export with `options`, or on `repository` (a folder served as it is, or a function
        that writes one into the folder it is given); `server_kwargs` as Server's."""
        if (options is None) == (repository is None):
            raise ValueError("served: give export options or a repository")
        key = (options, repository, _frozen(server_kwargs))
        if key not in self._servers:
            self._stop([k for k, holders in self._holders.items() if not holders])
            folder = self._tmp.mktemp("served") / "repo"
            if options is not None:
                export_repository(self._checkpoint, folder, options, log=lambda _: None)
            elif callable(repository):
                repository(folder)
            else:
                folder = Path(repository)
            self._servers[key] = Server(folder, **server_kwargs).start()
            self._holders[key] = set()
        self._holders[key].add(holder)
        return self._servers[key]

    def release(self, holder: str) -> None:
        for holders in self._holders.values():
            holders.discard(holder)

    def close(self) -> None:
        self._stop(list(self._servers))

    def _stop(self, keys: list[tuple]) -> None:
        """Stop these servers, together."""
        stopping = [self._servers.pop(key) for key in keys]
        for key in keys:
            del self._holders[key]
        with ThreadPoolExecutor(max(len(stopping), 1)) as pool:
            list(pool.map(Server.stop, stopping))


@pytest.fixture(scope="session", autouse=True)
def onnx_cache(tmp_path_factory) -> Path:
    """One ONNX cache for the whole run (every pytest-xdist worker's): a graph is traced once, whichever test or
    server export asks first."""
    root = tmp_path_factory.getbasetemp()
    folder = (root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root) / "onnx-cache"
    os.environ[ONNX_CACHE_ENV] = str(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """The embedded tiny checkpoint, generated fresh for the session."""
    from devtools.tiny_checkpoint import write_checkpoint

    out = tmp_path_factory.mktemp("ckpt") / "tiny-wan2.2-t2v-a14b"
    write_checkpoint(out)
    return out


@pytest.fixture(scope="session")
def server_pool(tmp_path_factory, tiny_checkpoint):
    pool = ServerPool(tiny_checkpoint, tmp_path_factory)
    yield pool
    pool.close()


@pytest.fixture(scope="module")
def served(server_pool, request) -> Callable[..., Server]:
    """`served(options=None, *, repository=None, **server_kwargs)` -> a running Server (ServerPool.get), held by
    this module."""
    yield partial(server_pool.get, request.node.nodeid)
    server_pool.release(request.node.nodeid)


@pytest.fixture(scope="session")
def torch_server(server_pool) -> Server:
    return server_pool.get(SESSION, TORCH)


@pytest.fixture(scope="module")
def onnx_server(served) -> Server:
    return served(replace(TORCH, engine="onnx"))


@pytest.hookimpl(tryfirst=True)  # before -m selects and pytest-xdist schedules
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the users of the shared servers `server`; run the longest modules first (the GPU flows, then the modules
    that start servers), so that pytest-xdist's workers, which take a module at a time, end together."""
    rank: dict[str, int] = {}
    for item in items:
        if "server_pool" in item.fixturenames:
            item.add_marker(pytest.mark.server)
        module = item.nodeid.split("::")[0]
        mine = 0 if item.get_closest_marker("gpu_flow") else 1 if item.get_closest_marker("server") else 2
        rank[module] = min(rank.get(module, mine), mine)
    items.sort(key=lambda item: rank[item.nodeid.split("::")[0]])


@pytest.fixture(scope="session")
def diffusers_pipe(tiny_checkpoint):
    from diffusers import WanPipeline

    pipe = WanPipeline.from_pretrained(tiny_checkpoint)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_diffusers(pipe, request: dict) -> np.ndarray:
    """diffusers' output for a request, as uint8 [F, H, W, 3] (round(x * 255) of output_type='np')."""
    import torch

    kwargs = {k: v for k, v in request.items() if k not in ("seed", "flow_shift")}
    frames = pipe(**kwargs, generator=torch.Generator("cpu").manual_seed(request["seed"]), output_type="np").frames[0]
    return np.round(frames * 255).astype(np.uint8)
