"""TensorRT 10 plans for the served graphs (FP16 experts, FP32 VAE frame graphs) and their Triton configs.

Triton serves the plans natively (`platform: "tensorrt_plan"`); nothing here is a Python model. The input is the
ONNX repository `export.onnx_export` writes (engine `onnx`), the output replaces the graphs in place:

    transformer_high_noise/1/model.onnx           ->  transformer_high_noise/1/model.plan  (+ model.plan.json)
    transformer_low_noise/1/model.onnx            ->  transformer_low_noise/1/model.plan   (+ model.plan.json)
    vae_decoder/1/vae_decoder_first_frame.onnx    ->  vae_decoder_first_frame/1/model.plan (+ model.plan.json)
    vae_decoder/1/vae_decoder_step.onnx           ->  vae_decoder_step/1/model.plan        (+ model.plan.json)

`vae_decoder` itself stays a Python-backend model: it loops over the latent frames and calls `vae_decoder_first_frame`
once and `vae_decoder_step` once per further frame through BLS, threading the caches (`cache_out_i` -> `cache_in_i`;
`vae_decoder/1/vae_decoder_cache_layout.json` gives their count). `model.plan.json` records how each plan was built
(TensorRT version, GPU, precision, profiles, build seconds): a plan only loads on the TensorRT version and GPU
architecture it was built with.

Precision: networks are STRONGLY TYPED (`NetworkDefinitionCreationFlag.STRONGLY_TYPED`). Every tensor has the type
the ONNX graph gives it and TensorRT never picks another, so the precision of a plan is exactly what the graph says
and can be checked on the CPU before a GPU is involved: `convert_to_low_precision` writes the FP16 (or BF16) expert
graph with its FP32 islands and explicit Casts, onnxruntime runs that same graph in the tests, TensorRT builds it.
The weakly typed alternative (`BuilderFlag.FP16` + per-layer `precision`/`set_output_type` +
`OBEY_PRECISION_CONSTRAINTS`) is rejected: those flags are deprecated since TensorRT 10.12 in favour of strong typing,
layer constraints must be matched to TensorRT layer names after the parser (fragile across fusions and versions),
and with FP16 allowed everywhere TensorRT may still run an unconstrained layer the islands feed in FP16 at will.
What stays FP32 in the experts is the list `FP32_KEEP` below. The VAE frame graphs are FP32 graphs, so their plans
are FP32; TF32 stays allowed for their convolutions (`tf32=True`, TensorRT's default, which is also what PyTorch's
cuDNN convolutions do by default): the reason for an FP32 VAE is FP16's range (Wan's decoder activations overflow
it), and TF32 has FP32's range.

`tensorrt` is imported lazily: this module imports (and the configs, the ONNX conversion and the mypy check against
`tensorrt-stubs` all work) on machines without TensorRT.

CLI (after `python -m export ... --engine onnx` wrote the ONNX repository)::

    python -m export.tensorrt_build --repository model_repository [--precision fp16] [--shape-spec FILE.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, Iterable, Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from wan22_triton import components as C
from wan22_triton.checkpoint import CheckpointInfo
from wan22_triton.components import CacheEntry, ComponentSpec, ShapeSpec

from .model_config import build_model_config, to_pbtxt

if TYPE_CHECKING:
    import tensorrt as trt

TENSORRT_PLATFORM = "tensorrt_plan"
PLAN_FILE = "model.plan"
PLAN_INFO_SUFFIX = ".json"  # model.plan -> model.plan.json
EXPERT_ONNX = "model.onnx"
SHAPE_SPEC_FILE = Path(__file__).with_name("shape_spec.json")
DEFAULT_WORKSPACE_BYTES = 16 << 30
PRECISIONS = ("fp32", "fp16", "bf16")
LOW_PRECISION_TYPES = {"fp16": TensorProto.FLOAT16, "bf16": TensorProto.BFLOAT16}
FP16_MAX = 65504.0

Ranges = Mapping[str, tuple[int, int, int]]
Log = Callable[[str], None]


# --------------------------------------------------------------------------------------------- shape spec, profiles


def load_shape_spec(path: str | Path | None = None) -> ShapeSpec:
    """The shape spec JSON ({"num_frames": [...], "resolutions": [[h, w], ...], "max_batch": n}); default: ours."""
    data = json.loads(Path(path or SHAPE_SPEC_FILE).read_text())
    return ShapeSpec(
        num_frames=tuple(int(f) for f in data["num_frames"]),
        resolutions=tuple((int(h), int(w)) for h, w in data["resolutions"]),
        max_batch=int(data.get("max_batch", ShapeSpec.max_batch)),
    )


def shape_spec_dict(spec: ShapeSpec) -> dict[str, Any]:
    return {"num_frames": list(spec.num_frames), "resolutions": [list(r) for r in spec.resolutions],
            "max_batch": spec.max_batch}


def profile_ranges(spec: ComponentSpec, shape_spec: ShapeSpec, info: CheckpointInfo) -> list[dict[str, tuple[int, int, int]]]:
    """One symbol-range set per entry (frame count x resolution) of the shape spec, as TensorRT profiles are built
    from (`ComponentSpec.profile`): spatial sizes exact (min = opt = max, the fastest kernels for each size), batch
    from 1 to the component's Triton max_batch_size. Entries giving the same input shapes (the VAE frame graphs do
    not see the frame count) share one profile."""
    batch = min(shape_spec.max_batch, spec.max_batch_size) if spec.max_batch_size > 0 else shape_spec.max_batch
    out: list[dict[str, tuple[int, int, int]]] = []
    seen: set[tuple[tuple[str, tuple[tuple[int, ...], ...]], ...]] = set()
    for frames in shape_spec.num_frames:
        for resolution in shape_spec.resolutions:
            entry = ShapeSpec(num_frames=(frames,), resolutions=(resolution,), max_batch=batch)
            ranges = entry.symbol_ranges(info)
            ranges["batch"] = (1, batch, batch)
            key = tuple(sorted(spec.profile(ranges).items()))
            if key not in seen:
                seen.add(key)
                out.append(ranges)
    return out


# --------------------------------------------------------------------------------------------- FP32 islands

# What stays FP32 in the FP16/BF16 experts, and why. Everything else runs in the low precision: every Linear/MatMul
# (q/k/v/out projections, FFN, text embedder, proj_out), the attention MatMul-Softmax-MatMul (kept whole so that
# TensorRT fuses it into its flash-attention kernels, which accumulate in FP32 anyway), GELU and the patch-embedding
# Conv. This is Wan's own recipe (the reference code runs the time embedding, modulation, norms and residual adds
# under `autocast(float32)`, diffusers keeps them in FP32 via FP32LayerNorm and `.float()`); the rules are structural
# (op types and dataflow), so they hold for any Wan-style expert and need no node names.
FP32_KEEP: tuple[tuple[str, str], ...] = (
    ("timestep_path", "everything computed from the timestep alone: sinusoidal embedding (sin/cos of t*freq with t up "
     "to 1000 lose their phase in FP16), time MLP, time projection and scale_shift_table + temb, i.e. every block's "
     "shift/scale/gate"),
    ("constant_tables", "tensors computed from constants only, i.e. the RoPE cos/sin tables sliced to the video size"),
    ("layer_norm", "LayerNormalization (norm1/norm2/norm3/norm_out): mean and variance of the residual stream "
                   "overflow FP16"),
    ("norm_statistics", "ReduceMean and the Pow feeding it (the q/k RMSNorm): x**2 overflows FP16 once |x| > 256"),
    ("propagated", "elementwise and data-movement ops fed by any of the above: the modulation "
                   "norm(x) * (1 + scale) + shift, the gated residual adds (the residual stream stays FP32), the rest "
                   "of the RMSNorm and the RoPE rotation of q and k"),
)
FP32_RULES = tuple(name for name, _ in FP32_KEEP)
# Not a choice but a constraint, applied on top of FP32_KEEP by the converter: an op whose ONNX schema at the graph's
# opset has no such type (Conv has no bfloat16 before opset 22) stays FP32.
NO_LOW_PRECISION_SCHEMA = "no_low_precision_schema"
TYPE_STRINGS = {TensorProto.FLOAT16: "tensor(float16)", TensorProto.BFLOAT16: "tensor(bfloat16)"}

# Ops an FP32 island extends through: cheap elementwise arithmetic and pure data movement. Compute-heavy ops (MatMul,
# Gemm, Conv, Softmax, ...) stop it: they run in the low precision behind a Cast.
PROPAGATING_OPS = frozenset({
    "Add", "Sub", "Mul", "Div", "Neg", "Abs", "Sqrt", "Reciprocal", "Pow", "Exp", "Log", "Sin", "Cos", "Sigmoid",
    "Tanh", "Erf", "Clip", "Min", "Max", "Where", "Identity", "Reshape", "Transpose", "Squeeze", "Unsqueeze",
    "Concat", "Split", "Slice", "Expand", "Gather", "Flatten", "Tile",
})
NORM_STATISTICS_OPS = frozenset({"ReduceMean", "ReduceSumSquare", "ReduceL2"})
# (op, input index) that ONNX requires in float32 whatever the node's type (Resize's `scales`).
FLOAT32_ONLY_INPUTS = frozenset({("Resize", 2)})


def tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor of the (shape-inferred) graph: inputs, outputs, initializers, value_info."""
    graph = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.input, *graph.output, *graph.value_info)}
    types.update({i.name: i.data_type for i in graph.initializer})
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    types[node.output[0]] = attr.t.data_type
    return types


def fp32_nodes(model: onnx.ModelProto, types: Mapping[str, int], fp32_inputs: Sequence[str] = ("timestep",),
               rules: Sequence[str] = FP32_RULES) -> dict[str, str]:
    """Node name -> the FP32_KEEP rule that keeps it in FP32. `model.graph.node` must be topologically sorted (ONNX
    requires it)."""
    unknown = set(rules) - set(FP32_RULES)
    if unknown:
        raise ValueError(f"unknown FP32 rules {sorted(unknown)}; known: {FP32_RULES}")
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}

    def is_float(name: str) -> bool:
        return bool(name) and types.get(name) == TensorProto.FLOAT

    # Which graph inputs each float tensor's value depends on (through float dataflow).
    sources: dict[str, frozenset[str]] = {i.name: frozenset({i.name}) for i in graph.input}
    sources.update({i.name: frozenset() for i in graph.initializer})
    keep: dict[str, str] = {}
    for node in graph.node:
        float_inputs = [t for t in node.input if is_float(t)]
        deps = frozenset().union(*(sources.get(t, frozenset()) for t in float_inputs))
        for out in node.output:
            sources[out] = deps
        if not any(is_float(o) for o in node.output):
            continue
        if "timestep_path" in rules and deps and deps <= set(fp32_inputs):
            keep[node.name] = "timestep_path"
        elif "constant_tables" in rules and float_inputs and not deps:
            keep[node.name] = "constant_tables"
        elif "layer_norm" in rules and node.op_type == "LayerNormalization":
            keep[node.name] = "layer_norm"
        elif "norm_statistics" in rules and node.op_type in NORM_STATISTICS_OPS:
            keep[node.name] = "norm_statistics"
            feeding = producer.get(node.input[0])
            if feeding is not None and feeding.op_type == "Pow":
                keep[feeding.name] = "norm_statistics"
    if "propagated" in rules:
        for node in graph.node:  # topological order: one pass reaches everything downstream
            if node.name in keep or node.op_type not in PROPAGATING_OPS or not any(is_float(o) for o in node.output):
                continue
            if any(t in producer and producer[t].name in keep for t in node.input if is_float(t)):
                keep[node.name] = "propagated"
    return keep


# --------------------------------------------------------------------------------------------- FP16/BF16 conversion


@dataclass
class ConversionReport:
    precision: str
    fp32_nodes_by_rule: dict[str, int] = field(default_factory=dict)
    fp32_ops: dict[str, int] = field(default_factory=dict)
    low_precision_ops: dict[str, int] = field(default_factory=dict)
    casts_inserted: int = 0
    initializers_converted: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    values_clamped: int = 0  # finite FP32 weights beyond the FP16 range, clamped to +-65504
    fp32_weight_bytes: int = 0  # float weights left FP32 (time MLP/projection, norms, modulation tables, RoPE)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _to_low(array: np.ndarray[Any, Any], target: int) -> tuple[bytes, int]:
    """float32 array -> raw little-endian bytes of `target` (FLOAT16 or BFLOAT16), and how many values were clamped."""
    a = np.asarray(array, dtype=np.float32)
    if target == TensorProto.FLOAT16:
        finite = np.isfinite(a)
        clamped = int(np.count_nonzero(finite & (np.abs(a) > FP16_MAX)))
        if clamped:
            a = np.where(finite, np.clip(a, -FP16_MAX, FP16_MAX), a)
        return a.astype("<f2").tobytes(), clamped
    if target == TensorProto.BFLOAT16:  # round to nearest even on the top 16 bits, NaN kept NaN
        bits = a.astype("<f4").view(np.uint32)
        rounded = ((bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16))
        out = np.where(np.isnan(a), np.uint32(0x7FC0), rounded).astype("<u2")
        return out.tobytes(), 0
    raise ValueError(f"unsupported low-precision type {target}")


_NP_TYPES: dict[int, Any] = {
    TensorProto.FLOAT: np.float32, TensorProto.FLOAT16: np.float16, TensorProto.DOUBLE: np.float64,
    TensorProto.INT64: np.int64, TensorProto.INT32: np.int32, TensorProto.INT8: np.int8, TensorProto.UINT8: np.uint8,
    TensorProto.BOOL: np.bool_, TensorProto.BFLOAT16: np.uint16, TensorProto.INT16: np.int16,
}


class _DataWriter:
    """Appends initializer bytes to one external-data file, aligned as onnx.save does (4 KiB for large tensors)."""

    def __init__(self, path: Path, handle: BinaryIO) -> None:
        self.path, self.handle, self.offset = path, handle, 0

    def write(self, tensor: TensorProto, data: bytes) -> None:
        align = 4096 if len(data) >= 1 << 20 else 64
        pad = -self.offset % align
        self.handle.write(b"\0" * pad)
        self.offset += pad
        self.handle.write(data)
        del tensor.external_data[:]
        tensor.ClearField("raw_data")
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", self.path.name), ("offset", str(self.offset)), ("length", str(len(data)))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        self.offset += len(data)


def _read_initializer(tensor: TensorProto, base_dir: Path) -> bytes:
    """Raw little-endian bytes of an initializer, inline or external (one tensor at a time: the weights of a 14B
    expert never sit in memory whole)."""
    if tensor.data_location != TensorProto.EXTERNAL:
        return bytes(numpy_helper.to_array(tensor).astype(_NP_TYPES[tensor.data_type]).tobytes())
    info = {e.key: e.value for e in tensor.external_data}
    length = int(info["length"]) if "length" in info else None
    with open(base_dir / info["location"], "rb") as f:
        f.seek(int(info.get("offset", "0")))
        data = f.read() if length is None else f.read(length)
    return data


def _supports(node: onnx.NodeProto, opset: int, type_string: str) -> bool:
    """Whether the ONNX schema of `node` (at `opset`) allows `type_string` for its float inputs and outputs."""
    try:
        schema = onnx.defs.get_schema(node.op_type, opset, node.domain)
    except onnx.defs.SchemaError:
        return True  # not an ONNX op: let the strict check below decide
    params = {p.type_param_str: set(p.allowed_type_strs) for p in schema.type_constraints}
    formals = [*schema.inputs[:1], *schema.outputs[:1]]
    return all(type_string in params.get(f.type_str, {type_string}) for f in formals)


def _cast_node(src: str, dst: str, to: int) -> onnx.NodeProto:
    return helper.make_node("Cast", [src], [dst], name=f"{dst}__cast", to=to)


def convert_to_low_precision(src: str | Path, dst: str | Path, precision: str = "fp16",
                             fp32_inputs: Sequence[str] = ("timestep",), rules: Sequence[str] = FP32_RULES,
                             inline_limit: int = 1024) -> ConversionReport:
    """FP32 expert graph `src` (+ external data) -> `dst` (+ `dst.data`) in `precision`, FP32 where `FP32_KEEP` says.

    Graph inputs and outputs keep their FP32 types (the Triton contract does not change). Every edge between an FP32
    and a low-precision node gets an explicit Cast, so the graph is strongly typed as TensorRT will take it. Weights
    are streamed one tensor at a time from the source data file to the new one. `onnxconverter_common.float16` was
    tried first and rejected: its node block list inserts a Cast to FP16 and back between two neighbouring FP32
    nodes (65 such round trips on the tiny expert), i.e. the residual stream and the modulation would still be
    rounded to FP16 at every step.
    """
    if precision not in LOW_PRECISION_TYPES:
        raise ValueError(f"precision must be one of {sorted(LOW_PRECISION_TYPES)}, got {precision!r}")
    low = LOW_PRECISION_TYPES[precision]
    start = time.perf_counter()
    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    model = onnx.shape_inference.infer_shapes(onnx.load(str(src), load_external_data=False))
    graph = model.graph
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node for a in n.attribute):
        raise NotImplementedError(f"{src}: control flow (If/Loop/Scan) is not supported by the converter")
    for i, node in enumerate(graph.node):
        if not node.name:
            node.name = f"node_{node.op_type}_{i}"
    if len({n.name for n in graph.node}) != len(graph.node):
        raise ValueError(f"{src}: node names are not unique")
    types = tensor_types(model)
    missing = [o for n in graph.node for o in n.output if o and o not in types]
    if missing:
        raise ValueError(f"{src}: no type inferred for {missing[:5]}")

    def is_float(name: str) -> bool:
        return bool(name) and types.get(name) == TensorProto.FLOAT

    keep = fp32_nodes(model, types, fp32_inputs, rules)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), onnx.defs.onnx_opset_version())
    for node in graph.node:
        if node.name not in keep and any(is_float(o) for o in node.output) and \
                not _supports(node, opset, TYPE_STRINGS[low]):
            keep[node.name] = NO_LOW_PRECISION_SCHEMA
    report = ConversionReport(precision=precision, fp32_nodes_by_rule=dict(Counter(keep.values())))

    consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in graph.node:
        for k, t in enumerate(node.input):
            consumers.setdefault(t, []).append((node, k))

    # 1. The type every node computes in. Cast and single-float-input ops without a float output (Shape, Size,
    #    comparisons with constants) take any type and need no Cast; Constants follow their consumers.
    wanted: dict[str, int | None] = {}
    for node in graph.node:
        has_float_out = any(is_float(o) for o in node.output)
        n_float_in = sum(is_float(t) for t in node.input)
        if node.op_type == "Constant":
            continue
        if node.op_type == "Cast" or (not has_float_out and n_float_in <= 1):
            wanted[node.name] = None  # takes any type
        elif not has_float_out:
            wanted[node.name] = TensorProto.FLOAT  # e.g. Equal(a, b) on two float tensors: both FP32
        else:
            wanted[node.name] = TensorProto.FLOAT if node.name in keep else low

    def input_type(node: onnx.NodeProto, k: int) -> int | None:
        if (node.op_type, k) in FLOAT32_ONLY_INPUTS:
            return TensorProto.FLOAT
        return wanted.get(node.name)

    def consumer_types(tensor: str) -> set[int]:
        return {t for node, k in consumers.get(tensor, []) if (t := input_type(node, k)) is not None}

    outputs = {o.name for o in graph.output}
    for node in graph.node:
        if node.op_type == "Constant" and is_float(node.output[0]):
            tensor_valued = any(a.name == "value" and a.type == onnx.AttributeProto.TENSOR for a in node.attribute)
            all_low = consumer_types(node.output[0]) == {low} and node.output[0] not in outputs
            wanted[node.name] = low if tensor_valued and all_low else TensorProto.FLOAT

    # 2. The type each float tensor now has.
    new_type: dict[str, int] = {i.name: TensorProto.FLOAT for i in graph.input if is_float(i.name)}
    initializer_type: dict[str, int] = {}
    for init in graph.initializer:
        if init.data_type == TensorProto.FLOAT:
            initializer_type[init.name] = low if consumer_types(init.name) == {low} else TensorProto.FLOAT
            new_type[init.name] = initializer_type[init.name]
    for node in graph.node:
        if node.op_type == "Cast":
            to = next(a for a in node.attribute if a.name == "to")
            if to.i == TensorProto.FLOAT and node.name not in keep and consumer_types(node.output[0]) == {low}:
                to.i = low
            new_type[node.output[0]] = to.i
            continue
        for out in node.output:
            if is_float(out):
                new_type[out] = wanted[node.name] or TensorProto.FLOAT
        if wanted.get(node.name) == low:  # float tensors in attributes (Constant value, ConstantOfShape value)
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == TensorProto.FLOAT:
                    data, clamped = _to_low(numpy_helper.to_array(attr.t), low)
                    report.values_clamped += clamped
                    attr.t.CopyFrom(helper.make_tensor(attr.t.name, low, list(attr.t.dims), data, raw=True))

    # 3. Graph outputs stay FP32: a low-precision producer writes `<name>__<precision>`, a Cast writes `<name>`.
    renamed: dict[str, str] = {}
    for out in graph.output:
        if new_type.get(out.name, TensorProto.FLOAT) != TensorProto.FLOAT:
            renamed[out.name] = f"{out.name}__{precision}"
    for node in graph.node:
        node.output[:] = [renamed.get(o, o) for o in node.output]
        node.input[:] = [renamed.get(t, t) for t in node.input]
    for old, new in renamed.items():
        new_type[new] = new_type.pop(old)

    # 4. Casts on every edge whose types differ, each right before its first consumer (keeps the order topological).
    value_info = {v.name: v for v in graph.value_info}
    shapes = {v.name: v for v in (*graph.input, *graph.output, *graph.value_info)}
    casts: dict[tuple[str, int], str] = {}
    nodes: list[onnx.NodeProto] = []
    suffix: dict[int, str] = {TensorProto.FLOAT: "fp32", low: precision}

    def cast_of(tensor: str, to: int) -> str:
        key = (tensor, to)
        if key not in casts:
            casts[key] = f"{tensor}__to_{suffix[to]}"
            nodes.append(_cast_node(tensor, casts[key], to))
            report.casts_inserted += 1
            base = shapes.get(tensor) or shapes.get(next((k for k, v in renamed.items() if v == tensor), ""))
            if base is not None:
                info = onnx.ValueInfoProto()
                info.CopyFrom(base)
                info.name = casts[key]
                info.type.tensor_type.elem_type = to
                graph.value_info.append(info)
        return casts[key]

    for node in graph.node:
        for k, t in enumerate(node.input):
            want = input_type(node, k)
            if want is None or t not in new_type or new_type[t] == want:
                continue
            node.input[k] = cast_of(t, want)
        nodes.append(node)
    for old, new in renamed.items():
        nodes.append(_cast_node(new, old, TensorProto.FLOAT))
        report.casts_inserted += 1
        info = onnx.ValueInfoProto()
        info.CopyFrom(shapes[old])
        info.name = new
        info.type.tensor_type.elem_type = new_type[new]
        graph.value_info.append(info)
    del graph.node[:]
    graph.node.extend(nodes)
    for name, info in value_info.items():
        if name in new_type:
            info.type.tensor_type.elem_type = new_type[name]

    # 5. Weights, streamed into one data file next to `dst`.
    data_path = dst.with_name(dst.name + ".data")
    with open(data_path, "wb") as handle:
        writer = _DataWriter(data_path, handle)
        for init in graph.initializer:
            data = _read_initializer(init, src.parent)
            report.bytes_in += len(data)
            if initializer_type.get(init.name) == low:
                data, clamped = _to_low(np.frombuffer(data, dtype="<f4"), low)
                report.values_clamped += clamped
                report.initializers_converted += 1
                init.data_type = low
            elif init.data_type == TensorProto.FLOAT:
                report.fp32_weight_bytes += len(data)
            report.bytes_out += len(data)
            if len(data) > inline_limit or init.data_location == TensorProto.EXTERNAL:
                writer.write(init, data)
            else:
                dims = list(init.dims)
                init.CopyFrom(helper.make_tensor(init.name, init.data_type, dims, data, raw=True))
    onnx.save(model, str(dst))

    # 6. Strict check: every edge type-consistent (what TensorRT's strongly typed parser will insist on).
    onnx.shape_inference.infer_shapes(onnx.load(str(dst), load_external_data=False), check_type=True, strict_mode=True)
    onnx.checker.check_model(str(dst))
    report.fp32_ops = dict(Counter(n.op_type for n in graph.node if wanted.get(n.name) == TensorProto.FLOAT))
    report.low_precision_ops = dict(Counter(n.op_type for n in graph.node if wanted.get(n.name) == low))
    report.seconds = round(time.perf_counter() - start, 3)
    return report


def graph_precision(path: str | Path) -> str:
    """The precision of a graph's weights: fp16/bf16 if any float initializer has that type, else fp32."""
    model = onnx.load(str(path), load_external_data=False)
    found = {i.data_type for i in model.graph.initializer}
    for name, proto_type in LOW_PRECISION_TYPES.items():
        if proto_type in found:
            return name
    return "fp32"


# --------------------------------------------------------------------------------------------- TensorRT build


def tensorrt_available() -> bool:
    """Whether the real TensorRT is importable. (tensorrt-stubs alone installs a `tensorrt/` directory of .pyi files,
    which imports as an empty namespace package.)"""
    try:
        import tensorrt
    except ImportError:
        return False
    return hasattr(tensorrt, "Builder")


def _require_tensorrt() -> None:
    if not tensorrt_available():  # pragma: no cover - depends on the machine
        raise RuntimeError(
            "TensorRT's Python package is not importable here; build the plans inside docker/Dockerfile.export "
            "(the NGC image ships the TensorRT version Triton's tensorrt_plan backend loads)"
        )


@lru_cache(maxsize=1)
def _logger() -> trt.ILogger:
    import tensorrt as trt

    return trt.Logger(trt.Logger.WARNING)


def gpu_name() -> str | None:
    """Name of GPU 0: via torch when it sees CUDA, else nvidia-smi, else None."""
    try:
        import torch

        if torch.cuda.is_available():
            return str(torch.cuda.get_device_name(0))
    except ImportError:
        pass
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader", "-i", "0"],
                             capture_output=True, text=True, timeout=30, check=True)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _trt_dtype_name(dtype: trt.DataType) -> str:
    import tensorrt as trt

    names = {trt.DataType.FLOAT: "float32", trt.DataType.HALF: "float16", trt.DataType.BF16: "bfloat16",
             trt.DataType.INT32: "int32", trt.DataType.INT64: "int64", trt.DataType.UINT8: "uint8",
             trt.DataType.BOOL: "bool", trt.DataType.INT8: "int8"}
    return names.get(dtype, str(dtype))


def _check_network(network: trt.INetworkDefinition, spec: ComponentSpec) -> None:
    """The parsed network's I/O names, dtypes and ranks must be the declaration's (Triton matches them by name)."""
    declared = {t.name: t for t in (*spec.inputs, *spec.outputs)}
    found = [network.get_input(i) for i in range(network.num_inputs)]
    found += [network.get_output(i) for i in range(network.num_outputs)]
    names = [t.name for t in found]
    if sorted(names) != sorted(declared):
        raise RuntimeError(f"{spec.name}: network I/O {names} differ from the declaration {sorted(declared)}")
    for tensor in found:
        want = declared[tensor.name]
        dtype = _trt_dtype_name(tensor.dtype)
        if dtype != want.dtype or len(tensor.shape) != len(want.shape):
            shape = [tensor.shape[i] for i in range(len(tensor.shape))]
            raise RuntimeError(f"{spec.name}: {tensor.name} is {dtype}{shape}, declared "
                               f"{want.dtype} of rank {len(want.shape)}")


def build_engine(onnx_path: str | Path, plan_path: str | Path, spec: ComponentSpec,
                 ranges: Ranges | Sequence[Ranges], precision: str, timing_cache_path: str | Path | None = None, *,
                 workspace_bytes: int = DEFAULT_WORKSPACE_BYTES, optimization_level: int = 3, tf32: bool = True,
                 extra_info: Mapping[str, Any] | None = None, log: Log = print) -> dict[str, Any]:
    """Build `plan_path` from `onnx_path` (external data next to it): strongly typed, one optimization profile per
    entry of `ranges` (symbol -> (min, opt, max), see `profile_ranges`), timing cache read from and written back to
    `timing_cache_path`. Writes `<plan>.json` and returns its content.

    `precision` is not a builder switch (the network is strongly typed): it must be the graph's own precision and is
    checked against it, so an FP32 graph is never shipped as "fp16" by mistake.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    actual = graph_precision(onnx_path)
    if actual != precision:
        raise ValueError(f"{onnx_path} is a {actual} graph, asked for {precision}: a strongly typed network runs in "
                         "the graph's types (convert it with convert_to_low_precision first)")
    profiles = [dict(ranges)] if isinstance(ranges, Mapping) else [dict(r) for r in ranges]
    if not profiles:
        raise ValueError(f"{spec.name}: no optimization profile")
    _require_tensorrt()
    import tensorrt as trt

    start = time.perf_counter()

    logger = _logger()
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # by path: external data is found next to the graph
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise RuntimeError(f"TensorRT could not parse {onnx_path}:\n" + "\n".join(errors))
    _check_network(network, spec)

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    config.builder_optimization_level = optimization_level
    if not tf32:
        config.clear_flag(trt.BuilderFlag.TF32)
    shapes: list[dict[str, dict[str, list[int]]]] = []
    for ranges_i in profiles:
        profile = builder.create_optimization_profile()
        described: dict[str, dict[str, list[int]]] = {}
        for name, (lo, opt, hi) in spec.profile(ranges_i).items():
            profile.set_shape(name, trt.Dims(list(lo)), trt.Dims(list(opt)), trt.Dims(list(hi)))
            described[name] = {"min": list(lo), "opt": list(opt), "max": list(hi)}
        if config.add_optimization_profile(profile) < 0:
            raise RuntimeError(f"{spec.name}: invalid optimization profile {described}")
        shapes.append(described)

    cache_path = Path(timing_cache_path) if timing_cache_path else None
    cache_bytes = cache_path.read_bytes() if cache_path is not None and cache_path.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    if not config.set_timing_cache(cache, ignore_mismatch=False):  # from another GPU or TensorRT version
        log(f"  {spec.name}: timing cache {cache_path} does not match this GPU/TensorRT, starting a new one")
        cache_bytes = b""
        config.set_timing_cache(config.create_timing_cache(cache_bytes), ignore_mismatch=False)

    log(f"  {spec.name}: building {precision} plan, {len(profiles)} profile(s)")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build {spec.name} from {onnx_path} (see the log above)")
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    with open(plan_path, "wb") as f:
        f.write(serialized)
    if cache_path is not None:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        with open(cache_path, "wb") as f:
            f.write(config.get_timing_cache().serialize())

    info: dict[str, Any] = {
        "model": spec.name,
        "tensorrt_version": trt.__version__,
        "gpu": gpu_name(),
        "precision": precision,
        "strongly_typed": True,
        "tf32": tf32,
        "onnx": onnx_path.name,
        "profiles": shapes,
        "workspace_bytes": workspace_bytes,
        "builder_optimization_level": optimization_level,
        "timing_cache": str(cache_path) if cache_path is not None else None,
        "timing_cache_hit": bool(cache_bytes),
        "plan_bytes": plan_path.stat().st_size,
        "build_seconds": round(time.perf_counter() - start, 1),
        **(extra_info or {}),
    }
    plan_info_path(plan_path).write_text(json.dumps(info, indent=2) + "\n")
    log(f"  {spec.name}: {info['plan_bytes'] / 1e6:.1f} MB plan in {info['build_seconds']}s")
    return info


def plan_info_path(plan_path: str | Path) -> Path:
    plan_path = Path(plan_path)
    return plan_path.with_name(plan_path.name + PLAN_INFO_SUFFIX)


# --------------------------------------------------------------------------------------------- running a plan


def run_engine(plan_path: str | Path, inputs: Mapping[str, np.ndarray[Any, Any]]) -> dict[str, np.ndarray[Any, Any]]:
    """Run a plan once on GPU 0 (tests and smoke checks; Triton does this when serving). Picks the first
    optimization profile whose ranges contain the input shapes; buffers are torch CUDA tensors."""
    _require_tensorrt()
    import tensorrt as trt
    import torch

    torch_types = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16,
                   trt.DataType.BF16: torch.bfloat16, trt.DataType.INT32: torch.int32, trt.DataType.INT64: torch.int64}
    runtime = trt.Runtime(_logger())
    engine = runtime.deserialize_cuda_engine(Path(plan_path).read_bytes())
    if engine is None:
        raise RuntimeError(f"TensorRT could not deserialize {plan_path} (built with another TensorRT version?)")
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    input_names = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    output_names = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]

    def fits(profile: int) -> bool:
        for name in input_names:
            lo, _, hi = engine.get_tensor_profile_shape(name, profile)
            shape = inputs[name].shape
            if len(shape) != len(lo) or any(not lo[i] <= shape[i] <= hi[i] for i in range(len(shape))):
                return False
        return True

    profile = next((p for p in range(engine.num_optimization_profiles) if fits(p)), None)
    if profile is None:
        raise ValueError(f"{plan_path}: input shapes {({k: v.shape for k, v in inputs.items()})} fit no profile")
    context = engine.create_execution_context()
    stream = torch.cuda.Stream()  # type: ignore[no-untyped-call]
    context.set_optimization_profile_async(profile, stream.cuda_stream)
    buffers: dict[str, torch.Tensor] = {}
    for name in input_names:
        tensor = torch.from_numpy(np.ascontiguousarray(inputs[name])).to("cuda", torch_types[engine.get_tensor_dtype(name)])
        buffers[name] = tensor
        context.set_input_shape(name, trt.Dims(list(tensor.shape)))
        context.set_tensor_address(name, tensor.data_ptr())
    for name in output_names:
        shape = tuple(context.get_tensor_shape(name)[i] for i in range(len(context.get_tensor_shape(name))))
        buffers[name] = torch.empty(shape, dtype=torch_types[engine.get_tensor_dtype(name)], device="cuda")
        context.set_tensor_address(name, buffers[name].data_ptr())
    if not context.execute_async_v3(stream.cuda_stream):
        raise RuntimeError(f"{plan_path}: execution failed")
    stream.synchronize()
    return {name: buffers[name].float().cpu().numpy() for name in output_names}


# --------------------------------------------------------------------------------------------- the repository


def expert_names(info: CheckpointInfo) -> list[str]:
    return [C.EXPERT_MODELS[folder] for folder in info.expert_names]


def tensorrt_model_config(spec: ComponentSpec, *, num_profiles: int, parameters: Mapping[str, Any] | None = None,
                          instance_count: int = 1) -> Any:
    """config.pbtxt (ModelConfig) of a plan: `platform: "tensorrt_plan"`, KIND_GPU, `default_model_filename:
    "model.plan"`, every optimization profile available to the instance group (Triton picks the one that fits)."""
    config = build_model_config(spec, backend=None, platform=TENSORRT_PLATFORM, instance_kind="KIND_GPU",
                                instance_count=instance_count, parameters=parameters)
    config.default_model_filename = PLAN_FILE
    config.instance_group[0].profile.extend(str(i) for i in range(num_profiles))
    return config


def tensorrt_specs(info: CheckpointInfo, layout: Sequence[CacheEntry]) -> dict[str, tuple[ComponentSpec, str]]:
    """Served TensorRT models: name -> (declaration, precision class: "expert" runs in the requested precision,
    "vae" always in fp32)."""
    specs = {name: (C.transformer_spec(info, name), "expert") for name in expert_names(info)}
    for spec in C.vae_decoder_frame_specs(info, layout):
        specs[spec.name] = (spec, "vae")
    return specs


def write_tensorrt_configs(repository: str | Path, info: CheckpointInfo, layout: Sequence[CacheEntry], *,
                           precision: str = "fp16", shape_spec: ShapeSpec | None = None) -> dict[str, Path]:
    """Write config.pbtxt of the two experts and the two VAE frame models; returns model name -> config path."""
    shape_spec = shape_spec or load_shape_spec()
    written = {}
    for name, (spec, kind) in tensorrt_specs(info, layout).items():
        model_precision = precision if kind == "expert" else "fp32"
        num_profiles = len(profile_ranges(spec, shape_spec, info))
        config = tensorrt_model_config(spec, num_profiles=num_profiles,
                                       parameters={"engine": "tensorrt", "precision": model_precision})
        path = Path(repository) / name / "config.pbtxt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(to_pbtxt(config))
        written[name] = path
    return written


def _remove_graph(path: Path) -> None:
    path.unlink(missing_ok=True)
    path.with_name(path.name + ".data").unlink(missing_ok=True)


def build_repository_engines(repository: str | Path, info: CheckpointInfo, *, precision: str = "fp16",
                             shape_spec: ShapeSpec | None = None, work_dir: str | Path | None = None,
                             timing_cache: str | Path | None = None, keep_onnx: bool = False,
                             workspace_bytes: int = DEFAULT_WORKSPACE_BYTES, log: Log = print) -> dict[str, dict[str, Any]]:
    """Turn the ONNX repository (engine `onnx`) at `repository` into the TensorRT one, in place: plans for the two
    experts (in `precision`) and the two VAE frame graphs (fp32), their configs, the ONNX graphs removed unless
    `keep_onnx`. Intermediate graphs go to `work_dir` (default: `.<repository>.tensorrt` next to the repository,
    which also keeps the timing cache between builds). Returns model name -> plan info."""
    from wan22_triton.vae_frames import load_cache_layout

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    repo = Path(repository)
    shape_spec = shape_spec or load_shape_spec()
    work = Path(work_dir) if work_dir else repo.resolve().parent / f".{repo.resolve().name}.tensorrt"
    work.mkdir(parents=True, exist_ok=True)
    cache = Path(timing_cache) if timing_cache else work / "timing.cache"
    vae_version = repo / C.VAE_DECODER / "1"
    layout = load_cache_layout(vae_version)
    built: dict[str, dict[str, Any]] = {}
    for name, (spec, kind) in tensorrt_specs(info, layout).items():
        if kind == "expert":
            src = repo / name / "1" / EXPERT_ONNX
            model_precision = precision
        else:
            src = vae_version / f"{spec.name}.onnx"
            model_precision = "fp32"
        if not src.is_file():
            raise FileNotFoundError(f"{src} is missing: export the ONNX graphs first (python -m export --engine onnx)")
        extra: dict[str, Any] = {"shape_spec": shape_spec_dict(shape_spec)}
        graph = src
        if model_precision != "fp32":
            graph = work / name / f"model.{model_precision}.onnx"
            log(f"  {name}: converting to {model_precision}")
            extra["conversion"] = convert_to_low_precision(src, graph, model_precision).to_dict()
        built[name] = build_engine(graph, repo / name / "1" / PLAN_FILE, spec, profile_ranges(spec, shape_spec, info),
                                   model_precision, cache, workspace_bytes=workspace_bytes, extra_info=extra, log=log)
        if graph != src:
            _remove_graph(graph)
        if not keep_onnx:
            _remove_graph(src)
    write_tensorrt_configs(repo, info, layout, precision=precision, shape_spec=shape_spec)
    return built


def _read_info(repository: Path, checkpoint: str | None) -> CheckpointInfo:
    if checkpoint:
        from wan22_triton.checkpoint import read_checkpoint

        return read_checkpoint(checkpoint)
    return CheckpointInfo.load(repository / C.ORCHESTRATOR / "1")  # written there by export.repository


def main(argv: Iterable[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m export.tensorrt_build", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", default="model_repository", help="ONNX model repository to turn into plans")
    parser.add_argument("--checkpoint", help="checkpoint dir (default: the info the export stored in the repository)")
    parser.add_argument("--precision", choices=("fp16", "bf16", "fp32"), default="fp16", help="experts' precision")
    parser.add_argument("--shape-spec", help=f"shape spec JSON (default {SHAPE_SPEC_FILE})")
    parser.add_argument("--work-dir", help="intermediate graphs and timing cache")
    parser.add_argument("--timing-cache", help="timing cache file (read and updated)")
    parser.add_argument("--workspace-gib", type=float, default=DEFAULT_WORKSPACE_BYTES / (1 << 30))
    parser.add_argument("--keep-onnx", action="store_true", help="keep the ONNX graphs next to the plans")
    args = parser.parse_args(list(argv) if argv is not None else None)
    repo = Path(args.repository)
    start = time.perf_counter()
    build_repository_engines(repo, _read_info(repo, args.checkpoint), precision=args.precision,
                             shape_spec=load_shape_spec(args.shape_spec), work_dir=args.work_dir,
                             timing_cache=args.timing_cache, keep_onnx=args.keep_onnx,
                             workspace_bytes=int(args.workspace_gib * (1 << 30)))
    print(f"TensorRT plans built in {time.perf_counter() - start:.1f}s -> {repo}")


if __name__ == "__main__":
    main()
