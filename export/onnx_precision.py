"""FP16/BF16 expert graphs with FP32 islands, made and checked on the CPU (no TensorRT here).

TensorRT builds our plans from STRONGLY TYPED networks (`export.tensorrt_engine`): every tensor runs in the type the
ONNX graph gives it, so the precision of a plan is decided here, in the graph. `convert_to_low_precision` writes the
FP16 (or BF16) expert graph with its FP32 islands (`FP32_KEEP`) and explicit Casts; onnxruntime runs that same graph
in the tests, TensorRT builds it. `graph_precision` reads back which precision a graph is in.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from wan22_triton.components.expert import TIMESTEP
from wan22_triton.options import Precision

LOW_PRECISION_TYPES = {Precision.FP16: TensorProto.FLOAT16, Precision.BF16: TensorProto.BFLOAT16}
FP16_MAX = 65504.0


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


def fp32_nodes(model: onnx.ModelProto, types: Mapping[str, int], fp32_inputs: Sequence[str] = (TIMESTEP,),
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
    precision: Precision
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


def convert_to_low_precision(src: str | Path, dst: str | Path, precision: Precision = Precision.FP16,
                             fp32_inputs: Sequence[str] = (TIMESTEP,), rules: Sequence[str] = FP32_RULES,
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
        raise ValueError(f"precision must be one of {', '.join(LOW_PRECISION_TYPES)}, got {precision!r}")
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
    suffix: dict[int, str] = {TensorProto.FLOAT: Precision.FP32, low: precision}

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


def graph_precision(path: str | Path) -> Precision:
    """The precision of a graph's weights: fp16/bf16 if any float initializer has that type, else fp32."""
    model = onnx.load(str(path), load_external_data=False)
    found = {i.data_type for i in model.graph.initializer}
    for name, proto_type in LOW_PRECISION_TYPES.items():
        if proto_type in found:
            return name
    return Precision.FP32
