"""BF16 self-attention for the Wan experts through FlashAttention-4's kernels (`flash-attn-4`, CuTe DSL).

At 480p/81 frames the self-attention (32,760 tokens) is about half of a step's FLOPs and, in a compiled BF16
step, 55% of its time: PyTorch's SDPA picks cuDNN on Hopper, which runs at 70% of the card's BF16 matmul rate at
this shape (perf/results/gpu/block_profile/). `flash-attn-4` (pure-Python wheels, over
`nvidia-cutlass-dsl`) carries FlashAttention's forward kernels for Hopper (the FA3 design: warp specialisation,
TMA loads, wgmma, softmax overlapped with the matmuls) and Blackwell, JIT-compiled by CuTe DSL at the first call
of each shape.

Numerics stay those of the BF16 tier: BF16 inputs and output, FP32 accumulation and softmax, like cuDNN's kernel.
The kernel is the torch custom op `wan22::flash_attn` (layout B, S, H, D, which is the projections' own layout:
no transposes), so regional compilation traces the block as one graph around it. On CPU tensors the op runs
PyTorch's SDPA, which is how tests check the processor without a GPU.
"""

from __future__ import annotations

import torch


def import_flash_attn():
    """FlashAttention-4's `flash_attn_func` (package flash-attn-4), with a clear error where it is missing."""
    try:
        from flash_attn.cute import flash_attn_func
    except ImportError as e:
        raise ImportError(
            f"attention 'flash_attn_4' needs the flash-attn-4 package (pip install flash-attn-4 "
            f"'nvidia-cutlass-dsl[cu13]'; Hopper or Blackwell GPU): {e}") from e
    return flash_attn_func


@torch.library.custom_op("wan22::flash_attn", mutates_args=(), device_types="cuda")
def flash_attn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(scale * Q K^T) V for (B, S, H, D) FP16/BF16 tensors, FlashAttention-4's forward kernel."""
    if q.dtype not in (torch.float16, torch.bfloat16) or not q.dtype == k.dtype == v.dtype:
        raise TypeError(f"flash_attn takes float16 or bfloat16 Q, K, V of one dtype, got {q.dtype}, {k.dtype}, "
                        f"{v.dtype}")
    out = import_flash_attn()(q, k, v, softmax_scale=float(scale), causal=False)
    return out[0] if isinstance(out, tuple) else out  # (out, lse) in the 4.0 betas


@flash_attn.register_kernel("cpu")
def _(q, k, v, scale):
    out = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=float(scale))
    return out.transpose(1, 2).contiguous()


@flash_attn.register_fake
def _(q, k, v, scale):
    b, s, h, _ = q.shape
    return q.new_empty((b, s, h, v.shape[-1]))


def attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """softmax(Q K^T / sqrt(D)) V of (B, S, H, D) tensors in V's dtype (Q and K rounded to it after RoPE, as
    diffusers does)."""
    return flash_attn(query.to(value.dtype), key.to(value.dtype), value, query.shape[-1] ** -0.5)
