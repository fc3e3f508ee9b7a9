"""Which self-attention kernel for Wan2.2 A14B at 480p? Speed and error of each, on a GPU (Hopper or newer).

1. Kernel: self-attention at the A14B shape (batch 2 for CFG, 32,760 tokens, 40 heads of 128) with random
   inputs: PyTorch SDPA in BF16 (its default backend, cuDNN on Hopper), FlashAttention-4 in BF16
   (`wan22::flash_attn`, where flash-attn-4 is installed), `wan22::sdpa_fp8` alone and with its per-tensor
   quantization; TFLOP/s (4 * B * H * S^2 * D per call); relative L2 error of each against float32 attention
   computed for a sample of queries.
2. Model: a full-width A14B expert cut to `--layers` blocks (random weights, BF16, eager) with diffusers'
   processor and with `SelfAttnProcessor` on each kernel: seconds per forward and cosine / relative L2 of the
   noise prediction against diffusers'.

    python -m perf.attention_probe --out perf/results/gpu/attention_probe/results.json
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform
import time

import torch

from perf.fp16_probe import a14b_blocks_480p
from wan22_triton.speed import flash_attention, fp8_attention, self_attention


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def timed(fn, repeats: int) -> float:
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / repeats


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def flash_available() -> bool:
    try:
        flash_attention.import_flash_attn()
    except ImportError as e:
        print(f"FlashAttention-4 not measured: {e}", flush=True)
        return False
    return True


def kernel_probe(batch: int, tokens: int, heads: int, head_dim: int, sample: int, repeats: int) -> dict:
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(batch, tokens, heads, head_dim, generator=g, device="cuda", dtype=torch.bfloat16)
               for _ in range(3))
    scale = head_dim ** -0.5

    def bf16():
        return torch.nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)

    q8, dq = fp8_attention.quantize_per_tensor(q)
    k8, dk = fp8_attention.quantize_per_tensor(k)
    v8, dv = fp8_attention.quantize_per_tensor(v)

    def fp8_kernel():
        return torch.ops.wan22.sdpa_fp8(q8, k8, v8, dq, dk, dv, 1.0 / dv, scale).float() * dv

    def fp8_with_quantization():  # what the processor runs: K centring, quantization, kernel, dequantization
        return fp8_attention.attention(q, k, v).to(torch.bfloat16)

    def flash_bf16():
        return flash_attention.attention(q, k, v)

    rows = torch.randperm(tokens, generator=torch.Generator().manual_seed(1))[:sample].cuda()
    s = torch.einsum("bshd,bthd->bhst", q[:, rows].float(), k.float()) * scale
    exact = torch.einsum("bhst,bthd->bshd", s.softmax(dim=-1), v.float())
    del s
    flops = 4.0 * batch * heads * tokens * tokens * head_dim
    out = {"shape_bshd": [batch, tokens, heads, head_dim], "sampled_queries": sample}
    kernels = [("bf16_sdpa", bf16), ("fp8_cudnn_kernel", fp8_kernel), ("fp8_cudnn_with_quantization",
                                                                         fp8_with_quantization)]
    if flash_available():
        kernels.insert(1, ("bf16_flash_attn_4", flash_bf16))
    for name, fn in kernels:
        seconds = timed(fn, repeats)
        result = fn()
        out[name] = {"ms": seconds * 1e3, "tflops": flops / seconds / 1e12,
                     "rel_l2_vs_fp32": relative_error(result[:, rows], exact), "finite": bool(result.isfinite().all())}
        print(name, out[name], flush=True)
    return out


def model_probe(layers: int, repeats: int, seed: int) -> dict:
    from diffusers.models.transformers.transformer_wan import WanAttnProcessor

    model, inputs = a14b_blocks_480p(layers, seed)
    out = {"layers": layers, "width": "A14B (dim 5120, 40 heads, ffn 13824)", "latents": [2, 16, 21, 60, 104]}
    kernels = {"fp8_attention": fp8_attention.attention}
    if flash_available():
        kernels["flash_attn_4"] = flash_attention.attention
    with torch.inference_mode():
        reference = model(**inputs)[0].float()
        out["bf16_eager_s"] = timed(lambda: model(**inputs), repeats)
        for name, kernel in kernels.items():
            self_attention.set_self_attention(model, kernel)
            pred = model(**inputs)[0].float()
            out[name] = {"eager_s": timed(lambda: model(**inputs), repeats),
                         "noise_pred_cosine": torch.nn.functional.cosine_similarity(
                             pred.flatten(), reference.flatten(), dim=0).item(),
                         "noise_pred_rel_l2": relative_error(pred, reference)}
            out[name]["speedup"] = out["bf16_eager_s"] / out[name]["eager_s"]
            model.set_attn_processor(WanAttnProcessor())
    print(out, flush=True)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=32760)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--sample", type=int, default=256, help="queries compared against float32 attention")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)

    cudnn = fp8_attention.import_cudnn_frontend()
    result = {
        "device": torch.cuda.get_device_name(), "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "torch": torch.__version__, "cudnn_backend": cudnn.backend_version(), "python": platform.python_version(),
        "flash_attn_4": package_version("flash-attn-4"), "nvidia_cutlass_dsl": package_version("nvidia-cutlass-dsl"),
        "inputs": "random (normal); model weights random",
        "kernel": kernel_probe(2, args.tokens, 40, 128, args.sample, args.repeats),
    }
    if args.layers:
        result["model"] = model_probe(args.layers, max(2, args.repeats // 3), seed=0)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
