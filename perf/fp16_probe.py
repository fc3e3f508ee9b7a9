"""Which parts of a Wan expert must stay FP32 in an FP16 plan? A measurement, on a GPU.

A full-width A14B expert (dim 5120, 40 heads, FFN 13824; `--layers` of its 40 blocks) at 480x832x81 (32,760
tokens), random weights, run in FP32 (reference, TF32 off) and in:

* `bf16`           - diffusers' policy: weights BF16, its `_keep_in_fp32_modules` and `.float()` islands FP32;
* `fp16`           - the same policy in FP16 (the residual stream is stored in FP16 between blocks);
* `fp16_plan`      - our plan's policy (export/tensorrt_build.FP32_KEEP): GEMMs and attention in FP16, norms,
                     modulation, RoPE and the residual stream FP32 (emulated with FP32 weights under
                     torch.autocast(float16), which runs exactly the matmuls and attention in FP16);
* `fp16_naive`     - everything FP16 (`model.half()`), the plain conversion.

Real checkpoints carry a residual stream far larger than random weights make: `--scales` grows it to real-scale
magnitudes, either by multiplying every block's output projections (`--grow weights`: the GEMM outputs grow too)
or its residual gates (`--grow gates`: only the residual grows); the largest |block output| of the FP32 run is
reported with each scale. Reported per variant: relative L2 error and cosine of the output vs
FP32, and the number of non-finite values in the output and in any block's output.

    python -m perf.fp16_probe --layers 4 --scales 1,16,64 --out perf/results/gpu/fp16_probe/weights.json
    python -m perf.fp16_probe --device cpu --tiny     # a quick check of the script itself
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import torch

from wan22_triton.components.expert import ENCODER_HIDDEN_STATES, HIDDEN_STATES, TIMESTEP

A14B = dict(num_attention_heads=40, attention_head_dim=128, ffn_dim=13824, in_channels=16, out_channels=16,
            text_dim=4096, freq_dim=256, patch_size=(1, 2, 2), qk_norm="rms_norm_across_heads", cross_attn_norm=True,
            eps=1e-6, rope_max_seq_len=1024)
TINY = dict(A14B, num_attention_heads=2, attention_head_dim=24, ffn_dim=64, text_dim=32)


def a14b_blocks_480p(layers: int, seed: int = 0) -> tuple[torch.nn.Module, dict]:
    """A full-width A14B expert cut to `layers` blocks (random weights, BF16, on the GPU) and one CFG batch of
    inputs at 480x832x81 (latents 2x16x21x60x104: 32,760 tokens; 512 text tokens): the GPU probes' workload."""
    from diffusers.models.transformers.transformer_wan import WanTransformer3DModel

    torch.manual_seed(seed)
    with torch.device("cuda"):
        model = WanTransformer3DModel(**A14B, num_layers=layers).to(torch.bfloat16).eval()
    g = torch.Generator(device="cuda").manual_seed(seed)
    inputs = dict(
        hidden_states=torch.randn(2, 16, 21, 60, 104, generator=g, device="cuda", dtype=torch.bfloat16),
        timestep=torch.tensor([999.0, 999.0], device="cuda"),
        encoder_hidden_states=torch.randn(2, 512, A14B["text_dim"], generator=g, device="cuda", dtype=torch.bfloat16),
        return_dict=False,
    )
    return model, inputs


def build(config: dict, layers: int, scale: float, device: str, seed: int, grow: str):
    """grow="weights": scale the blocks' output projections (large GEMM outputs and a large residual);
    grow="gates": scale the blocks' residual gates (a large residual, GEMM outputs unchanged)."""
    from diffusers.models.transformers.transformer_wan import WanTransformer3DModel

    torch.manual_seed(seed)
    with torch.device(device):
        model = WanTransformer3DModel(**config, num_layers=layers).float().eval()
    with torch.no_grad():
        for block in model.blocks:  # grow the residual stream to real-checkpoint magnitudes
            if grow == "weights":
                block.attn1.to_out[0].weight.mul_(scale)
                block.ffn.net[2].weight.mul_(scale)
            else:  # scale_shift_table rows: shift, scale, gate (attention), then shift, scale, gate (FFN)
                block.scale_shift_table[:, 2].mul_(scale)
                block.scale_shift_table[:, 5].mul_(scale)
    return model


def with_policy(model, dtype: torch.dtype):
    """diffusers' from_pretrained(torch_dtype=dtype): cast, keeping `_keep_in_fp32_modules` in FP32."""
    out = copy.deepcopy(model).to(dtype)
    keep = getattr(out, "_keep_in_fp32_modules", None) or []
    for name, param in out.named_parameters():
        if any(k in name.split(".") for k in keep):
            param.data = param.data.float()
    return out


def run(model, inputs: dict, autocast: torch.dtype | None = None) -> tuple[torch.Tensor, int, float]:
    """(output, non-finite values in any block's output, max |block output|)."""
    stats = {"nonfinite": 0, "max": 0.0}

    def hook(_module, _args, out):
        x = out.float()
        stats["nonfinite"] += int((~torch.isfinite(x)).sum())
        stats["max"] = max(stats["max"], float(x[torch.isfinite(x)].abs().max()) if torch.isfinite(x).any() else 0.0)

    handles = [b.register_forward_hook(hook) for b in model.blocks]
    if autocast is not None:  # the plan keeps the residual stream FP32 from the patch embedding on (autocast would
        # hand the Conv3d's FP16 output to the blocks, and diffusers' `.type_as(hidden_states)` keeps it FP16)
        handles.append(model.patch_embedding.register_forward_hook(lambda _m, _a, out: out.float()))
    dtype = model.patch_embedding.weight.dtype
    args = {k: (v.to(dtype) if v.is_floating_point() and k != TIMESTEP else v) for k, v in inputs.items()}
    try:
        with torch.no_grad(), torch.autocast(inputs[HIDDEN_STATES].device.type, dtype=autocast, enabled=autocast is not None):
            out = model(**args, return_dict=False)[0].float()
    finally:
        for h in handles:
            h.remove()
    return out, stats["nonfinite"], stats["max"]


def compare(out: torch.Tensor, ref: torch.Tensor) -> dict:
    finite = torch.isfinite(out)
    o, r = torch.where(finite, out, 0).double().flatten(), ref.double().flatten()
    return {
        "rel_l2": float((o - r).norm() / r.norm()),
        "cosine": float(torch.nn.functional.cosine_similarity(o, r, dim=0)),
        "nonfinite_output": int((~finite).sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--scales", default="1,16,64")
    parser.add_argument("--grow", choices=("weights", "gates"), default="weights")
    parser.add_argument("--size", default="81x480x832", help="frames x height x width of the video")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny widths (checks the script, not the question)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False  # a true FP32 reference
    torch.backends.cudnn.allow_tf32 = False
    frames, height, width = (int(v) for v in args.size.split("x"))
    config = TINY if args.tiny else A14B
    g = torch.Generator(args.device).manual_seed(0)
    inputs = {
        HIDDEN_STATES: torch.randn(1, 16, (frames - 1) // 4 + 1, height // 8, width // 8, generator=g, device=args.device),
        TIMESTEP: torch.tensor([900.0], device=args.device),
        ENCODER_HIDDEN_STATES: 0.2 * torch.randn(1, 512, config["text_dim"], generator=g, device=args.device),
    }
    tokens = inputs[HIDDEN_STATES][0, 0].numel() // 4
    rows = []
    for scale in (float(s) for s in args.scales.split(",")):
        model = build(config, args.layers, scale, args.device, seed=1, grow=args.grow)
        t0 = time.perf_counter()
        ref, ref_nonfinite, ref_max = run(model, inputs)
        variants = {
            "bf16": lambda: run(with_policy(model, torch.bfloat16), inputs),
            "fp16": lambda: run(with_policy(model, torch.float16), inputs),
            "fp16_plan": lambda: run(model, inputs, autocast=torch.float16),
            "fp16_naive": lambda: run(copy.deepcopy(model).half(), inputs),
        }
        for name, fn in variants.items():
            out, nonfinite_blocks, block_max = fn()
            row = {"grow": args.grow, "scale": scale, "variant": name, "fp32_max_abs_residual": ref_max, **compare(out, ref),
                   "nonfinite_block_outputs": nonfinite_blocks, "max_abs_block_output": block_max}
            rows.append(row)
            print(f"scale {scale:>5g} max|residual| {ref_max:10.1f}  {name:<10} rel_l2 {row['rel_l2']:.2e}  "
                  f"cos {row['cosine']:.6f}  non-finite out {row['nonfinite_output']:>9}  blocks {nonfinite_blocks:>9}")
        print(f"  (scale {scale:g}: {time.perf_counter() - t0:.1f}s, fp32 reference non-finite {ref_nonfinite})")
        model = None  # free it before the next scale
        if args.device == "cuda":
            torch.cuda.empty_cache()
    result = {
        "what": "full-width Wan2.2 A14B expert blocks, random weights, FP16/BF16 vs FP32 (TF32 off)",
        "layers": args.layers, "tokens": tokens, "size": args.size, "tiny": args.tiny,
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": rows,
    }
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
