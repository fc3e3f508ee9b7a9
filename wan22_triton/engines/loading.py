"""The torch engine's loading: a component from its model's version folder in its precision (plain Python: Triton
model instances and Ulysses workers)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from wan22_triton.components.expert import ENCODER_HIDDEN_STATES, HIDDEN_STATES, INPUTS, TIMESTEP
from wan22_triton.operations import events
from wan22_triton.manifest import Manifest
from wan22_triton.options import Precision, parse

TORCH_DTYPES = {Precision.FP32: torch.float32, Precision.FP16: torch.float16, Precision.BF16: torch.bfloat16}


def torch_dtype(precision: Precision) -> torch.dtype:
    return TORCH_DTYPES[parse(Precision, precision)]


def load_component(manifest: Manifest, root: Path, model_class: Any, kind: str, folder: str,
                   device: str | torch.device) -> torch.nn.Module:
    """A diffusers/transformers module from `root/<folder>` in the manifest's precision on `device`; with the
    benchmark seam `random_weights_seed`, built from the config with random weights."""
    if not (root / folder).is_dir():  # else diffusers takes the path for a Hub repository name
        raise FileNotFoundError(f"{root / folder} is missing: the repository holds configs but no weights (as the "
                                "checked-in model_repository/ does); export it first: `make export`")
    dtype = torch_dtype(manifest.precision)
    seed = manifest.random_weights_seed
    if seed is not None:
        from wan22_triton.engines.random_weights import random_component

        return random_component(kind, root / folder, seed, dtype, device)
    model = model_class.from_pretrained(root / folder, torch_dtype=dtype, use_safetensors=True)
    return model.to(device).eval()


def build_expert(manifest: Manifest, root: Path, device: str | torch.device, sequence_group: Any = None,
                 log: Callable[[str], None] = print, load_artifacts: bool = True) -> torch.nn.Module:
    """The torch engine's expert with the manifest's speed options; with `sequence_group` (a process group), one
    rank of a Ulysses forward over it (wan22_triton.parallel.sequence_parallel). With compile points, the compile artifacts
    in `root` are loaded when they fit this machine (`load_artifacts`: False while the export makes them)."""
    from diffusers import WanTransformer3DModel

    from wan22_triton.speed import fast_path
    from wan22_triton.speed.compile_cache import CompileCache

    model = load_component(manifest, root, WanTransformer3DModel, "transformer", "transformer", device)
    cache = CompileCache.of_expert(manifest, root, device, load=load_artifacts)
    return fast_path.optimize_transformer(model, manifest.speed, log=log, sequence_group=sequence_group,
                                          ulysses_chunks=manifest.parallel.ulysses_chunks, compile_cache=cache)


def expert_forward(model: Any, inputs: Mapping[str, Any], device: str | torch.device,
                   dtype: torch.dtype, first_block_only: bool = False) -> torch.Tensor:
    """The noise prediction (float32, on `device`) for the expert contract's inputs (components.expert),
    as the served expert runs them; the export's compile calls the same, so that its graphs are the served ones.
    `first_block_only`: a warm-up's forward (components.expert.WARMUP_INPUT) through the first block alone, whose
    compiled graph and kernels the other blocks share; its output is not the expert's."""
    t = {name: torch.as_tensor(inputs[name]).to(device) for name in INPUTS}
    blocks = model.blocks if first_block_only else None
    if blocks is not None:
        model.blocks = torch.nn.ModuleList(blocks[:1])
    try:
        return model(
            hidden_states=t[HIDDEN_STATES].to(dtype),
            timestep=t[TIMESTEP],
            encoder_hidden_states=t[ENCODER_HIDDEN_STATES].to(dtype),
            return_dict=False,
        )[0].float()
    finally:
        if blocks is not None:
            model.blocks = blocks


def release_workspace(model: str, device: str | torch.device, after: str, **fields: Any) -> tuple[int, int]:
    """Hand the PyTorch cache's unused blocks on `device` back to the driver: what the process once used (weights
    replaced by quantization, a call's activations) stops counting against the GPU; weights and live tensors stay.
    `after`: "load" or "call". Emits `workspace_released` (on a CPU too: 0 bytes, the release ran); returns the
    bytes reserved before and after."""
    device = torch.device(device)
    t0 = time.perf_counter()
    before = after_bytes = 0
    if device.type == "cuda":
        before = torch.cuda.memory_reserved(device)
        with torch.cuda.device(device):  # empty_cache acts on the current device
            torch.cuda.empty_cache()
        after_bytes = torch.cuda.memory_reserved(device)
    events.emit("workspace_released", model=model, device=str(device), after=after, reserved_before=before,
                reserved_after=after_bytes, seconds=time.perf_counter() - t0, **fields)
    return before, after_bytes
