"""GPU speed options of the `torch` engine's experts (the manifest's `speed`: wan22_triton.options.SpeedOptions).

The defaults run the diffusers module eagerly, as loaded; the options:

* ``quantization`` / ``compile``. `optimize_transformer` applies, in this order: torchao FP8 dynamic
  quantization of the transformer blocks' Linear layers (``fp8_rowwise``: float8 e4m3 weights and activations,
  one scale per row, ``torch._scaled_mm``), then regional compilation (``regional``: diffusers'
  ``compile_repeated_blocks``, one compiled graph reused by all 40 identical blocks, so the compile cost is one
  block's). Both need a CUDA device (FP8 needs compute capability >= 8.9). With `--compile-artifacts` the graphs
  are static, one per compile point, and the export's compile cache is loaded first (wan22_triton.speed.compile_cache).
* ``attention``, the kernel of the blocks' self-attention (wan22_triton.speed.self_attention), set before
  compiling so the compiled block fuses the work around it: ``sdpa`` (diffusers' processor, PyTorch's SDPA),
  ``fp8_cudnn`` (FP8 through cuDNN's fused kernel: wan22_triton.speed.fp8_attention, `nvidia-cudnn-frontend`) or
  ``flash_attn_4`` (BF16 through FlashAttention-4's kernels: wan22_triton.speed.flash_attention, `flash-attn-4`).
  The GPU each option needs is in `MIN_CAPABILITY` (FP8 attention: Hopper; FlashAttention-4: Ampere, measured on
  Hopper only); a model asking for more than its GPU has fails to load with the reason.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any, Callable

import torch

from wan22_triton.options import Attention, Compile, Quantization, SpeedOptions

if TYPE_CHECKING:
    from wan22_triton.speed.compile_cache import CompileCache

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
MIN_CAPABILITY = {Quantization.FP8_ROWWISE: (8, 9), Attention.FP8_CUDNN: (9, 0), Attention.FLASH_ATTN_4: (8, 0)}


def _require_gpu(option: Quantization | Attention) -> None:
    """Refuse, at load time and with the reason, an option whose kernels cannot run here."""
    need = MIN_CAPABILITY[option]
    if not torch.cuda.is_available():
        raise ValueError(f"{option} needs a CUDA GPU (compute capability >= {need[0]}.{need[1]}); none is visible")
    have = torch.cuda.get_device_capability()
    if have < need:
        raise ValueError(f"{option} needs compute capability >= {need[0]}.{need[1]}; "
                         f"{torch.cuda.get_device_name()} has {have[0]}.{have[1]}")


def _block_linear(module: torch.nn.Module, fqn: str) -> bool:
    """The blocks' Linear layers, without peft's LoRA pairs (`.lora_A.`, `.lora_B.`): those stay BF16 (lora.py)."""
    return isinstance(module, torch.nn.Linear) and fqn.startswith("blocks.") and ".lora_" not in fqn


def optimize_transformer(
    model: torch.nn.Module, speed: SpeedOptions, log: Callable[[str], None] = print, sequence_group: Any = None,
    ulysses_chunks: int = 1, compile_cache: CompileCache | None = None,
) -> torch.nn.Module:
    """Apply the `quantization`, `attention` then `compile` options (see module docstring); returns the model.
    `sequence_group`: a process group to run each forward over (Ulysses, self-attention exchanged in
    `ulysses_chunks` pieces), set up after the attention kernel is chosen (it wraps it) and before compiling (the
    all-to-alls compile into the block). `compile_cache`: the
    expert's compile points and artifacts (`--compile-artifacts`), prepared before compiling."""
    compile, quantization, attention = speed.compile, speed.quantization, speed.attention
    speed.check()
    for option in (quantization, attention):
        if option in MIN_CAPABILITY:
            _require_gpu(option)
    if quantization == Quantization.FP8_ROWWISE:
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

        t0 = time.perf_counter()
        # set_inductor_config=False: torchao's default switches on Inductor's exhaustive coordinate descent tuning for
        # the whole process; on an H200 it made a block's compile 180 s instead of 15 s, even from a cache, for a
        # 0.6% faster forward (perf/compile_profile.py).
        config = Float8DynamicActivationFloat8WeightConfig(granularity=PerRow(), set_inductor_config=False)
        quantize_(model, config, filter_fn=_block_linear)
        log(f"quantization fp8_rowwise (torchao) of the blocks' Linear layers: {time.perf_counter() - t0:.1f}s")
    if attention == Attention.FP8_CUDNN:
        from wan22_triton.speed import fp8_attention, self_attention

        cudnn = fp8_attention.import_cudnn_frontend()
        replaced = self_attention.set_self_attention(model, fp8_attention.attention)
        log(f"attention fp8_cudnn on {replaced} blocks' self-attention (cuDNN backend {cudnn.backend_version()})")
    elif attention == Attention.FLASH_ATTN_4:
        from wan22_triton.speed import flash_attention, self_attention

        flash_attention.import_flash_attn()
        replaced = self_attention.set_self_attention(model, flash_attention.attention)
        log(f"attention flash_attn_4 (FlashAttention-4, CuTe DSL) on {replaced} blocks' self-attention")
    if sequence_group is not None:
        from wan22_triton.parallel import sequence_parallel

        sequence_parallel.enable(model, sequence_group, ulysses_chunks)
        if compile == Compile.REGIONAL:
            sequence_parallel.overlap_waits()
        log(f"sequence parallel (Ulysses) over {sequence_group.size()} ranks, rank {sequence_group.rank()}, "
            f"self-attention exchanged in up to {ulysses_chunks} pieces")
    if compile == Compile.REGIONAL:
        _utf8_locale()
        options = compile_cache.prepare(log) if compile_cache is not None else {}
        model.compile_repeated_blocks(fullgraph=True, **options)
        shapes = "static, one graph per compile point" if options else "torch's default shapes"
        log(f"compile: regional (compile_repeated_blocks, fullgraph, {shapes}), on the first forward of each shape "
            f"({sys.executable})")
    return model
