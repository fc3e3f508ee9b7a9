"""The Triton variants the benchmark can run: each one an export of the same configs-only checkpoint.

A variant's spec holds the experts' speed options (`compile`, `quantization`, `attention`: wan22_triton.fast_path),
the VAE's `vae_cudnn_benchmark` and, for the `*_lowmem` variants, the low-memory mode (`low_memory`: experts and
text encoder in page-locked host memory, on the GPU only while they work; wan22_triton/offload.py). The spec's
values are strings because each variant's row in results.json repeats them. The default variants are the FP8 tier
`fp8_attention` and the BF16 tier `flash_attention`; `compile` is the BF16 tier with PyTorch's SDPA.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

VARIANTS: dict[str, dict[str, str]] = {
    "bf16": {"label": "Triton BF16 eager", "compile": "none", "quantization": "none", "vae_cudnn_benchmark": "0"},
    "compile": {"label": "Triton BF16 + compile", "compile": "regional", "quantization": "none",
                "vae_cudnn_benchmark": "0"},
    "flash_attention": {"label": "Triton BF16 + FlashAttention-4 + compile", "compile": "regional",
                        "quantization": "none", "attention": "flash_attn_4", "vae_cudnn_benchmark": "0"},
    "fp8": {"label": "Triton FP8 + compile", "compile": "regional", "quantization": "fp8_rowwise",
            "vae_cudnn_benchmark": "1"},
    "fp8_attention": {"label": "Triton FP8 + FP8 attention + compile", "compile": "regional",
                      "quantization": "fp8_rowwise", "attention": "fp8_cudnn", "vae_cudnn_benchmark": "1"},
    "bf16_lowmem": {"label": "Triton BF16 eager, low memory", "compile": "none", "quantization": "none",
                    "vae_cudnn_benchmark": "0", "low_memory": "1"},
    "compile_lowmem": {"label": "Triton BF16 + compile, low memory", "compile": "regional", "quantization": "none",
                       "vae_cudnn_benchmark": "0", "low_memory": "1"},
}
DEFAULT_VARIANTS = "fp8_attention,flash_attention"

EXPERTS = ("transformer_high_noise", "transformer_low_noise")
COMPONENT_MODELS = ("text_encoder", *EXPERTS, "vae_decoder")


def is_low_memory(spec: dict[str, str]) -> bool:
    return spec.get("low_memory", "0") == "1"


def export_variant(checkpoint: Path, repo: Path, spec: dict[str, str], args) -> None:
    """A fresh model repository for the variant: ENGINE=torch, every component with random weights from
    --weights-seed (the export derives each component's seed as the baseline does)."""
    from export.repository import ExportOptions, export_repository
    from wan22_triton.manifest import SpeedOptions

    if repo.exists():
        shutil.rmtree(repo)
    speed = SpeedOptions(compile=spec["compile"], quantization=spec["quantization"],
                         attention=spec.get("attention", "sdpa"))
    opts = ExportOptions(engine="torch", device=args.device, precision=args.precision, low_memory=is_low_memory(spec),
                         speed=speed, random_weights_seed=args.weights_seed,
                         vae_cudnn_benchmark=spec["vae_cudnn_benchmark"] == "1")
    export_repository(checkpoint, repo, opts, log=lambda _: None)


def estimate_s(spec: dict[str, str], results: dict[str, Any]) -> float:
    """A variant's likely wall time (export, start, warm-up, requests), for --deadline-s."""
    base = results.get("baseline", {}).get("e2e_s", 60.0)
    compile_s = {"none": 0.0, "regional": 150.0}[spec["compile"]] + (150.0 if spec["quantization"] != "none" else 0)
    swap_s = 60.0 if is_low_memory(spec) else 0.0  # host copies at start, a few swaps
    return 60.0 + 0.5 * base + base + compile_s + swap_s
