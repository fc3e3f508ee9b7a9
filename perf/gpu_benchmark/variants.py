"""The Triton variants the benchmark can run: each one an export of the same configs-only checkpoint.

A `Variant` holds the experts' speed options (wan22_triton.manifest.SpeedOptions), the VAE's cuDNN autotuning and,
for the `*_lowmem` variants, the low-memory mode (experts and text encoder in page-locked host memory, on the GPU
only while they work; wan22_triton/memory/offload.py). The default variants are the FP8 tier `fp8_attention` and the BF16
tier `flash_attention`; `compile` is the BF16 tier with PyTorch's SDPA. `<tier>_<plan>` runs a tier over several
GPUs (wan22_triton.parallel.plan: `cfg2` CFG parallel, `ulysses2` sequence parallel, `cfg2_ulysses4`, ...).
"""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wan22_triton.components.expert import EXPERT_MODELS
from wan22_triton.components.text_encoder import TEXT_ENCODER
from wan22_triton.components.vae_decoder import VAE_DECODER
from wan22_triton.manifest import SpeedOptions
from wan22_triton.options import Attention, Compile, Device, Engine, Precision, Quantization
from wan22_triton.parallel.plan import ParallelPlan


@dataclass(frozen=True)
class Variant:
    label: str
    speed: SpeedOptions = field(default_factory=SpeedOptions)
    vae_cudnn_benchmark: bool = False
    low_memory: bool = False
    parallel: ParallelPlan = field(default_factory=ParallelPlan)
    one_gpu: str | None = None  # a parallel variant's tier on one GPU (the variant its step times compare with)

    def results_row(self) -> dict[str, Any]:
        """The variant as every results.json has recorded it (strings; `attention`, `low_memory` when set), and the
        number of GPUs it uses."""
        row: dict[str, Any] = {"label": self.label, "compile": self.speed.compile,
                               "quantization": self.speed.quantization, "gpus": self.parallel.devices}
        if self.parallel.active:
            row["parallel"] = {"replicas": self.parallel.replicas, "cfg_parallel": self.parallel.cfg_parallel,
                               "ulysses": self.parallel.ulysses, "one_gpu": self.one_gpu}
        if self.speed.attention != SpeedOptions().attention:
            row["attention"] = self.speed.attention
        row["vae_cudnn_benchmark"] = "1" if self.vae_cudnn_benchmark else "0"
        if self.low_memory:
            row["low_memory"] = "1"
        return row


REGIONAL = SpeedOptions(compile=Compile.REGIONAL)
FP8 = SpeedOptions(compile=Compile.REGIONAL, quantization=Quantization.FP8_ROWWISE)
VARIANTS: dict[str, Variant] = {
    "bf16": Variant("Triton BF16 eager"),
    "compile": Variant("Triton BF16 + compile", REGIONAL),
    "flash_attention": Variant("Triton BF16 + FlashAttention-4 + compile",
                               SpeedOptions(compile=Compile.REGIONAL, attention=Attention.FLASH_ATTN_4)),
    "fp8": Variant("Triton FP8 + compile", FP8, vae_cudnn_benchmark=True),
    "fp8_attention": Variant("Triton FP8 + FP8 attention + compile",
                             dataclasses.replace(FP8, attention=Attention.FP8_CUDNN),
                             vae_cudnn_benchmark=True),
    "bf16_lowmem": Variant("Triton BF16 eager, low memory", low_memory=True),
    "compile_lowmem": Variant("Triton BF16 + compile, low memory", REGIONAL, low_memory=True),
}
# Several GPUs: the BF16 eager tier and the FP8 tier over each plan (names: <tier>_<plan>).
PLANS = {
    "cfg2": ParallelPlan(cfg_parallel=2), "ulysses2": ParallelPlan(ulysses=2), "ulysses4": ParallelPlan(ulysses=4),
    "ulysses8": ParallelPlan(ulysses=8), "cfg2_ulysses2": ParallelPlan(cfg_parallel=2, ulysses=2),
    "cfg2_ulysses4": ParallelPlan(cfg_parallel=2, ulysses=4), "replicas2": ParallelPlan(replicas=2),
    "ulysses2_nooverlap": ParallelPlan(ulysses=2, ulysses_chunks=1),  # one exchange each way, nothing overlapped
    "ulysses2_4pieces": ParallelPlan(ulysses=2, ulysses_chunks=4),
}
for _tier in ("bf16", "fp8_attention"):
    for _plan_name, _plan in PLANS.items():
        _base = VARIANTS[_tier]
        VARIANTS[f"{_tier}_{_plan_name}"] = dataclasses.replace(
            _base, label=f"{_base.label}, {_plan_name} ({_plan.devices} GPUs)", parallel=_plan, one_gpu=_tier)
DEFAULT_VARIANTS = "fp8_attention,flash_attention"

EXPERTS = tuple(EXPERT_MODELS.values())  # high-noise first
COMPONENT_MODELS = (TEXT_ENCODER, *EXPERTS, VAE_DECODER)


def export_options(variant: Variant, device: Device, precision: Precision, weights_seed: int, **more: Any):
    """The variant as ExportOptions: ENGINE=torch, every component with random weights from `weights_seed` (the
    export derives each component's seed as the baseline does); `more`: other fields (LoRAs, compile artifacts)."""
    from export.repository import ExportOptions

    return ExportOptions(engine=Engine.TORCH, device=device, precision=precision, low_memory=variant.low_memory,
                         speed=variant.speed, parallel=variant.parallel, random_weights_seed=weights_seed,
                         vae_cudnn_benchmark=variant.vae_cudnn_benchmark, **more)


def export_variant(checkpoint: Path, repo: Path, variant: Variant, args, **more: Any) -> None:
    """A fresh model repository for the variant (export_options)."""
    from export.repository import export_repository

    if repo.exists():
        shutil.rmtree(repo)
    opts = export_options(variant, args.device, args.precision, args.weights_seed, **more)
    export_repository(checkpoint, repo, opts, log=lambda _: None)


def estimate_s(variant: Variant, results: dict[str, Any]) -> float:
    """A variant's likely wall time (export, start, warm-up, requests), for --deadline-s."""
    base = results.get("baseline", {}).get("e2e_s", 60.0)
    speed = variant.speed
    # Inductor's coordinate descent tuning off (fast_path): ~15-30 s a compile, one per expert and batch
    compile_s = ({Compile.NONE: 0.0, Compile.REGIONAL: 60.0}[speed.compile]
                 + (30.0 if speed.quantization != Quantization.NONE else 0))
    swap_s = 60.0 if variant.low_memory else 0.0  # host copies at start, a few swaps
    return 60.0 + 0.5 * base + base + compile_s + swap_s
