"""The choices an export makes, as enums, and the rules on which of them can be served together.

Each value is what the `python -m export` flag and the manifest's JSON carry; code compares members, never strings.
`check_choices` holds every rule: the export runs it before writing anything, each component model again when it
loads (a hand-edited config). No torch here: clients import this module.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import TypeVar


class Engine(StrEnum):
    TORCH = "torch"  # the diffusers modules in the Python backend
    ONNX = "onnx"  # exported graphs in ONNX Runtime (Python backend)
    TENSORRT = "tensorrt"  # plans served by Triton's tensorrt backend


class Device(StrEnum):
    CPU = "cpu"
    GPU = "gpu"


class Precision(StrEnum):
    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"


class Compile(StrEnum):
    NONE = "none"
    REGIONAL = "regional"  # diffusers' compile_repeated_blocks: one graph for the 40 identical blocks


class Quantization(StrEnum):
    NONE = "none"
    FP8_ROWWISE = "fp8_rowwise"  # torchao FP8 weights and activations, a scale per row


class Attention(StrEnum):
    SDPA = "sdpa"
    FP8_CUDNN = "fp8_cudnn"
    FLASH_ATTN_4 = "flash_attn_4"


E = TypeVar("E", bound=Enum)


def parse(kind: type[E], value: object) -> E:
    """`value` as a member of `kind`; else a ValueError naming the option (the enum's name) and its choices."""
    try:
        return kind(value)
    except ValueError:
        raise ValueError(f"{kind.__name__.lower()} must be one of {', '.join(kind)}, got {value!r}") from None


@dataclass(frozen=True)
class SpeedOptions:
    """The torch engine's expert speed options (wan22_triton.speed.fast_path applies them)."""

    compile: Compile = Compile.NONE
    quantization: Quantization = Quantization.NONE
    attention: Attention = Attention.SDPA

    def check(self) -> None:
        """ValueError naming the option whose value is not one of its choices."""
        for kind, value in ((Compile, self.compile), (Quantization, self.quantization), (Attention, self.attention)):
            parse(kind, value)

    def chosen(self) -> dict[str, str]:
        """The options that differ from the defaults."""
        default = SpeedOptions()
        return {k: v for k, v in dataclasses.asdict(self).items() if v != getattr(default, k)}

    @property
    def needs_gpu(self) -> bool:
        """FP8 quantization and the attention kernels run on CUDA GPUs only."""
        return self.quantization != Quantization.NONE or self.attention != Attention.SDPA


def check_choices(engine: Engine, device: Device, precision: Precision, speed: SpeedOptions, *,
                  low_memory: bool = False, keep_workspace: bool = False, text_encoder_offload: bool = False,
                  ulysses: int = 1, parallel: bool = False, loras: bool = False, warmup: bool = False,
                  compile_artifacts: bool = False) -> None:
    """ValueError naming the first choice that cannot be served. `parallel`: a parallel plan with several devices;
    `loras`: LoRA adapters served."""
    engine, device, _ = parse(Engine, engine), parse(Device, device), parse(Precision, precision)
    speed.check()
    on_torch = engine == Engine.TORCH
    if speed.chosen() and not on_torch:
        raise ValueError(f"{', '.join(speed.chosen())} need engine '{Engine.TORCH}', got '{engine}'")
    if speed.needs_gpu and device != Device.GPU:
        raise ValueError(f"FP8 quantization and the attention kernels need --device {Device.GPU}")
    for wanted, option, why in ((keep_workspace, "keep_workspace", "only its models keep a PyTorch cache to release"),
                                (text_encoder_offload, "text_encoder_offload", "weights the Python model can move"),
                                (low_memory, "low_memory", "weights the Python model can move"),
                                (ulysses > 1, "ulysses", "its worker processes run the diffusers module")):
        if wanted and not on_torch:
            raise ValueError(f"{option} needs engine '{Engine.TORCH}' ({why}), got '{engine}'")
    if low_memory and parallel:
        raise ValueError("low_memory swaps weights to fit ONE GPU; with several, use them instead (no parallel "
                         "plan with low_memory)")
    if low_memory and speed.quantization != Quantization.NONE:
        raise ValueError("low_memory does not support quantization (torchao's FP8 weights are not plain storage)")
    if loras and (not on_torch or low_memory or speed.compile != Compile.NONE):
        raise ValueError(f"--lora needs engine '{Engine.TORCH}', without --low-memory or --compile (adapters are "
                         "chosen per call: a compiled block would recompile for each adapter and scale; "
                         "wan22_triton/request/lora.py)")
    if loras and ulysses > 1:
        raise ValueError("--lora is not supported with ulysses > 1 yet (the worker processes load no adapters)")
    if warmup and (not on_torch or low_memory):
        raise ValueError(f"--warmup needs engine '{Engine.TORCH}' without --low-memory (the warm-up would leave "
                         "every model's weights on the GPU; other engines' warm-up is not tested)")
    if warmup and speed.compile != Compile.NONE and not compile_artifacts:
        raise ValueError("--warmup with --compile regional needs --compile-artifacts: warming several sizes "
                         "under torch's default shapes would leave dynamic-shape graphs, where the artifacts' "
                         "compile makes one static graph per size")
    if compile_artifacts:
        _check_compile_artifacts(on_torch, speed, low_memory, ulysses)


def _check_compile_artifacts(on_torch: bool, speed: SpeedOptions, low_memory: bool, ulysses: int) -> None:
    if not on_torch or speed.compile == Compile.NONE:
        raise ValueError(f"--compile-artifacts needs engine '{Engine.TORCH}' with --compile {Compile.REGIONAL} (it "
                         "saves what the compile makes)")
    if low_memory:
        raise ValueError("--compile-artifacts is not supported with --low-memory yet (the warm-up would leave "
                         "every expert's weights on the GPU)")
    if ulysses > 1:
        raise ValueError("--compile-artifacts is not supported with ulysses > 1 yet (the export compiles one "
                         "device's graphs, not a sequence-parallel group's)")
