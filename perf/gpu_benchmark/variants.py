"""The Triton variants the benchmark can run: each one an export of the same configs-only checkpoint.

A `Variant` holds the experts' speed options (wan22_triton.manifest.SpeedOptions), the VAE's cuDNN autotuning and,
for the `*_lowmem` variants, the low-memory mode (experts and text encoder in page-locked host memory, on the GPU
only while they work; wan22_triton/offload.py). The default variants are the FP8 tier `fp8_attention` and the BF16
tier `flash_attention`; `compile` is the BF16 tier with PyTorch's SDPA.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wan22_triton import components as C
from wan22_triton.manifest import SpeedOptions


@dataclass(frozen=True)
class Variant:
    label: str
    speed: SpeedOptions = field(default_factory=SpeedOptions)
    vae_cudnn_benchmark: bool = False
    low_memory: bool = False

    def results_row(self) -> dict[str, str]:
        """The variant as every results.json has recorded it (strings; `attention`, `low_memory` when set)."""
        row = {"label": self.label, "compile": self.speed.compile, "quantization": self.speed.quantization}
        if self.speed.attention != SpeedOptions().attention:
            row["attention"] = self.speed.attention
        row["vae_cudnn_benchmark"] = "1" if self.vae_cudnn_benchmark else "0"
        if self.low_memory:
            row["low_memory"] = "1"
        return row


REGIONAL = SpeedOptions(compile="regional")
FP8 = SpeedOptions(compile="regional", quantization="fp8_rowwise")
VARIANTS: dict[str, Variant] = {
    "bf16": Variant("Triton BF16 eager"),
    "compile": Variant("Triton BF16 + compile", REGIONAL),
    "flash_attention": Variant("Triton BF16 + FlashAttention-4 + compile",
                               SpeedOptions(compile="regional", attention="flash_attn_4")),
    "fp8": Variant("Triton FP8 + compile", FP8, vae_cudnn_benchmark=True),
    "fp8_attention": Variant("Triton FP8 + FP8 attention + compile",
                             SpeedOptions(compile="regional", quantization="fp8_rowwise", attention="fp8_cudnn"),
                             vae_cudnn_benchmark=True),
    "bf16_lowmem": Variant("Triton BF16 eager, low memory", low_memory=True),
    "compile_lowmem": Variant("Triton BF16 + compile, low memory", REGIONAL, low_memory=True),
}
DEFAULT_VARIANTS = "fp8_attention,flash_attention"

EXPERTS = tuple(C.EXPERT_MODELS.values())  # high-noise first
COMPONENT_MODELS = (C.TEXT_ENCODER, *EXPERTS, C.VAE_DECODER)


def export_variant(checkpoint: Path, repo: Path, variant: Variant, args) -> None:
    """A fresh model repository for the variant: ENGINE=torch, every component with random weights from
    --weights-seed (the export derives each component's seed as the baseline does)."""
    from export.repository import ExportOptions, export_repository

    if repo.exists():
        shutil.rmtree(repo)
    opts = ExportOptions(engine="torch", device=args.device, precision=args.precision, low_memory=variant.low_memory,
                         speed=variant.speed, random_weights_seed=args.weights_seed,
                         vae_cudnn_benchmark=variant.vae_cudnn_benchmark)
    export_repository(checkpoint, repo, opts, log=lambda _: None)


def estimate_s(variant: Variant, results: dict[str, Any]) -> float:
    """A variant's likely wall time (export, start, warm-up, requests), for --deadline-s."""
    base = results.get("baseline", {}).get("e2e_s", 60.0)
    speed = variant.speed
    compile_s = {"none": 0.0, "regional": 150.0}[speed.compile] + (150.0 if speed.quantization != "none" else 0)
    swap_s = 60.0 if variant.low_memory else 0.0  # host copies at start, a few swaps
    return 60.0 + 0.5 * base + base + compile_s + swap_s
