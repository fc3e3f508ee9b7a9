"""Compile artifacts of the torch engine's experts (`--compile regional --compile-artifacts`): see
docs/compile_artifacts.md.

The export compiles each expert for every compile point of its manifest (video size x batch, from the shape spec;
export/compile_artifacts.py) and saves torch's portable compile cache into the expert's version folder:

    compile_cache/artifacts.bin    torch.compiler.save_cache_artifacts(): Inductor's and AOTAutograd's cache entries
                                   (on a GPU with the Triton kernels' binaries; on the CPU the C++ kernels are
                                   rebuilt from the cached source)
    compile_cache/artifacts.json   the `environment` they were made in, the points compiled, what was saved

The served expert loads them (`CompileCache.prepare`, before its first compile) only when the record's environment
equals its own on every `MATCHED` field. Torch's own keys (its build, the GPU's name, CUDA and Triton versions) would
make foreign entries miss anyway; checking first says why in one log line and a `compile_cache_mismatch` event
instead of a silently slow start. The expert then compiles just in time (the server's warm-up still runs every point
before READY): slower to start, the same results.

Either way an expert with compile points compiles one static graph per point, exactly as the export did, so the
loaded keys are the ones asked for, and each size runs kernels made for its shapes; a shape outside them compiles
once more, seen as an `expert_compiled` event (`reported_compiles`).
"""

from __future__ import annotations

import dataclasses
import json
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from wan22_triton.operations import events
from wan22_triton.components.common import CompilePoint
from wan22_triton.manifest import Manifest
from wan22_triton.options import Compile, Precision, SpeedOptions

FOLDER = "compile_cache"  # in the expert's version folder
ARTIFACTS = "artifacts.bin"
RECORD = "artifacts.json"
# Fields of `environment` that must be equal for the artifacts to be loaded.
MATCHED = ("torch", "cuda", "triton", "device", "capability", "precision", "speed")
# Dynamo keeps this many graphs per code object past the compile points (torch's default limit): room for shapes
# outside the spec (direct expert calls); past it, under fullgraph=True, torch fails the call.
OFF_SPEC_GRAPHS = 8


def environment(device: str | torch.device, precision: Precision, speed: SpeedOptions) -> dict[str, Any]:
    """What compiled kernels depend on, for this process on `device` (JSON values)."""
    device = torch.device(device)
    gpu = device.type == "cuda"
    try:
        import triton  # the kernel compiler Inductor uses on GPUs

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "torch": torch.__version__,
        "cuda": torch.version.cuda if gpu else "cpu",
        "triton": triton_version,
        "device": torch.cuda.get_device_name(device) if gpu else "cpu",
        "capability": list(torch.cuda.get_device_capability(device)) if gpu else "cpu",
        "precision": precision,
        "speed": dataclasses.asdict(speed),
    }


@dataclass(frozen=True)
class CompileCache:
    """One expert's compile artifacts: `prepare` before compiling (serving and export), `save` after (export)."""

    model: str
    folder: Path  # <version>/compile_cache
    points: tuple[CompilePoint, ...]
    environment: dict[str, Any]
    load: bool = True  # False at export, where the folder is being made

    @classmethod
    def of_expert(cls, manifest: Manifest, version: Path, device: str | torch.device,
                  load: bool = True) -> CompileCache | None:
        """The expert's cache when its manifest has compile points (compile on), else None: torch's defaults."""
        if manifest.speed.compile == Compile.NONE or not manifest.compile_points:
            return None
        return cls(manifest.model, Path(version) / FOLDER, manifest.compile_points,
                   environment(device, manifest.precision, manifest.speed), load)

    def prepare(self, log: Callable[[str], None]) -> dict[str, Any]:
        """Before the first compile: room for one graph per point, the artifacts loaded when they were made on a
        machine like this one; returns torch.compile's options (static shapes, as at export)."""
        config = torch._dynamo.config
        config.recompile_limit = max(config.recompile_limit, len(self.points) + OFF_SPEC_GRAPHS)
        if self.load:
            self._load(log)
        return {"dynamic": False}

    def _load(self, log: Callable[[str], None]) -> None:
        artifacts, record_file = self.folder / ARTIFACTS, self.folder / RECORD
        try:
            record = json.loads(record_file.read_text())
            made = record["environment"]
        except (OSError, ValueError, KeyError) as exc:
            return self._not_used(log, {}, f"no readable {RECORD} ({type(exc).__name__}: {exc})")
        differs = {k: [made.get(k), self.environment[k]] for k in MATCHED if made.get(k) != self.environment[k]}
        if differs:
            text = "; ".join(f"{k} {a} at export, {b} here" for k, (a, b) in differs.items())
            return self._not_used(log, differs, f"made elsewhere: {text}")
        started = time.perf_counter()
        try:
            data = artifacts.read_bytes()
            info = torch.compiler.load_cache_artifacts(data)
        except OSError as exc:
            return self._not_used(log, {}, f"{artifacts} unreadable: {exc}")
        if info is None:
            return self._not_used(log, {}, f"torch could not read {artifacts}")
        seconds = time.perf_counter() - started
        counts = {kind: len(keys) for kind, keys in info.artifacts.items()}
        events.emit("compile_cache_loaded", model=self.model, bytes=len(data), seconds=seconds, artifacts=counts,
                    points=[p.label for p in self.points])
        log(f"{self.model}: compile artifacts loaded ({len(data) / 2**20:.1f} MiB, {counts}) in {seconds:.2f}s")

    def _not_used(self, log: Callable[[str], None], differs: dict[str, list[Any]], reason: str) -> None:
        events.emit("compile_cache_mismatch", model=self.model, differs=differs, reason=reason)
        log(f"{self.model}: compile artifacts in {self.folder} not used ({reason}); compiling just in time, "
            "during the warm-up")

    def save(self, log: Callable[[str], None]) -> Path:
        """torch's artifacts recorded since `recording()` began, and their record, into the folder."""
        saved = torch.compiler.save_cache_artifacts()
        if saved is None:
            raise RuntimeError(f"{self.model}: torch recorded no compile artifacts (are Inductor's caches off?)")
        data, info = saved
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / ARTIFACTS).write_bytes(data)
        record = {
            "environment": self.environment,
            "points": [dataclasses.asdict(p) for p in self.points],
            "artifacts": {kind: len(keys) for kind, keys in info.artifacts.items()},
        }
        (self.folder / RECORD).write_text(json.dumps(record, indent=2) + "\n")
        log(f"  {self.model}: compile artifacts {len(data) / 2**20:.1f} MiB -> {self.folder}")
        return self.folder


@contextmanager
def recording() -> Iterator[None]:
    """A clean slate for one model's artifacts: dynamo's compiled code forgotten (a second expert of the same
    architecture would reuse the first one's graphs and record nothing) and torch's artifact list fresh."""
    from torch.compiler._cache import CacheArtifactManager

    torch.compiler.reset()
    with CacheArtifactManager.with_fresh_cache():
        yield


def _counts() -> dict[str, int]:
    from torch._dynamo.utils import counters

    inductor = counters["inductor"]  # bypass: a graph Inductor cannot cache (so no artifact can serve it)
    return {"graphs": counters["stats"]["unique_graphs"], "cache_hits": inductor["fxgraph_cache_hit"],
            "cache_misses": inductor["fxgraph_cache_miss"], "cache_bypasses": inductor["fxgraph_cache_bypass"]}


@contextmanager
def reported_compiles(model: str, shape: Any, log: Callable[[str], None]) -> Iterator[None]:
    """A call that compiled says so: one log line and an `expert_compiled` event (graphs made, Inductor cache hits,
    misses and bypasses, seconds), so a compile after the warm-up (a shape outside the compile points) is seen."""
    before, started = _counts(), time.perf_counter()
    yield
    new = {k: v - before[k] for k, v in _counts().items()}
    if new["graphs"]:
        seconds = time.perf_counter() - started
        events.emit("expert_compiled", model=model, shape=list(shape), seconds=seconds, **new)
        log(f"{model}: compiled {new['graphs']} graph(s) for hidden_states {list(shape)} in {seconds:.1f}s "
            f"(Inductor cache: {new['cache_hits']} hits, {new['cache_misses']} misses, {new['cache_bypasses']} "
            "bypasses)")
