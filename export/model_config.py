"""config.pbtxt from a component declaration, built as Triton's own ModelConfig protobuf so it is valid by construction."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from wan22_triton.components.common import ComponentSpec, Dim, QueuePolicy, TensorSpec
from wan22_triton.manifest import MANIFEST_PARAMETER, Manifest


def _dims(tensor: TensorSpec, batched: bool) -> list[int]:
    shape = tensor.shape[1:] if batched else tensor.shape
    return [-1 if isinstance(d, Dim) else int(d) for d in shape]


# A warm-up marker's value: one true BOOL (a sample's requests carry batch 1), in the model's folder where Triton
# looks for input_data_file.
WARMUP_FOLDER = "warmup"
WARMUP_TRUE_FILE = "true"
WARMUP_TRUE_BYTES = b"\x01"


def build_model_config(
    spec: ComponentSpec,
    *,
    backend: str | None = "python",
    platform: str | None = None,
    instance_kind: str = "KIND_CPU",
    instance_count: int = 1,
    gpus: tuple[int, ...] = (),  # KIND_GPU: `instance_count` instances on each; none listed: on every visible GPU
    parameters: Mapping[str, Any] | None = None,
    optional_inputs: frozenset[str] = frozenset(),
    decoupled: bool = False,
    queue: QueuePolicy = QueuePolicy(),
    warmup: Sequence[tuple[str, Mapping[str, int]]] = (),  # (name, symbol values incl. batch) per sample
    warmup_markers: frozenset[str] = frozenset(),  # optional BOOL inputs sent true in each sample (WARMUP_TRUE_FILE)
    versions: int = 1,  # versions 1..N all served (N > 1: a version per replica, wan22_triton.parallel.plan)
) -> mc.ModelConfig:
    config = mc.ModelConfig(name=spec.name, max_batch_size=spec.max_batch_size)
    if backend:
        config.backend = backend
    if platform:
        config.platform = platform
    batched = spec.max_batch_size > 0
    for t in spec.inputs:
        tensor = config.input.add(
            name=t.name, data_type=mc.DataType.Value(f"TYPE_{t.triton_dtype}"), dims=_dims(t, batched),
            optional=t.name in optional_inputs,
        )
        if not tensor.dims:  # batch-only tensor ([B]): Triton wants dims [1] reshaped to a scalar per item
            tensor.dims.append(1)
            tensor.reshape.SetInParent()
    for t in spec.outputs:
        config.output.add(name=t.name, data_type=mc.DataType.Value(f"TYPE_{t.triton_dtype}"), dims=_dims(t, batched))
    config.instance_group.add(kind=mc.ModelInstanceGroup.Kind.Value(instance_kind), count=instance_count, gpus=gpus)
    if versions > 1:
        config.version_policy.specific.versions.extend(range(1, versions + 1))
    for key, value in (parameters or {}).items():
        text = value if isinstance(value, str) else json.dumps(value)
        config.parameters[key].string_value = text
    if decoupled:
        config.model_transaction_policy.decoupled = True
    if queue.max_seconds:
        # Triton's queue policy: a request still waiting after the timeout is rejected (clients may ask for less).
        policy = config.dynamic_batching.default_queue_policy
        policy.timeout_action = mc.ModelQueuePolicy.TimeoutAction.REJECT
        policy.default_timeout_microseconds = int(queue.max_seconds * 1e6)
        policy.allow_timeout_override = True
    if queue.max_size:  # Triton refuses a request that would wait behind more (UNAVAILABLE, HTTP 503)
        config.dynamic_batching.default_queue_policy.max_queue_size = queue.max_size
    for name, sizes in warmup:
        # Triton runs each sample through the model before it reports READY (compiles happen then, not in a
        # request). Zeros: only the shapes matter, and they are the same on every run.
        sample = config.model_warmup.add(name=name, batch_size=sizes["batch"] if batched else 1, count=1)
        for t in spec.inputs:
            if t.name not in optional_inputs or t.name in warmup_markers:
                shape = t.resolve(sizes)
                data = {"input_data_file": WARMUP_TRUE_FILE} if t.name in warmup_markers else {"zero_data": True}
                sample.inputs[t.name].CopyFrom(mc.ModelWarmup.Input(
                    data_type=mc.DataType.Value(f"TYPE_{t.triton_dtype}"),
                    dims=list(shape[1:] if batched else shape) or [1],  # as the input's dims: [B] is [1] per item
                    **data))
    return config


def to_pbtxt(config: mc.ModelConfig) -> str:
    return text_format.MessageToString(config)


def parse_pbtxt(text: str) -> mc.ModelConfig:
    return text_format.Parse(text, mc.ModelConfig())


def read_manifest(model_dir: str | Path) -> Manifest:
    """The manifest the export wrote into `<model_dir>/config.pbtxt`."""
    config = parse_pbtxt((Path(model_dir) / "config.pbtxt").read_text())
    return Manifest.from_json(config.parameters[MANIFEST_PARAMETER].string_value)
