"""GPU serving options of the `torch` engine, and random-weight components for benchmarks.

Two things live here, both read from model-config parameters by the component models and never used on the
normal path (absent parameters mean: load the checkpoint's weights, run the diffusers module eagerly):

* ``random_init_seed`` (benchmark seam). A configs-only checkpoint (no weight files) plus this parameter builds
  the component from its config directly on the model's device, in the serving dtype, with weights drawn from
  ``torch.manual_seed(seed)`` by the modules' own initialisers. `random_component` is the one function that does
  it, and the benchmark's diffusers baseline calls the same function with the same seeds (`component_seed`), so
  both sides hold bit-identical weights without writing ~70 GB of random safetensors. It mirrors
  ``from_pretrained(torch_dtype=...)``: parameters under a class's ``_keep_in_fp32_modules`` stay float32.
* ``quantization`` / ``compile`` (speed). `optimize_transformer` applies, in this order: torchao FP8 dynamic
  quantization of the transformer blocks' Linear layers (``fp8_rowwise``: float8 e4m3 weights and activations,
  one scale per row, ``torch._scaled_mm``), then regional compilation (``regional``: diffusers'
  ``compile_repeated_blocks``, one compiled graph reused by all 40 identical blocks, so the compile cost is one
  block's). Both need a CUDA device (FP8 needs compute capability >= 8.9).
* ``attention`` (speed), the kernel of the blocks' self-attention (wan22_triton.self_attention), set before
  compiling so the compiled block fuses the work around it: ``sdpa`` (diffusers' processor, PyTorch's SDPA),
  ``fp8_cudnn`` (FP8 through cuDNN's fused kernel: wan22_triton.fp8_attention, `nvidia-cudnn-frontend`) or
  ``flash_attn_4`` (BF16 through FlashAttention-4's kernels: wan22_triton.flash_attention, `flash-attn-4`).
  The GPU each option needs is in `MIN_CAPABILITY` (FP8 attention: Hopper; FlashAttention-4: Ampere, measured on
  Hopper only); a model asking for more than its GPU has fails to load with the reason.
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import torch

# Seed of each component, offset from the benchmark's base seed (one per diffusers sub-folder).
SEED_OFFSETS = {"text_encoder": 1, "transformer": 2, "transformer_2": 3, "vae": 4}
COMPILE_MODES = ("none", "regional")
QUANTIZATIONS = ("none", "fp8_rowwise")
ATTENTIONS = ("sdpa", "fp8_cudnn", "flash_attn_4")


def component_seed(base_seed: int, folder: str) -> int:
    """The seed of one component (diffusers sub-folder name) for a benchmark's base seed."""
    return int(base_seed) + SEED_OFFSETS[folder]


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _keep_in_fp32(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Float32 for the parameters `from_pretrained(torch_dtype=dtype)` keeps in float32 (diffusers' rule)."""
    keep = getattr(model, "_keep_in_fp32_modules", None) or []
    if not keep or dtype == torch.float32 or not hasattr(model, "register_to_config"):  # diffusers models only
        return
    for name, param in model.named_parameters():
        if any(k in name.split(".") for k in keep):
            param.data = param.data.float()


def random_component(kind: str, folder: str | Path, seed: int, dtype: torch.dtype, device: str | torch.device):
    """A checkpoint component built from `folder`'s config alone, random weights from `seed`, on `device`.

    kind: "transformer" (WanTransformer3DModel), "text_encoder" (UMT5EncoderModel) or "vae" (AutoencoderKLWan).
    Deterministic: the same arguments give bit-identical weights in any process (same torch build and device).
    """
    folder = Path(folder)
    torch.manual_seed(int(seed))  # seeds the CPU and every CUDA generator
    with torch.device(device), _default_dtype(dtype), torch.no_grad():
        if kind == "transformer":
            from diffusers import WanTransformer3DModel

            model = WanTransformer3DModel.from_config(WanTransformer3DModel.load_config(folder))
        elif kind == "vae":
            from diffusers import AutoencoderKLWan

            model = AutoencoderKLWan.from_config(AutoencoderKLWan.load_config(folder))
        elif kind == "text_encoder":
            from transformers import UMT5Config, UMT5EncoderModel

            model = UMT5EncoderModel._from_config(UMT5Config.from_pretrained(folder), dtype=dtype)
        else:
            raise ValueError(f"unknown component kind {kind!r}")
        _keep_in_fp32(model, dtype)
    return model.eval()


def _utf8_locale() -> None:
    """UTF-8 text I/O for Inductor, which reads and writes its sources with the locale's encoding.

    The Python-backend stub's embedded interpreter starts in the C locale (ASCII), whatever LANG says; there
    Inductor's first compile fails with a UnicodeDecodeError. LC_CTYPE set at run time is what `open()` uses.
    """
    import locale

    if locale.getencoding().lower().replace("-", "") == "utf8":
        return
    for name in ("C.UTF-8", "C.utf8", "en_US.UTF-8"):
        try:
            locale.setlocale(locale.LC_CTYPE, name)
            return
        except locale.Error:
            continue


# The oldest GPU (compute capability) each option's kernels run on.
MIN_CAPABILITY = {"fp8_rowwise": (8, 9), "fp8_cudnn": (9, 0), "flash_attn_4": (8, 0)}


def _require_gpu(option: str) -> None:
    """Refuse, at load time and with the reason, an option whose kernels cannot run here."""
    need = MIN_CAPABILITY[option]
    if not torch.cuda.is_available():
        raise ValueError(f"{option} needs a CUDA GPU (compute capability >= {need[0]}.{need[1]}); none is visible")
    have = torch.cuda.get_device_capability()
    if have < need:
        raise ValueError(f"{option} needs compute capability >= {need[0]}.{need[1]}; "
                         f"{torch.cuda.get_device_name()} has {have[0]}.{have[1]}")


def _block_linear(module: torch.nn.Module, fqn: str) -> bool:
    return isinstance(module, torch.nn.Linear) and fqn.startswith("blocks.")


def optimize_transformer(
    model: torch.nn.Module,
    compile: str = "none",
    quantization: str = "none",
    attention: str = "sdpa",
    log: Callable[[str], None] = print,
) -> torch.nn.Module:
    """Apply the `quantization`, `attention` then `compile` options (see module docstring); returns the model."""
    if compile not in COMPILE_MODES:
        raise ValueError(f"compile must be one of {COMPILE_MODES}, got {compile!r}")
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {QUANTIZATIONS}, got {quantization!r}")
    if attention not in ATTENTIONS:
        raise ValueError(f"attention must be one of {ATTENTIONS}, got {attention!r}")
    for option in (quantization, attention):
        if option in MIN_CAPABILITY:
            _require_gpu(option)
    if quantization == "fp8_rowwise":
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

        t0 = time.perf_counter()
        quantize_(model, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()), filter_fn=_block_linear)
        log(f"quantization fp8_rowwise (torchao) of the blocks' Linear layers: {time.perf_counter() - t0:.1f}s")
    if attention == "fp8_cudnn":
        from . import fp8_attention, self_attention

        cudnn = fp8_attention.import_cudnn_frontend()
        replaced = self_attention.set_self_attention(model, fp8_attention.attention)
        log(f"attention fp8_cudnn on {replaced} blocks' self-attention (cuDNN backend {cudnn.backend_version()})")
    elif attention == "flash_attn_4":
        from . import flash_attention, self_attention

        flash_attention.import_flash_attn()
        replaced = self_attention.set_self_attention(model, flash_attention.attention)
        log(f"attention flash_attn_4 (FlashAttention-4, CuTe DSL) on {replaced} blocks' self-attention")
    if compile == "regional":
        _utf8_locale()
        model.compile_repeated_blocks(fullgraph=True)
        log(f"compile: regional (compile_repeated_blocks, fullgraph), on the first request ({sys.executable})")
    return model


def block_flops(config: dict, tokens: int, text_len: int) -> dict[str, int]:
    """Matmul FLOPs of one transformer block for one batch item: `gemm` (projections, feed-forward) and
    `attention` (the scores and weighted sums of self- and cross-attention)."""
    d, ffn = int(config["num_attention_heads"]) * int(config["attention_head_dim"]), int(config["ffn_dim"])
    return {
        "gemm": (
            4 * 2 * tokens * d * d  # self-attention q, k, v, o
            + 2 * 2 * tokens * d * d  # cross-attention q, o
            + 2 * 2 * text_len * d * d  # cross-attention k, v
            + 2 * 2 * tokens * d * ffn  # feed-forward
        ),
        "attention": 2 * 2 * tokens * tokens * d + 2 * 2 * tokens * text_len * d,
    }


def transformer_step_flops(config: dict, latent_shape: tuple[int, int, int], text_len: int, batch: int = 2) -> float:
    """Matmul FLOPs of one WanTransformer3DModel forward (projections, attention, FFN) over `batch` items.

    latent_shape: (frames, height, width) of the latents; tokens = their product over the patch size. Elementwise
    work (norms, RoPE, modulation) is left out: it is well under 1% of the total at video sizes.
    """
    d = int(config["num_attention_heads"]) * int(config["attention_head_dim"])
    pt, ph, pw = (int(p) for p in config["patch_size"])
    f, h, w = latent_shape
    tokens = (f // pt) * (h // ph) * (w // pw)
    layers, text_dim = int(config["num_layers"]), int(config["text_dim"])
    per_layer = sum(block_flops(config, tokens, text_len).values())
    embed = 2 * tokens * (int(config["in_channels"]) * pt * ph * pw) * d + 2 * text_len * (text_dim * d + d * d)
    head = 2 * tokens * d * int(config["out_channels"]) * pt * ph * pw
    return float(batch * (layers * per_layer + embed + head))
