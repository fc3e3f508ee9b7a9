"""What the export tells each served model, typed once: the `Manifest`.

The export builds one `Manifest` per model and writes it as ONE config parameter, `manifest` (JSON); the model
parses it once in `initialize` (`Manifest.from_model_config`). Checkpoint facts travel as the `CheckpointInfo` the
export read, never re-serialised field by field, and every default lives in the dataclass that declares it.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Mapping

from wan22_triton.checkpoint import CheckpointInfo
from wan22_triton.components.common import MANIFEST_PARAMETER, CompilePoint
from wan22_triton.memory.budget import MemoryModel
from wan22_triton.options import Device, Engine, Precision, SpeedOptions, check_choices, parse
from wan22_triton.parallel.plan import ParallelPlan
from wan22_triton.request.presets import Preset


@dataclass(frozen=True)
class Limits:
    """What a request may ask for (the orchestrator checks them before any work)."""

    min_num_frames: int = 1
    max_num_frames: int = 161
    min_size: int = 16
    max_size: int = 1280
    max_inference_steps: int = 100
    max_request_seconds: int = 3600  # generation stops between steps once exceeded (0: no limit)
    max_prompt_bytes: int = 16384  # UTF-8 per prompt; the text encoder reads 512 tokens of it at most
    max_lora_scale: float = 4.0  # |lora_scale|: past a few, an adapter's delta swamps the weights it adapts
    max_image_bytes: int = 20 << 20  # an encoded `image`, refused before decoding
    max_image_pixels: int = 4096 * 4096  # its width x height, read from its header before decoding (no bombs)


VideoSize = tuple[int, int, int]  # (num_frames, height, width)


@dataclass(frozen=True)
class Manifest:
    """One served model's settings from the export."""

    model: str  # served name
    engine: Engine
    precision: Precision
    checkpoint: CheckpointInfo
    # Low-memory mode (wan22_triton.memory.offload): weights in page-locked host memory, on the GPU only while they work.
    low_memory: bool = False
    # Torch engine (text encoder, experts, VAE decoder): when a model goes idle (each encode and decode, an expert's
    # last step before the switch or the decode), the PyTorch cache's unused GPU blocks go back to the driver
    # (loading.release_workspace), so idle models hold their weights only. Frees nothing on a CPU.
    release_workspace: bool = False
    speed: SpeedOptions = field(default_factory=SpeedOptions)  # experts, torch engine
    limits: Limits = field(default_factory=Limits)  # checked by the orchestrator and by each component
    parallel: ParallelPlan = field(default_factory=ParallelPlan)  # several devices (wan22_triton.parallel.plan)
    video_sizes: tuple[VideoSize, ...] | None = None  # orchestrator of TensorRT plans or compile points: sizes served
    # Benchmark seam (wan22_triton.engines.random_weights): built from the checkpoint's config with weights from this seed.
    random_weights_seed: int | None = None
    cudnn_benchmark: bool = False  # VAE decoder: autotuned cuDNN convolutions
    loras: tuple[str, ...] = ()  # experts and orchestrators: the LoRA adapters served (wan22_triton.request.lora)
    presets: tuple[Preset, ...] = ()  # orchestrators: the named sampler settings (wan22_triton.request.presets)
    # Experts of `--compile-artifacts`: compiled one static graph per point, at export and in the server's warm-up
    # (wan22_triton.speed.compile_cache); empty: torch's default (compiled on first use, dynamic after a new shape).
    compile_points: tuple[CompilePoint, ...] = ()
    # GPU repositories of the torch engine: what the models hold on the fullest GPU, checked before READY
    memory: MemoryModel | None = None

    def check(self, device: Device) -> None:
        """The export's rules (options.check_choices) on what this manifest serves on `device` (the text encoder's
        `low_memory` may come from text_encoder_offload, which a parallel plan allows: that rule stays the export's)."""
        check_choices(self.engine, device, self.precision, self.speed, low_memory=self.low_memory,
                      ulysses=self.parallel.ulysses, loras=bool(self.loras))

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        del data["checkpoint"]["path"]  # CheckpointInfo.path: the export's, not the served model's
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        return _decode(cls, json.loads(text))

    @classmethod
    def from_model_config(cls, model_config: Mapping[str, Any]) -> Manifest:
        """The manifest of a model's parsed config (the JSON Triton hands `initialize` as `model_config`)."""
        parameters = model_config.get("parameters", {})
        if MANIFEST_PARAMETER not in parameters:
            raise ValueError(f"{model_config.get('name')}: config.pbtxt has no '{MANIFEST_PARAMETER}' parameter; "
                             "re-run the export")
        return cls.from_json(parameters[MANIFEST_PARAMETER]["string_value"])


def _decode(kind: Any, value: Any) -> Any:
    """JSON data back into the annotated type: dataclasses field by field, lists into tuples, `X | None`, enums."""
    if value is None:
        return None
    if isinstance(kind, type) and issubclass(kind, Enum):
        return parse(kind, value)
    if dataclasses.is_dataclass(kind):
        hints = typing.get_type_hints(kind)
        return kind(**{f.name: _decode(hints[f.name], value[f.name]) for f in dataclasses.fields(kind) if f.name in value})
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        return _decode(next(a for a in args if a is not type(None)), value)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_decode(args[0], v) for v in value)
        return tuple(_decode(a, v) for a, v in zip(args, value))
    return value
