"""The thin layer between Triton's Python backend (pb_utils) and the plain-Python serving code.

Only this module and `triton_models/` touch pb_utils; they import it lazily because it exists only inside the
Python-backend stub.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from wan22_triton.operations import watchdog


def pb_utils():
    import triton_python_backend_utils as pb  # provided by the stub

    return pb


def start_watchdog(args: Mapping[str, str]) -> watchdog.ComponentWatchdog:
    """This model's watcher of the server's other models' processes (operations.watchdog). Every model runs one, so
    a process that dies is reloaded as long as any model of the server lives, two orchestrators killed together
    included."""
    pb = pb_utils()
    return watchdog.ComponentWatchdog(args["model_name"], args["model_repository"],
                                      watchdog.ModelControl(pb.unload_model, pb.load_model),
                                      pb.Logger.log_info, pb.Logger.log_error).start()


def torch_device(args: Mapping[str, str], version_gpus: Callable[[int], Sequence[int]] | None = None) -> str:
    """The device of this model instance: its GPU for KIND_GPU; for KIND_MODEL (a model placing itself: a replica's
    version, wan22_triton.parallel.plan) the GPU `version_gpus(version)` lists at this instance's index; else the CPU."""
    kind = args.get("model_instance_kind")
    if kind == "GPU":
        return f"cuda:{args.get('model_instance_device_id', '0')}"
    if kind == "MODEL" and version_gpus is not None:
        index = int(args["model_instance_name"].rsplit("_", 1)[1])  # <model>_<group>_<index>
        return f"cuda:{version_gpus(int(args['model_version']))[index]}"
    return "cpu"


def card_bytes(device: str) -> int | None:
    """The memory of the instance's GPU (bytes); None on the CPU."""
    import torch

    where = torch.device(device)
    return torch.cuda.mem_get_info(where)[1] if where.type == "cuda" else None


def request_inputs(request, names: Iterable[str]) -> dict[str, Any]:
    """The inputs present in a request (optional ones may be absent): numpy arrays, or torch tensors for inputs
    that arrive in GPU memory (models configured with FORCE_CPU_ONLY_INPUT_TENSORS "no", called by a GPU caller)."""
    pb = pb_utils()
    out = {}
    for name in names:
        tensor = pb.get_input_tensor_by_name(request, name)
        if tensor is not None:
            out[name] = _from_pb(tensor)
    return out


def input_shape(request, name: str) -> tuple[int, ...] | None:
    """The shape of an input as sent (None when absent), without reading its data."""
    tensor = pb_utils().get_input_tensor_by_name(request, name)
    return None if tensor is None else tuple(int(d) for d in tensor.shape())


def response(outputs: Mapping[str, Any]):
    """numpy arrays or torch tensors (CUDA ones leave through DLPack, without a host copy)."""
    pb = pb_utils()
    return pb.InferenceResponse(output_tensors=[_to_pb(k, v) for k, v in outputs.items()])


def error_response(exc: BaseException):
    """INVALID_ARG for bad input, CANCELLED for a cancelled request, INTERNAL for anything else."""
    from wan22_triton.errors import Cancelled, RequestError

    pb = pb_utils()
    if isinstance(exc, RequestError):
        code = pb.TritonError.INVALID_ARG
    elif isinstance(exc, Cancelled):
        code = pb.TritonError.CANCELLED
    else:
        code = pb.TritonError.INTERNAL
    return pb.InferenceResponse(error=pb.TritonError(str(exc), code))


def _to_pb(name: str, value):
    """numpy arrays and CPU torch tensors as numpy; CUDA tensors through DLPack, without a copy."""
    pb = pb_utils()
    if not isinstance(value, np.ndarray) and value.device.type == "cpu":
        value = value.numpy()
    if isinstance(value, np.ndarray):
        return pb.Tensor(name, np.ascontiguousarray(value))
    import torch
    from torch.utils.dlpack import to_dlpack

    value = value.contiguous()
    torch.cuda.current_stream(value.device).synchronize()  # the other process reads it as soon as it is handed over
    return pb.Tensor.from_dlpack(name, to_dlpack(value))


def _from_pb(tensor):
    """CPU tensors as numpy; GPU tensors as torch tensors that stay on the GPU."""
    if tensor.is_cpu():
        return tensor.as_numpy()
    from torch.utils.dlpack import from_dlpack

    return from_dlpack(tensor.to_dlpack())


def bls_infer(
    model_name: str, inputs: Mapping[str, Any], output_names: list[str], output_device: str = "cpu",
    model_version: int = -1,
) -> dict[str, Any]:
    """One synchronous BLS call; a failure of the called model is raised with its message.

    output_device "cuda:N": ask for the outputs in that GPU's memory (they come back as torch tensors).
    model_version: that version of the model (a replica's, wan22_triton.parallel.plan); -1: the latest."""
    pb = pb_utils()
    extra = {}
    if output_device.startswith("cuda"):
        gpu = int(output_device.partition(":")[2] or 0)
        extra["preferred_memory"] = pb.PreferredMemory(pb.TRITONSERVER_MEMORY_GPU, gpu)
    request = pb.InferenceRequest(
        model_name=model_name,
        inputs=[_to_pb(k, v) for k, v in inputs.items()],
        requested_output_names=output_names,
        model_version=model_version,
        **extra,
    )
    result = request.exec()
    if result.has_error():
        raise RuntimeError(f"{model_name}: {result.error().message()}")
    return {name: _from_pb(pb.get_output_tensor_by_name(result, name)) for name in output_names}


def execute_each(requests, handle, logger) -> list:
    """Run `handle(request) -> response` per request; an exception becomes that request's error response."""
    responses = []
    for request in requests:
        try:
            responses.append(handle(request))
        except Exception as e:  # a failure must answer this request, never take the stub down
            responses.append(_failed(e, logger))
    return responses


def execute_together(requests, names: tuple[str, ...], run, logger) -> list | None:
    """Requests that carry exactly the inputs `names`, of one shape past the batch axis, run as one batch:
    `run(inputs) -> outputs` on their concatenation, each request answered with its own rows (a failure answers
    all). None when they differ: the caller runs them one by one."""
    if any(len(r.inputs()) != len(names) for r in requests):
        return None  # optional inputs (an adapter, a release) belong to one request
    parts = [request_inputs(r, names) for r in requests]
    if any(set(p) != set(names) for p in parts) or len({tuple(p[n].shape[1:] for n in names) for p in parts}) != 1:
        return None
    import torch

    def concat(values: list) -> Any:
        if all(isinstance(v, np.ndarray) for v in values):
            return np.concatenate(values)
        return torch.cat([torch.as_tensor(v) for v in values])

    rows = np.cumsum([0] + [p[names[0]].shape[0] for p in parts])
    try:
        outputs = run({n: concat([p[n] for p in parts]) for n in names})
    except Exception as e:
        return [_failed(e, logger) for _ in requests]
    return [response({k: v[rows[i]:rows[i + 1]] for k, v in outputs.items()}) for i in range(len(requests))]


def _failed(exc: BaseException, logger):
    """The error response of a request, logged: bad input and cancellations as info, anything else as an error."""
    from wan22_triton.errors import Cancelled, RequestError

    if isinstance(exc, (RequestError, Cancelled)):
        logger.log_info(f"request rejected: {exc}")
    else:
        logger.log_error(f"request failed: {type(exc).__name__}: {exc}")
    return error_response(exc)
