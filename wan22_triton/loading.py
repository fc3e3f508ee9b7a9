"""Load a component from its model's version folder (plain Python: Triton model instances and Ulysses workers)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from .engines import torch_dtype
from .manifest import Manifest


def load_component(manifest: Manifest, root: Path, model_class: Any, kind: str, folder: str,
                   device: str | torch.device) -> torch.nn.Module:
    """A diffusers/transformers module from `root/<folder>` in the manifest's precision on `device`; with the
    benchmark seam `random_weights_seed`, built from the config with random weights."""
    dtype = torch_dtype(manifest.precision)
    seed = manifest.random_weights_seed
    if seed is not None:
        from .random_weights import random_component

        return random_component(kind, root / folder, seed, dtype, device)
    model = model_class.from_pretrained(root / folder, torch_dtype=dtype, use_safetensors=True)
    return model.to(device).eval()


def build_expert(manifest: Manifest, root: Path, device: str | torch.device, sequence_group: Any = None,
                 log: Callable[[str], None] = print) -> torch.nn.Module:
    """The torch engine's expert with the manifest's speed options; with `sequence_group` (a process group), one
    rank of a Ulysses forward over it (wan22_triton.sequence_parallel)."""
    from diffusers import WanTransformer3DModel

    from . import fast_path

    model = load_component(manifest, root, WanTransformer3DModel, "transformer", "transformer", device)
    return fast_path.optimize_transformer(model, manifest.speed, log=log, sequence_group=sequence_group)
