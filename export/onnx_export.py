"""ONNX export of the served graphs: the two transformer experts and the VAE decoder's two frame graphs.

Every input/output name, dtype, dynamic axis and sample size comes from `wan22_triton.components`; this module only
turns those declarations into `torch.onnx.export` arguments.

Exporter: torch's dynamo-based exporter (`torch.onnx.export(..., dynamo=True, dynamic_shapes=...)`). It traces with
symbolic shapes (`torch.export`), so shape arithmetic (patch counts, RoPE table slices, the VAE's upsampled sizes)
stays symbolic and the graphs are correct at every size, not only at the export sample. The legacy TorchScript
exporter (`dynamo=False`) cannot export these models at all: diffusers' Wan attention uses `torch.nn.RMSNorm`
(`aten::rms_norm`), which it has no symbolic for at any opset it supports (<= 20).

Layout on disk, one file pair per graph, weights consolidated into ONE external-data file each (the A14B experts
are ~28 GB, far beyond protobuf's 2 GB limit):

    <path>.onnx  <path>.onnx.data                             export_transformer(model, spec, path)
    <out_dir>/vae_decoder_first_frame.onnx (+ .onnx.data)     export_vae_decoder_frames(vae, info, out_dir)
    <out_dir>/vae_decoder_step.onnx        (+ .onnx.data)
    <out_dir>/vae_decoder_cache_layout.json                   the CacheEntry list both graphs were built for

Graph input/output dims carry the declared labels ("batch", "latent_height", "latent_height_x2", ...).

Export-time patches (undone afterwards; results identical, checked by tests/test_onnx_export.py): float64 buffers as
float32 (TensorRT has no FP64), Wan attention through `ExportWanAttnProcessor` (plain SDPA, RoPE without ScatterND),
and the VAE's integer-scale "nearest-exact" upsampling as "nearest" (one `Resize` instead of index GatherNDs).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import onnx
import torch
import torch.nn.functional as F
from torch import nn

from . import onnx_cache
from wan22_triton.checkpoint import CheckpointInfo
from wan22_triton.components.common import CacheEntry, ComponentSpec, Dim
from wan22_triton.components.vae_decoder import vae_decoder_frame_specs
from wan22_triton.speed.self_attention import WanAttnProcessor
from wan22_triton.engines.vae_frames import (  # noqa: F401  (load_cache_layout re-exported for the export's users)
    FirstFrameDecoder,
    StepDecoder,
    discover_cache_layout,
    load_cache_layout,
    save_cache_layout,
)

# The exporter's registry warns, per export, about each torchvision op it cannot find: torchvision is not a
# dependency and no Wan2.2 model uses its ops.
logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)

# 18: the lowest opset the dynamo exporter emits natively. SDPA becomes MatMul/Softmax/MatMul (the pattern TensorRT
# fuses into its MHA kernels); opset >= 23 would emit the ONNX `Attention` op, which older TensorRT parsers lack.
DEFAULT_OPSET = 18


# --------------------------------------------------------------------------------------------- shapes and names


def export_sizes(spec: ComponentSpec, sizes: Mapping[str, int] | None = None) -> dict[str, int]:
    """Symbol values for the export sample: the declared ones, but at least 2.

    torch.export specialises a dimension whose sample value is 0 or 1 to a constant, so a dynamic axis must be
    traced at >= 2 (the graphs still accept 1 at run time; the tests check it).
    """
    merged = {**spec.sample_sizes, **(sizes or {})}
    symbols = {d.symbol for t in spec.inputs for d in t.shape if isinstance(d, Dim)}
    return {k: (max(2, v) if k in symbols else v) for k, v in merged.items()}


def torch_dynamic_shapes(spec: ComponentSpec) -> tuple[dict[int, Any] | None, ...]:
    """`dynamic_shapes` for torch.export, positional over `spec.inputs`; `Dim(symbol, k)` becomes k * Dim(symbol)."""
    dims: dict[str, Any] = {}

    def dim(d: Dim) -> Any:
        base = dims.setdefault(d.symbol, torch.export.Dim(d.symbol, min=1))
        return base if d.factor == 1 else d.factor * base

    return tuple(
        {i: dim(d) for i, d in enumerate(t.shape) if isinstance(d, Dim)} or None for t in spec.inputs
    )


def _group_varargs(module: nn.Module, shapes: tuple[Any, ...]) -> tuple[Any, ...]:
    """torch.export sees `forward(x, *caches)` as two inputs, `x` and the tuple `caches`: group the shapes alike."""
    params = list(inspect.signature(module.forward).parameters.values())
    kinds = [p.kind for p in params]
    if inspect.Parameter.VAR_POSITIONAL not in kinds:
        return shapes
    fixed = kinds.index(inspect.Parameter.VAR_POSITIONAL)
    return (*shapes[:fixed], tuple(shapes[fixed:]))


def _label_io_dims(model: onnx.ModelProto, spec: ComponentSpec) -> None:
    """Name the graph's dynamic input/output dims as declared (the exporter derives names like 2*((h//2)))."""
    declared = {t.name: t for t in (*spec.inputs, *spec.outputs)}
    for value in (*model.graph.input, *model.graph.output):
        t = declared[value.name]
        dims = value.type.tensor_type.shape.dim
        if len(dims) != len(t.shape):
            raise RuntimeError(f"{spec.name}: {value.name} has rank {len(dims)}, declared {len(t.shape)}")
        for d, want in zip(dims, t.shape):
            if isinstance(want, Dim):
                d.dim_param = want.label
            elif d.HasField("dim_value") and d.dim_value != want:
                raise RuntimeError(f"{spec.name}: {value.name} has dim {d.dim_value}, declared {want}")
            else:
                d.dim_value = want


def _check_io(model: onnx.ModelProto, spec: ComponentSpec) -> None:
    names = ([v.name for v in model.graph.input], [v.name for v in model.graph.output])
    if names != (spec.input_names, spec.output_names):
        raise RuntimeError(f"{spec.name}: exported I/O {names} differ from the declaration")
    doubles = [i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.DOUBLE]
    doubles += [n.name for n in model.graph.node if n.op_type == "Cast" and any(
        a.name == "to" and a.i == onnx.TensorProto.DOUBLE for a in n.attribute)]
    if doubles:
        raise RuntimeError(f"{spec.name}: float64 tensors in the graph (TensorRT has no FP64): {doubles[:5]}")


# --------------------------------------------------------------------------------------------- generic export


def export_module(module: nn.Module, spec: ComponentSpec, path: str | Path, opset: int = DEFAULT_OPSET,
                  sizes: Mapping[str, int] | None = None) -> Path:
    """Export `module` (positional inputs in `spec.inputs` order) to `path` + `path.data`, dims as declared; from
    the ONNX cache (`export.onnx_cache`) when one is set and holds this graph."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cache = onnx_cache.from_environment()
    if cache is None:
        _trace(module, spec, path, opset, sizes)
    else:
        cache.fetch_or_make(onnx_cache.key(module, spec, opset, sizes), path,
                            lambda target: _trace(module, spec, target, opset, sizes))
    return path


def _trace(module: nn.Module, spec: ComponentSpec, path: Path, opset: int, sizes: Mapping[str, int] | None) -> None:
    sample = spec.sample_inputs(export_sizes(spec, sizes))
    args = tuple(torch.from_numpy(sample[name]) for name in spec.input_names)
    module = module.eval()
    with torch.no_grad(), warnings.catch_warnings():
        # Noise from torch 2.13's exporter: derived dims sharing a symbol, and a pytree deprecation.
        warnings.filterwarnings("ignore", message=".*shares the same shape constraints with another axis")
        warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\)")
        program = torch.onnx.export(
            module, args, dynamo=True, input_names=spec.input_names, output_names=spec.output_names,
            dynamic_shapes=_group_varargs(module, torch_dynamic_shapes(spec)), opset_version=opset, optimize=True,
            verbose=False,
        )
    # Weights always go to ONE external file next to the graph, whatever the model size.
    assert program is not None
    for stale in (path, path.with_name(path.name + ".data")):
        stale.unlink(missing_ok=True)
    program.save(path, external_data=True)
    model = onnx.load(str(path), load_external_data=False)
    _check_io(model, spec)
    _label_io_dims(model, spec)
    onnx.save(model, str(path))  # graph only; the external-data references keep pointing at <path>.data
    locations = external_data_files(path)
    if locations - {path.name + ".data"}:
        raise RuntimeError(f"{path}: weights spread over {sorted(locations)}")


def external_data_files(path: str | Path) -> set[str]:
    """Locations of the external data a graph references (relative to its directory)."""
    model = onnx.load(str(path), load_external_data=False)
    files: set[str] = set()
    for tensor in onnx.external_data_helper._get_all_tensors(model):
        if onnx.external_data_helper.uses_external_data(tensor):
            files.update(e.value for e in tensor.external_data if e.key == "location")
    return files


def check_graph(path: str | Path) -> None:
    """`onnx.checker.check_model` by path (the only way it accepts graphs with external data / over 2 GB)."""
    onnx.checker.check_model(str(path))


def op_histogram(path: str | Path) -> Counter:
    """Op types of a graph's top level and how often each occurs."""
    model = onnx.load(str(path), load_external_data=False)
    return Counter(node.op_type for node in model.graph.node)


# --------------------------------------------------------------------------------------------- loading


def load_transformer(folder: str | Path) -> nn.Module:
    """One expert of a diffusers checkpoint (`<checkpoint>/transformer` or `transformer_2`), float32, eval mode.

    `WanTransformer3DModel.from_pretrained` requires `accelerate` (its `_keep_in_fp32_modules` force
    `low_cpu_mem_usage=True`); without it, the model is built from its config and the safetensors (sharded or not)
    are loaded into it, which is equivalent.
    """
    from diffusers.models.transformers.transformer_wan import WanTransformer3DModel
    from diffusers.utils import is_accelerate_available

    folder = Path(folder)
    if is_accelerate_available():
        return WanTransformer3DModel.from_pretrained(folder, torch_dtype=torch.float32).eval()
    from safetensors.torch import load_file

    model = WanTransformer3DModel.from_config(WanTransformer3DModel.load_config(folder))
    index = folder / "diffusion_pytorch_model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else [
        "diffusion_pytorch_model.safetensors"]
    state: dict[str, torch.Tensor] = {}
    for name in files:
        state.update(load_file(folder / name))
    model.load_state_dict(state, strict=True)
    return model.float().eval()


def load_vae(folder: str | Path) -> nn.Module:
    """The checkpoint's `AutoencoderKLWan` (`<checkpoint>/vae`), float32, eval mode."""
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan.from_pretrained(Path(folder), torch_dtype=torch.float32).eval()


# --------------------------------------------------------------------------------------------- transformer


def sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
         attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """`F.scaled_dot_product_attention` on (B, S, H, D) tensors; a 2-D mask is a (B, key tokens) padding mask."""
    if attention_mask is not None and attention_mask.ndim == 2:
        attention_mask = attention_mask[:, None, None, :]
    out = F.scaled_dot_product_attention(
        query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), attn_mask=attention_mask,
        dropout_p=0.0, is_causal=False,
    )
    return out.transpose(1, 2)


class ExportWanAttnProcessor(WanAttnProcessor):
    """diffusers' `WanAttnProcessor` for text-to-video (no image K/V), attention as `F.scaled_dot_product_attention`.

    diffusers' processor goes through `dispatch_attention_fn`, whose backend registry is process-wide state (a
    user's `attention_backend("flash")` would leak into the graph); here it is always SDPA, the op TensorRT fuses.
    RoPE is `self_attention.rope` (no ScatterND) rounded back to the model's dtype: diffusers' result bit for bit.
    """

    def __init__(self) -> None:
        super().__init__(sdpa)


@contextlib.contextmanager
def export_patches(model: nn.Module) -> Iterator[None]:
    """While exporting: float64 buffers (Wan's RoPE tables in some diffusers versions) as float32, since TensorRT
    has no FP64, and `ExportWanAttnProcessor` on every Wan attention. Everything is restored afterwards."""
    from diffusers.models.transformers.transformer_wan import WanAttention

    saved_buffers: list[tuple[nn.Module, str, torch.Tensor]] = []
    saved_processors: list[tuple[nn.Module, Any]] = []
    try:
        for module in model.modules():
            for name, buf in list(module.named_buffers(recurse=False)):
                if buf is not None and buf.dtype == torch.float64:
                    saved_buffers.append((module, name, buf))
                    module._buffers[name] = buf.float()
            if isinstance(module, WanAttention):
                saved_processors.append((module, module.processor))
                module.processor = ExportWanAttnProcessor()  # type: ignore[assignment]
        yield
    finally:
        for module, name, buf in saved_buffers:
            module._buffers[name] = buf
        for module, processor in saved_processors:
            module.processor = processor


class TransformerExportWrapper(nn.Module):
    """(hidden_states, timestep, encoder_hidden_states) -> noise_pred, float32 at the boundary whatever the weights'
    dtype (inputs are cast to it, the output back to float32)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.compute_dtype: torch.dtype = model.get_parameter("patch_embedding.weight").dtype

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor,
                encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        dtype = self.compute_dtype
        out = self.model(hidden_states.to(dtype), timestep, encoder_hidden_states.to(dtype), return_dict=False)[0]
        return out.float()


def export_transformer(model: nn.Module, spec: ComponentSpec, path: str | Path, opset: int = DEFAULT_OPSET,
                       sizes: Mapping[str, int] | None = None) -> Path:
    """Export one expert (`components.expert.transformer_spec(info, name)`) to `path` (+ `path.data`)."""
    with export_patches(model):
        return export_module(TransformerExportWrapper(model), spec, path, opset=opset, sizes=sizes)


# --------------------------------------------------------------------------------------------- VAE decoder


@contextlib.contextmanager
def nearest_upsampling(module: nn.Module) -> Iterator[None]:
    """While exporting: `nn.Upsample(mode="nearest-exact")` with integer scale factors as mode "nearest".

    For an integer scale s both pick source index floor(d / s) (nearest-exact: floor((d + 0.5) / s), and
    (r + 0.5) / s < 1 for every remainder r < s), so results are identical; but "nearest" exports as one ONNX
    `Resize`, while "nearest-exact" is decomposed into index arithmetic and a GatherND per layer.
    """
    changed = []
    try:
        for m in module.modules():
            if not isinstance(m, nn.Upsample) or m.mode != "nearest-exact" or m.scale_factor is None:
                continue
            factors = m.scale_factor if isinstance(m.scale_factor, tuple) else (m.scale_factor,)
            if all(float(f).is_integer() for f in factors):
                changed.append(m)
                m.mode = "nearest"
        yield
    finally:
        for m in changed:
            m.mode = "nearest-exact"


def export_vae_decoder_frames(vae: nn.Module, info: CheckpointInfo, out_dir: str | Path, opset: int = DEFAULT_OPSET,
                              layout: Sequence[CacheEntry] | None = None) -> tuple[Path, Path]:
    """Export the first-frame and step graphs (`components.vae_decoder.vae_decoder_frame_specs`) and the cache layout into
    `out_dir`; returns the two graph paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vae = vae.eval()
    layout = list(layout) if layout is not None else discover_cache_layout(vae)
    first_spec, step_spec = vae_decoder_frame_specs(info, layout)
    with nearest_upsampling(vae):
        first = export_module(FirstFrameDecoder(vae, layout), first_spec, out_dir / f"{first_spec.name}.onnx", opset)
        step = export_module(StepDecoder(vae, layout), step_spec, out_dir / f"{step_spec.name}.onnx", opset)
    save_cache_layout(layout, out_dir)
    return first, step
