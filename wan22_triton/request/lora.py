"""LoRA adapters of the experts: read by diffusers' own Wan loader, checked against the expert, selected per call.

**Unfused, chosen per call.** Each adapter stays a low-rank pair beside the base weights: peft's LoRA layers,
injected by diffusers' `WanLoraLoaderMixin.load_lora_into_transformer`, the path `WanPipeline.load_lora_weights`
takes. Every expert call activates the adapter its request asked for with the request's scale (diffusers'
`set_adapters`), or none (`disable_lora`: peft then runs the base layer alone, so a request without a LoRA gets
the same bits as a repository without adapters). The orchestrators' steps of different requests interleave on one
expert instance, so the adapter belongs to the call, not to the model between calls. Fusing (merge B·A·scale into
the weights, unmerge after) would rewrite every adapted weight of a 14B expert at each switch, and unmerging does not
restore the weights bit-exactly; unfused costs one rank-r GEMM pair per adapted layer and, when the selection
changes, a Python loop over the adapted layers (`ExpertAdapters.select`, skipped when it does not change).

**FP8 tier** (`--quantization fp8_rowwise`, wan22_triton.speed.fast_path): the adapters are injected first, then torchao
quantizes the base layers only (fast_path leaves peft's `lora_A`/`lora_B` alone): FP8 GEMMs for the 14B weights,
a BF16 low-rank path beside them, scaled per call like the BF16 tier. Merging before quantizing would bake one
adapter and one scale into the FP8 weights, one repository per LoRA. `--compile regional` is refused with LoRAs
(export/options.py): a switch changes the attributes the compiled block was guarded on, so each (adapter, scale)
would recompile it; peft's compiled hotswap (fixed target rank, scales as tensors) is the way there, not done.

Where the files live: the export copies each expert's file, as given and after checking it, to
`<expert>/1/loras/<name>.safetensors`; the manifest's `loras` lists the names.
"""

from __future__ import annotations

import math
import re
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from wan22_triton.components.expert import LORA, LORA_SCALE  # which adapter a call uses, at which scale
from wan22_triton.operations import events
from wan22_triton.errors import RequestError
from wan22_triton.request.lora_names import LoraChoice, name_problem  # noqa: F401 (the serving side's, from here)

LORA_FOLDER = "loras"  # in each expert's version folder
LORA_SUFFIX = ".safetensors"  # safetensors only: nothing pickled is ever loaded
PREFIX = "transformer."  # the component prefix of diffusers' Wan LoRA layout
MAX_LORA_WEIGHT = 1e4  # trained adapters' weights are O(1): far above, a corrupt or mis-scaled file
MAX_LORA_CONFIG_VALUE = 1e4  # rank and alpha
_KEY = re.compile(r"(?P<module>.+)\.(?P<part>lora_A\.weight|lora_B\.weight|lora_B\.bias)")

def lora_path(version: Path, name: str) -> Path:
    return version / LORA_FOLDER / f"{name}{LORA_SUFFIX}"


def read_lora(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """(state dict in diffusers' layout, adapter metadata) as diffusers reads a Wan LoRA file: diffusers' layout as
    is, community layouts (`diffusion_model.*`, musubi's `lora_unet_*`) converted by diffusers' converters."""
    from diffusers.loaders import WanLoraLoaderMixin

    path = Path(path)
    if path.suffix != LORA_SUFFIX:
        raise ValueError(f"{path}: LoRA files must be {LORA_SUFFIX} (pickled formats are not loaded)")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such LoRA file")
    try:
        return WanLoraLoaderMixin.lora_state_dict(str(path), use_safetensors=True, local_files_only=True,
                                                  return_lora_metadata=True)
    except Exception as e:  # a converter's KeyError or ValueError says little without the file
        raise ValueError(f"{path}: not a Wan LoRA layout diffusers can read ({type(e).__name__}: {e})") from None


def check_fits(state_dict: Mapping[str, torch.Tensor], model: torch.nn.Module, what: str) -> None:
    """ValueError naming `what`, the key and the shapes unless every tensor is the `lora_A` / `lora_B` weight (or
    `lora_B` bias) of a Linear layer of `model` with that layer's features and one rank per pair."""
    if not state_dict:
        raise ValueError(f"{what}: no LoRA weights")
    modules = dict(model.named_modules())
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state_dict.items():
        match = _KEY.fullmatch(key.removeprefix(PREFIX)) if key.startswith(PREFIX) else None
        if match is None:
            raise ValueError(f"{what}: {key!r} is not a LoRA weight of the transformer (expected "
                             f"'{PREFIX}<module>.lora_A.weight' / '.lora_B.weight' after diffusers' conversion)")
        pairs.setdefault(match["module"], {})[match["part"]] = tensor
    for name, parts in sorted(pairs.items()):
        module = modules.get(name)
        layer = getattr(module, "get_base_layer", lambda: module)()  # peft wraps the layers it adapts
        if not isinstance(layer, torch.nn.Linear):
            found = "no such module" if module is None else f"a {type(layer).__name__}"
            raise ValueError(f"{what}: {PREFIX}{name} targets {found} in the expert, not a Linear layer")
        down, up, bias = parts.get("lora_A.weight"), parts.get("lora_B.weight"), parts.get("lora_B.bias")
        if down is None or up is None:
            raise ValueError(f"{what}: {PREFIX}{name} has {sorted(parts)} but needs both lora_A and lora_B weights")
        want: dict[str, tuple[int, ...]] = {"lora_A.weight": (down.shape[0], layer.in_features),
                                            "lora_B.weight": (layer.out_features, down.shape[0])}
        if bias is not None:
            want["lora_B.bias"] = (layer.out_features,)
        for part, shape in want.items():
            if tuple(parts[part].shape) != shape:
                raise ValueError(f"{what}: {PREFIX}{name}.{part} has shape {list(parts[part].shape)}, the expert's "
                                 f"Linear({layer.in_features}, {layer.out_features}) needs {list(shape)}")


def check_values(state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, Any] | None, what: str) -> None:
    """ValueError naming `what` and the key unless every weight is finite and within +-MAX_LORA_WEIGHT (NaN or huge
    weights, or a huge alpha folded into them, serve a constant video), and the adapter's rank and alpha in its
    metadata, where given, are finite positive numbers within MAX_LORA_CONFIG_VALUE."""
    for key, tensor in state_dict.items():
        values = tensor.detach().float()
        if not bool(torch.isfinite(values).all()):
            raise ValueError(f"{what}: {key!r} holds NaN or infinite values")
        largest = float(values.abs().max()) if values.numel() else 0.0
        if largest > MAX_LORA_WEIGHT:
            raise ValueError(f"{what}: {key!r} holds {largest:.3g}, more than a LoRA weight's bound "
                             f"{MAX_LORA_WEIGHT:g} (an alpha or scale folded in wrongly?)")
    config = {key.removeprefix(PREFIX): value for key, value in (metadata or {}).items()}  # diffusers' keys
    for field in ("r", "lora_alpha"):
        for where, value in _config_values(config, field):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or not 0 < value <= MAX_LORA_CONFIG_VALUE:
                raise ValueError(f"{what}: metadata {where} is {value!r}; it must be a number in "
                                 f"(0, {MAX_LORA_CONFIG_VALUE:g}]")


def _config_values(metadata: Mapping[str, Any], field: str) -> list[tuple[str, Any]]:
    """`field` of peft's LoraConfig in the metadata, and its per-module patterns (rank_pattern, alpha_pattern)."""
    found = [(field, metadata[field])] if field in metadata else []
    pattern = metadata.get({"r": "rank_pattern", "lora_alpha": "alpha_pattern"}[field]) or {}
    return found + [(f"{field} of {module}", v) for module, v in pattern.items()]


def load_adapter(model: torch.nn.Module, path: Path, name: str) -> None:
    """One LoRA file into `model` as adapter `name`, the way `WanPipeline.load_lora_weights` loads it; ValueError
    first if it does not fit."""
    from diffusers.loaders import WanLoraLoaderMixin

    state_dict, metadata = read_lora(path)
    check_fits(state_dict, model, f"LoRA {name!r} ({path})")
    check_values(state_dict, metadata, f"LoRA {name!r} ({path})")
    with warnings.catch_warnings():  # peft warns at every adapter after the first; several are the point here
        warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
        WanLoraLoaderMixin.load_lora_into_transformer(state_dict, transformer=model, adapter_name=name,
                                                      metadata=metadata)


def requested(inputs: dict[str, Any], max_scale: float) -> LoraChoice | None:
    """The call's adapter from the experts' optional inputs (removed from `inputs`): [B, 1] name and scale, every
    batch row the same, the scale finite and within +-`max_scale` (the limit the orchestrator checks, enforced
    here too for direct callers); no name, or an empty one: the base model."""
    names, scales = inputs.pop(LORA, None), inputs.pop(LORA_SCALE, None)
    if names is None:
        return None
    values = {v if isinstance(v, str) else bytes(v).decode("utf-8", "replace") for v in np.asarray(names).reshape(-1)}
    if len(values) != 1:
        raise RequestError(f"'{LORA}' must name one adapter for the whole batch, got {sorted(values)}")
    name = values.pop()
    if not name:
        return None
    scale = 1.0 if scales is None else float(scales.reshape(-1)[0])  # numpy, or a torch tensor from a GPU caller
    if not np.isfinite(scale) or abs(scale) > max_scale:
        raise RequestError(f"'{LORA_SCALE}' must be a finite number within [-{max_scale:g}, {max_scale:g}], "
                           f"got {scale}")
    return name, scale


class ExpertAdapters:
    """The adapters loaded into one expert and the one active for the current call (see module docstring)."""

    def __init__(self, model: Any, names: tuple[str, ...], label: str = ""):  # a diffusers model (peft methods)
        self.model, self.names = model, frozenset(names)
        self.label = label  # the served model's name, for the events
        self._active: LoraChoice | None = None

    @classmethod
    def load(cls, model: Any, version: Path, names: tuple[str, ...],
             log: Callable[[str], None] = print) -> ExpertAdapters:
        """Every named adapter from `version`/loras/, checked against `model`; then the base model is active."""
        label = Path(version).parent.name  # <repository>/<model>/<version>
        started = time.perf_counter()
        for name in names:
            load_adapter(model, lora_path(version, name), name)
        if names:
            model.disable_lora()
            _synchronize(model)  # the adapters' host-to-device copies belong to the load time
            seconds = time.perf_counter() - started
            events.emit("lora_loaded", model=label, loras=list(names), seconds=seconds)
            log(f"{label}: LoRA adapters loaded in {seconds:.3f} s (unfused, chosen per call): {', '.join(names)}")
        return cls(model, names, label)

    def select(self, choice: LoraChoice | None) -> None:
        """Make `choice` the active adapter (None: the base layers alone); RequestError for a name not loaded.
        A change emits `lora_selected` with its wall time: peft only sets Python attributes of each adapted layer
        (active adapter, scaling, requires_grad flags), no kernel is launched, so no CUDA sync is needed or wanted
        (it would add the previous call's queued GPU work to the number)."""
        if choice == self._active:
            return
        started = time.perf_counter()
        self._switch(choice)
        seconds = time.perf_counter() - started
        previous, self._active = self._active, choice
        events.emit("lora_selected", model=self.label, lora=None if choice is None else choice[0],
                    scale=None if choice is None else choice[1], previous=None if previous is None else previous[0],
                    seconds=seconds)

    def _switch(self, choice: LoraChoice | None) -> None:
        if choice is None:
            self.model.disable_lora()
        else:
            name, scale = choice
            if name not in self.names:
                known = ", ".join(sorted(self.names)) or "none"
                raise RequestError(f"'{LORA}' {name!r} is not loaded in this expert (loaded: {known})")
            self.model.enable_lora()
            self.model.set_adapters(name, scale)


def _synchronize(model: Any) -> None:
    """Wait for the GPU work queued on `model`'s device (nothing on a CPU)."""
    param = next(model.parameters(), None)
    if param is not None and param.is_cuda:
        torch.cuda.synchronize(param.device)
