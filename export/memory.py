"""The repository's `MemoryModel` (wan22_triton.memory.budget) for a GPU export of the torch engine: every weight
counted on the meta device from the checkpoint's configs (no weights read), adapters from their files' headers."""

from __future__ import annotations

import math
from pathlib import Path

from wan22_triton.checkpoint import CheckpointInfo
from wan22_triton.components.expert import WEIGHTS_FOLDER as EXPERT_KIND
from wan22_triton.components.text_encoder import WEIGHTS_FOLDER as TEXT_ENCODER_FOLDER
from wan22_triton.components.vae_decoder import WEIGHTS_FOLDER as VAE_FOLDER, vae_precision
from wan22_triton.memory.budget import CALIBRATION, MemoryModel
from wan22_triton.options import Compile, Device, Engine, Quantization

from .loras import LoraSource
from .options import ExportOptions

FP8_BYTES, SCALE_BYTES = 1, 4  # torchao's float8 rowwise: one byte a weight, a float32 scale per output row


def _meta(kind: str, folder: Path, precision):
    import torch

    from wan22_triton.engines.loading import torch_dtype
    from wan22_triton.engines.random_weights import random_component

    return random_component(kind, folder, 0, torch_dtype(precision), torch.device("meta"))


def _bytes(module) -> int:
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


def _fp8_bytes(expert) -> int:
    """The expert with its blocks' Linear weights in FP8 (fast_path's filter), the rest as loaded."""
    from wan22_triton.speed.fast_path import _block_linear

    quantized = [m for name, m in expert.named_modules() if _block_linear(m, name)]
    saved = sum(m.weight.numel() * (m.weight.element_size() - FP8_BYTES) - m.weight.shape[0] * SCALE_BYTES
                for m in quantized)
    return _bytes(expert) - saved


def _adapter_bytes(sources: tuple[LoraSource, ...], expert_index: int) -> int:
    """The adapters of one expert as served (BF16), from the safetensors headers."""
    from safetensors import safe_open

    total = 0
    for source in sources:
        with safe_open(str(source.file_for(expert_index)), "pt") as f:
            for key in f.keys():
                shape = f.get_slice(key).get_shape()
                total += 2 * math.prod(shape)
    return total


def memory_model(info: CheckpointInfo, opts: ExportOptions) -> MemoryModel | None:
    """None where the budget is not modelled: CPU repositories, and the ONNX Runtime and TensorRT engines."""
    if opts.device != Device.GPU or opts.engine != Engine.TORCH:
        return None
    root = Path(info.path)
    speed, plan = opts.speed, opts.parallel
    text_encoder = _bytes(_meta(TEXT_ENCODER_FOLDER, root / TEXT_ENCODER_FOLDER, opts.precision))
    vae = _meta(VAE_FOLDER, root / VAE_FOLDER, vae_precision(opts.precision))
    experts, loads, ffn_dim = [], [], 0
    for index, folder in enumerate(info.expert_folders):
        expert = _meta(EXPERT_KIND, root / folder, opts.precision)
        ffn_dim = max(ffn_dim, int(expert.config.ffn_dim))
        loaded, adapters = _bytes(expert), _adapter_bytes(opts.lora, index)
        served = _fp8_bytes(expert) if speed.quantization == Quantization.FP8_ROWWISE else loaded
        experts.append(served + adapters)
        loads.append(loaded + adapters)  # FP8 quantizes what was loaded
    if speed.quantization == Quantization.FP8_ROWWISE:
        row = CALIBRATION.eager_fp8_row if speed.compile == Compile.NONE else CALIBRATION.compiled_fp8_row
    else:
        row = CALIBRATION.lora_row if opts.lora else CALIBRATION.eager_row
    vae_models = 2 if info.takes_image else 1  # the encoder holds its own copy of the VAE (one frame's workspace)
    components = 1 + vae_models + len(experts)  # text encoder, VAE models, experts
    return MemoryModel(
        text_encoder=text_encoder, experts=tuple(experts), expert_loads=tuple(loads), vae=vae_models * _bytes(vae),
        ffn_dim=ffn_dim, vae_channels=int(vae.config.base_dim * max(vae.config.dim_mult)),
        processes=1 + components + 2 * opts.orchestrator_instances,  # tritonserver, models, both orchestrators
        row_factor=row, cfg_batch=2 // plan.cfg_parallel, ulysses=plan.ulysses,
        text_encoder_resident=not (opts.low_memory or opts.text_encoder_offload),
        experts_resident=not opts.low_memory,
        quantized=speed.quantization != Quantization.NONE, adapters=bool(opts.lora),
    )
