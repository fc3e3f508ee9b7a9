"""What every component declaration is made of: dimensions, tensors, the model's contract, the sizes an engine
serves, and the export's unit (`Component`).

Dimensions are either fixed ints taken from the checkpoint or symbols ("latent_frames") resolved per request; a
symbol may carry a factor for tensors that scale with it (the VAE's per-layer feature caches). numpy only: the
clients import the declarations too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Mapping

import numpy as np

if TYPE_CHECKING:  # annotations only: the clients import this module without torch
    from wan22_triton.checkpoint import CheckpointInfo
    from wan22_triton.manifest import Manifest

# Triton's names for the numpy dtypes we use (model_config.proto DataType without the TYPE_ prefix).
TRITON_DTYPES = {"float32": "FP32", "float16": "FP16", "int32": "INT32", "int64": "INT64", "uint8": "UINT8",
                 "bool": "BOOL", "object": "STRING"}
# The config parameter every served model reads its manifest from (wan22_triton.manifest).
MANIFEST_PARAMETER = "manifest"


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
    sample_range: tuple[int, int] | None = None  # sample inputs: whole numbers in this range (else standard normal)

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
        return {"batch": self.batch, "latent_frames": frames, "latent_height": height, "latent_width": width,
                TOKENS.symbol: info.tokens(frames, height, width)}

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

        tokens = [info.tokens(*s[1:]) for s in shapes]
        return {
            "batch": (1, self.max_batch, self.max_batch),
            "latent_frames": rng(1),
            "latent_height": rng(2),
            "latent_width": rng(3),
            TOKENS.symbol: (min(tokens), info.tokens(*first[1:]), max(tokens)),
            "video_frames": (min(self.num_frames), self.num_frames[0], max(self.num_frames)),
        }


@dataclass(frozen=True)
class QueuePolicy:
    """How long and how many requests may wait for a model's instances (Triton's queue policy); 0: no bound.
    Past them Triton refuses a request: UNAVAILABLE (HTTP 503)."""

    max_seconds: float = 0
    max_size: int = 0


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
        """Random inputs of the declared dtypes and shapes (a tensor's `sample_range`, e.g. timesteps, if any)."""
        rng = np.random.default_rng(seed)
        sizes = {**self.sample_sizes, **(sizes or {})}
        out = {}
        for t in self.inputs:
            shape = t.resolve(sizes)
            if t.sample_range is not None:
                out[t.name] = rng.uniform(*t.sample_range, size=shape).round().astype(t.dtype)
            else:
                out[t.name] = rng.standard_normal(shape).astype(t.dtype)
        return out

    def profile(self, ranges: Mapping[str, tuple[int, int, int]]) -> dict[str, tuple[tuple[int, ...], ...]]:
        """TensorRT optimization profile: input name -> (min, opt, max) shapes."""
        return {
            t.name: tuple(t.resolve({k: v[i] for k, v in ranges.items()}) for i in range(3))  # type: ignore[misc]
            for t in self.inputs
        }


def with_inputs(spec: ComponentSpec, *extra: TensorSpec) -> ComponentSpec:
    """`spec` with more (optional) inputs in its config.pbtxt; the ONNX/TensorRT contract stays `spec`'s."""
    return ComponentSpec(spec.name, (*spec.inputs, *extra), spec.outputs, spec.max_batch_size, spec.sample_sizes)


BATCH = Dim("batch")
LATENT = (Dim("latent_frames"), Dim("latent_height"), Dim("latent_width"))
TOKENS = Dim("tokens")  # the transformer's sequence length at a latent size (CheckpointInfo.tokens)
SCALAR = (1,)  # a non-batched model's one-value input


@dataclass(frozen=True)
class CacheEntry:
    """One causal convolution's feature cache in the VAE decoder: (batch, channels, 2, h*scale, w*scale)."""

    channels: int
    scale: int


ArtifactWriter = Callable[[Path], None]  # fills the model's version folder


def no_artifacts(version: Path) -> None:
    """A model whose version folder holds its generated model.py only."""


@dataclass(frozen=True)
class Component:
    """One model of the repository as the export writes it (export/registry.py lists them)."""

    name: str
    # wan22_triton.triton_models.<entry> serves it; None: a TensorRT plan, whose config the TensorRT build writes
    entry: str | None
    spec: Callable[[], ComponentSpec]  # called once the artifacts exist (the VAE frame graphs' caches)
    manifest: Manifest
    write_artifacts: ArtifactWriter = no_artifacts
    instance_count: int = 1  # per device
    devices: tuple[int, ...] = (0,)  # where its instances go (parallel plan): GPU ids, or one CPU instance each
    # > 1: a version per replica, version r + 1 on replica r's `devices` (those of replica 0 listed; the model
    # places its instances itself: KIND_MODEL, wan22_triton.parallel.plan)
    versions: int = 1
    optional_inputs: frozenset[str] = frozenset()
    decoupled: bool = False
    queue: QueuePolicy = QueuePolicy()
    gpu_inputs: bool = False  # takes CUDA tensors from a GPU caller as they come (FORCE_CPU_ONLY_INPUT_TENSORS no)
    # Triton's model_warmup: (sample name, symbol values incl. batch) each, run before the model is READY
    warmup: tuple[tuple[str, Mapping[str, int]], ...] = ()
    warmup_markers: frozenset[str] = frozenset()  # optional BOOL inputs true in the warm-up samples only
