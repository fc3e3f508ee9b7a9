"""Where does a compiled BF16 A14B block spend its time? Kernel-time breakdown on a GPU, per Inductor mode.

A full-width A14B expert cut to `--layers` blocks (random weights, BF16), batch 2 (CFG) at 480x832x81 (32,760
tokens), compiled the way the served expert is (`compile_repeated_blocks(fullgraph=True)`, Inductor `--modes`),
with each self-attention kernel of `--attentions` (wan22_triton.options.Attention).
One profiled forward; CUDA kernel time summed into self-attention (flash/cuDNN SDPA kernels), GEMMs (cuBLAS,
CUTLASS or Triton matmul templates) and everything else; GEMM and attention TFLOP/s against their FLOPs, and the
BF16 matmul rate of the card.

    python -m perf.block_profile --modes default --attentions sdpa,flash_attn_4 \\
        --out perf/results/gpu/block_profile/attentions.json
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from perf.flops import block_flops
from perf.fp16_probe import A14B, a14b_blocks_480p
from perf.gpu_baseline import matmul_tflops
from wan22_triton.speed.fast_path import optimize_transformer
from wan22_triton.options import Attention, SpeedOptions, parse

TOKENS, TEXT = 32760, 512  # a14b_blocks_480p: 21 x 30 x 52 patches, 512 text tokens


def category(name: str) -> str:
    n = name.lower()
    if n.startswith("triton_") and not n.startswith("triton_tem"):  # Inductor's fused elementwise kernels, whose
        return "other"  # names list the ops they absorbed (a RoPE kernel next to the attention op says flash_attn)
    if any(k in n for k in ("flash", "fmha", "attention", "sdpa", "cudnn_generated_fort_native_sdpa")):
        return "attention"
    if any(k in n for k in ("gemm", "cutlass", "sm90_xmma", "nvjet", "matmul", "mm_", "triton_tem")):
        return "gemm"
    return "other"


def flops(layers: int) -> dict[str, float]:
    """GEMM and attention FLOPs of `layers` A14B blocks at batch 2 (CFG), a14b_blocks_480p's workload."""
    return {k: 2 * layers * v for k, v in block_flops(A14B, TOKENS, TEXT).items()}


def profile_mode(mode: str, attention: Attention, layers: int) -> dict:
    model, inputs = a14b_blocks_480p(layers, seed=0)
    optimize_transformer(model, SpeedOptions(attention=attention))
    model.compile_repeated_blocks(fullgraph=True, mode=None if mode == "default" else mode)
    with torch.inference_mode():
        t0 = time.perf_counter()
        model(**inputs)
        torch.cuda.synchronize()
        compile_s = time.perf_counter() - t0
        model(**inputs)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        model(**inputs)
        torch.cuda.synchronize()
        forward_s = time.perf_counter() - t0
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            model(**inputs)
            torch.cuda.synchronize()
    totals: dict[str, float] = {"attention": 0.0, "gemm": 0.0, "other": 0.0}
    kernels: dict[str, float] = {}
    for event in prof.key_averages():
        us = event.self_device_time_total
        if us <= 0:
            continue
        totals[category(event.key)] += us / 1e6
        kernels[event.key] = kernels.get(event.key, 0.0) + us / 1e6
    f = flops(layers)
    out = {
        "mode": mode, "attention": attention, "layers": layers, "compile_s": compile_s, "forward_s": forward_s,
        "kernel_s": totals,
        "tflops": {k: f[k] / totals[k] / 1e12 for k in f if totals[k]},
        "top_kernels": sorted(([k[:120], round(v, 4)] for k, v in kernels.items()), key=lambda kv: -kv[1])[:15],
    }
    print(json.dumps({k: v for k, v in out.items() if k != "top_kernels"}), flush=True)
    del model
    torch.cuda.empty_cache()
    torch._dynamo.reset()
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--modes", default="default", help="Inductor modes, e.g. default,max-autotune-no-cudagraphs")
    parser.add_argument("--attentions", default="sdpa", help="self-attention kernels, e.g. sdpa,flash_attn_4")
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    matmul = matmul_tflops("cuda")
    print(f"matmul 8192^3 bf16: {matmul:.0f} TFLOP/s", flush=True)
    result = {"device": torch.cuda.get_device_name(), "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
              "torch": torch.__version__, "matmul_bf16_tflops": matmul, "weights": "random",
              "modes": [profile_mode(m, a, args.layers) for m in args.modes.split(",")
                        for a in (parse(Attention, name) for name in args.attentions.split(","))]}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
