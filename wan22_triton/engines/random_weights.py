"""Benchmark seam: a component built from its checkpoint config alone, with random weights from a seed.

A configs-only checkpoint (no weight files) plus the manifest's `random_weights_seed` builds the component directly
on the model's device, in the serving dtype, with weights drawn from ``torch.manual_seed(seed)`` by the modules'
own initialisers. `random_component` is the one function that does it, and the benchmark's diffusers baseline calls
the same function with the same seeds (`component_seed`), so both sides hold bit-identical weights without writing
~70 GB of random safetensors. It mirrors ``from_pretrained(torch_dtype=...)``: parameters under a class's
``_keep_in_fp32_modules`` stay float32. Never used on the normal path.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import torch

# Seed of each component, offset from the benchmark's base seed (one per diffusers sub-folder).
SEED_OFFSETS = {"text_encoder": 1, "transformer": 2, "transformer_2": 3, "vae": 4}


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
