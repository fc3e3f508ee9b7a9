"""The self-attention processor with its two kernels against diffusers' own, on the tiny checkpoint's expert (CPU).

Both kernels need a Hopper GPU. On CPU tensors the same custom ops run stand-ins: `wan22::sdpa_fp8` runs
`reference_fp8_attention` (the cuDNN kernel's roundings of Q, K, V, P and O in plain PyTorch), `wan22::flash_attn`
runs PyTorch's SDPA. So what is checked here is everything around the kernels: projections, norms, RoPE, K
smoothing, per-tensor scales, dtypes, layouts, the output projection, and that the compiled block traces through
the ops as one graph. The kernels themselves are measured on a GPU by perf/attention_probe.py.
"""

from __future__ import annotations

import copy

import pytest
import torch

from wan22_triton.speed import flash_attention, fp8_attention, self_attention


@pytest.fixture(scope="module")
def expert(tiny_checkpoint):
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel.from_pretrained(tiny_checkpoint / "transformer").eval()


@pytest.fixture(scope="module")
def attention_inputs(expert):
    cfg = expert.config
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(2, cfg.in_channels, 3, 16, 24, generator=g)
    rotary = expert.rope(latents)  # the expert's own RoPE tables for this latent grid
    x = torch.randn(2, rotary[0].shape[1], cfg.num_attention_heads * cfg.attention_head_dim, generator=g)
    return x, rotary


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@torch.no_grad()
def test_fp8_processor_matches_diffusers_up_to_fp8_rounding(expert, attention_inputs):
    from diffusers.models.transformers.transformer_wan import WanAttnProcessor

    x, rotary = attention_inputs
    attn = expert.blocks[0].attn1
    reference = WanAttnProcessor()(attn, x, rotary_emb=rotary)
    fp8 = self_attention.SelfAttnProcessor(fp8_attention.attention)(attn, x, rotary_emb=rotary)
    assert fp8.shape == reference.shape and fp8.dtype == reference.dtype
    # FP8 rounding of Q, K, V, P and O costs ~1.9% here; a wrong RoPE (swapped tables) or none costs 25-28%.
    assert 1e-4 < _relative_error(fp8, reference) < 0.04
    swapped = self_attention.SelfAttnProcessor(fp8_attention.attention)(attn, x, rotary_emb=rotary[::-1])
    assert _relative_error(swapped, reference) > 0.1


@torch.no_grad()
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_flash_processor_matches_diffusers(expert, attention_inputs, dtype):
    from diffusers.models.transformers.transformer_wan import WanAttnProcessor

    x, rotary = attention_inputs
    attn = copy.deepcopy(expert.blocks[0].attn1).to(dtype)
    x = x.to(dtype)
    reference = WanAttnProcessor()(attn, x, rotary_emb=rotary)
    flash = self_attention.SelfAttnProcessor(flash_attention.attention)(attn, x, rotary_emb=rotary)
    assert flash.dtype == reference.dtype == dtype and flash.shape == reference.shape
    # Same math and roundings (RoPE in float32, rounded to the model dtype, then SDPA): equal up to summation order.
    assert _relative_error(flash, reference) < (1e-5 if dtype == torch.float32 else 1e-2)
    swapped = self_attention.SelfAttnProcessor(flash_attention.attention)(attn, x, rotary_emb=rotary[::-1])
    assert _relative_error(swapped, reference) > 0.1


@torch.no_grad()
@pytest.mark.parametrize("kernel", ["fp8_cudnn", "flash_attn_4"])
def test_processor_compiles_as_one_graph_around_the_op(expert, attention_inputs, kernel):
    x, rotary = attention_inputs
    attn = expert.blocks[0].attn1
    processor = self_attention.SelfAttnProcessor(
        {"fp8_cudnn": fp8_attention.attention, "flash_attn_4": flash_attention.attention}[kernel])
    eager = processor(attn, x, rotary_emb=rotary)
    torch._dynamo.reset()
    compiled = torch.compile(lambda h: processor(attn, h, rotary_emb=rotary), fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(x), eager)  # fullgraph: a graph break would raise


@torch.no_grad()
def test_set_self_attention_replaces_self_attention_only(expert):
    cross_attention = [b.attn2.processor for b in expert.blocks]
    try:
        assert self_attention.set_self_attention(expert, fp8_attention.attention) == len(expert.blocks)
        assert all(b.attn1.processor.attention is fp8_attention.attention for b in expert.blocks)
        assert [b.attn2.processor for b in expert.blocks] == cross_attention
        with pytest.raises(ValueError, match="self-attention only"):
            expert.blocks[0].attn1.processor(expert.blocks[0].attn1, torch.zeros(1, 4, 24), torch.zeros(1, 4, 24))
    finally:
        expert.set_attn_processor(cross_attention[0].__class__())


@torch.no_grad()
def test_rope_is_diffusers_interleaved_pairs():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 40, 4, 16) for _ in range(3))
    cos, sin = torch.randn(1, 40, 1, 16), torch.randn(1, 40, 1, 16)
    x1, x2 = q.unflatten(-1, (-1, 2)).unbind(-1)
    expected = torch.empty_like(q)
    expected[..., 0::2] = x1 * cos[..., 0::2] - x2 * sin[..., 1::2]
    expected[..., 1::2] = x1 * sin[..., 1::2] + x2 * cos[..., 0::2]
    assert torch.allclose(self_attention.rope(q, cos, sin), expected, atol=1e-6)


@torch.no_grad()
def test_fp8_attention_centres_k_so_an_offset_shared_by_every_key_costs_nothing():
    """An offset shared by every key leaves the softmax unchanged. fp8_attention centres K before its per-tensor
    FP8 scale, so the offset is gone before the rounding: the same result; uncentred, the offset would set the scale
    and the keys' own spread would round away (measured: 58% error against 6%)."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 40, 4, 16) for _ in range(3))
    exact = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
    plain = fp8_attention.attention(q, k, v)
    shifted = fp8_attention.attention(q, k + 20 * torch.randn(1, 1, 4, 16), v)
    assert _relative_error(plain, exact) < 0.1  # FP8 rounding of Q, K, V, P and O
    assert _relative_error(shifted, plain) < 1e-3


def test_quantize_per_tensor_round_trips_within_fp8_precision():
    x = torch.randn(2, 64, 4, 16) * 7.0
    x8, descale = fp8_attention.quantize_per_tensor(x)
    assert x8.dtype == torch.float8_e4m3fn and descale.shape == (1, 1, 1, 1)
    back = x8.float() * descale
    assert back.abs().max().item() == pytest.approx(x.abs().max().item(), rel=1e-6)  # amax maps to 448 exactly
    assert ((back - x).abs() <= x.abs() * 2**-4 + descale.item() * 2**-9).all()  # e4m3: 3 mantissa bits
