"""The choices an export makes, as enums: engine, device, precision and the experts' speed options.

Each value is what the `python -m export` flag and the manifest's JSON carry; code compares members, never strings.
"""

from __future__ import annotations

from enum import StrEnum


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
