"""Write tiny, random (seeded) rank-4 LoRA adapters for the tiny checkpoint, in the layouts diffusers loads for Wan.

Real Wan2.2 LoRAs (Wan2.2-Lightning, community styles) are hundreds of MB per expert and cannot be downloaded here;
tests need adapters with the same key layouts that fit the tiny experts. Every Linear layer of the transformer blocks
gets a rank-4 pair, its shapes read from the checkpoint's own expert (built on the meta device from its config), the
values from fixed seeds, so the files are byte-identical across runs:

* `style.safetensors`: diffusers' layout (`transformer.blocks.N.attn1.to_q.lora_A.weight`) with the adapter
  metadata diffusers' `save_lora_weights` stores (`lora_alpha` = 2 x rank, so peft scales it by 2);
* `high_noise.safetensors`: the original-Wan / community layout (`diffusion_model.blocks.N.self_attn.q.lora_down.weight`,
  `lora_up`, `alpha`), the one Wan2.2-Lightning and ComfyUI trainers write; diffusers converts it on load;
* `low_noise.safetensors`: diffusers' layout without metadata, for the low-noise expert (with `high_noise`: a pair).

    python -m devtools.tiny_lora --checkpoint checkpoints/tiny-wan2.2-t2v-a14b --out checkpoints/tiny-loras

`write_random_lora` makes the same kind of file for any transformer config at any rank (the LoRA GPU benchmark's
rank-64 A14B pair, perf/lora_benchmark.py): the community layout on every block's attention and FFN Linears.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

RANK = 4
# diffusers' block module -> the original Wan name community files use after `diffusion_model.blocks.N.`; diffusers'
# `_convert_non_diffusers_wan_lora_to_diffusers` maps these back.
WAN_ORIGINAL_NAMES = {
    "attn1.to_q": "self_attn.q", "attn1.to_k": "self_attn.k", "attn1.to_v": "self_attn.v", "attn1.to_out.0": "self_attn.o",
    "attn2.to_q": "cross_attn.q", "attn2.to_k": "cross_attn.k", "attn2.to_v": "cross_attn.v", "attn2.to_out.0": "cross_attn.o",
    "ffn.net.0.proj": "ffn.0", "ffn.net.2": "ffn.2",
}
# Delta weights this size against the blocks' own change the tiny model's video visibly, without saturating it.
DELTA = 0.3


def config_linears(config: dict) -> dict[str, tuple[int, int]]:
    """{module name: (in_features, out_features)} of the transformer blocks' Linear layers of an expert with this
    WanTransformer3DModel config (built on the meta device: no memory, any size)."""
    from diffusers.models.transformers.transformer_wan import WanTransformer3DModel

    with torch.device("meta"):
        model = WanTransformer3DModel.from_config(config)
    return {name: (m.in_features, m.out_features) for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and name.startswith("blocks.")}


def block_linears(checkpoint: Path, folder: str) -> dict[str, tuple[int, int]]:
    """`config_linears` of one expert of a checkpoint."""
    from diffusers.models.transformers.transformer_wan import WanTransformer3DModel

    return config_linears(WanTransformer3DModel.load_config(checkpoint / folder))


def lora_pairs(linears: dict[str, tuple[int, int]], seed: int, rank: int = RANK, delta: float = DELTA,
               dtype: torch.dtype = torch.float32) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{module: (down [rank, in], up [out, rank])} from `seed`, in `dtype`. The delta B·A·x has about `delta` times
    the input's scale whatever the rank (down ~ 1/sqrt(in), up ~ delta/sqrt(rank))."""
    generator = torch.Generator().manual_seed(seed)
    pairs = {}
    for name, (fan_in, fan_out) in sorted(linears.items()):
        down = torch.randn(rank, fan_in, generator=generator) / fan_in**0.5
        up = torch.randn(fan_out, rank, generator=generator) * delta / rank**0.5
        pairs[name] = (down.to(dtype), up.to(dtype))  # cast per layer: a rank-64 A14B file in float32 is 1.2 GB
    return pairs


def write_diffusers_layout(path: Path, pairs: dict, lora_alpha: int | None = None) -> Path:
    """diffusers' layout (`WanPipeline.save_lora_weights`'); `lora_alpha`: with the adapter metadata that writer stores
    (peft LoraConfig fields under the component prefix). Written here with one metadata key, not by diffusers'
    writer, whose second key (`format`) lands in the header in a random order: the file would not be byte-stable."""
    from diffusers.loaders.lora_base import LORA_ADAPTER_METADATA_KEY
    from safetensors.torch import save_file

    tensors = {}
    for name, (down, up) in pairs.items():
        tensors[f"transformer.{name}.lora_A.weight"], tensors[f"transformer.{name}.lora_B.weight"] = down, up
    metadata = None
    if lora_alpha is not None:
        config = {"r": RANK, "lora_alpha": lora_alpha, "target_modules": sorted(pairs)}
        metadata = {LORA_ADAPTER_METADATA_KEY: json.dumps({f"transformer.{k}": v for k, v in config.items()},
                                                          sort_keys=True)}
    save_file(tensors, path, metadata=metadata)
    return path


def write_community_layout(path: Path, pairs: dict, alpha: float) -> Path:
    """`diffusion_model.blocks.N.<wan name>.lora_down/lora_up.weight` and `.alpha` (scale alpha / rank)."""
    from safetensors.torch import save_file

    tensors = {}
    for name, (down, up) in pairs.items():
        block, module = name.split(".", 2)[1], name.split(".", 2)[2]
        key = f"diffusion_model.blocks.{block}.{WAN_ORIGINAL_NAMES[module]}"
        tensors[f"{key}.lora_down.weight"], tensors[f"{key}.lora_up.weight"] = down, up
        tensors[f"{key}.alpha"] = torch.tensor(alpha)
    save_file(tensors, path)
    return path


def write_random_lora(config: dict, path: str | Path, rank: int, seed: int, delta: float = DELTA,
                      dtype: torch.dtype = torch.bfloat16) -> Path:
    """A random LoRA for the expert of `config` in the layout Wan2.2-Lightning ships (`diffusion_model.blocks.N.
    {self_attn,cross_attn}.{q,k,v,o}` and `ffn.{0,2}`, `lora_down`/`lora_up`, `alpha` = rank: peft scale 1)."""
    linears = {k: v for k, v in config_linears(config).items() if k.split(".", 2)[2] in WAN_ORIGINAL_NAMES}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_community_layout(path, lora_pairs(linears, seed, rank, delta, dtype), alpha=float(rank))


def write_loras(checkpoint: str | Path, out: str | Path) -> dict[str, Path]:
    """The three files (see module docstring) under `out`; returns {stem: path}."""
    checkpoint, out = Path(checkpoint), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    high, low = block_linears(checkpoint, "transformer"), block_linears(checkpoint, "transformer_2")
    paths = {
        "style": write_diffusers_layout(out / "style.safetensors", lora_pairs(high, seed=10), lora_alpha=2 * RANK),
        "high_noise": write_community_layout(out / "high_noise.safetensors", lora_pairs(high, seed=11), alpha=RANK / 2),
        "low_noise": write_diffusers_layout(out / "low_noise.safetensors", lora_pairs(low, seed=12)),
    }
    for path in paths.values():
        path.chmod(0o644)
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="checkpoints/tiny-wan2.2-t2v-a14b", help="the tiny checkpoint")
    parser.add_argument("--out", default="checkpoints/tiny-loras", help="output directory")
    args = parser.parse_args(argv)
    for stem, path in write_loras(args.checkpoint, args.out).items():
        print(f"wrote {path} ({path.stat().st_size / 1e3:.1f} kB)")


if __name__ == "__main__":
    main()
