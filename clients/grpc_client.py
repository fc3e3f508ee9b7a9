"""Generate a video over gRPC: python -m clients.grpc_client --prompt "..." --output out.mp4"""

from __future__ import annotations

import time
from typing import Any

import tritonclient.grpc as grpcclient

from .common import MODEL, OUTPUTS, model_fps, parse_args, request_arrays, request_values, save, unpack


def generate(url: str, values: dict[str, Any], model: str = MODEL, timeout: float | None = None) -> dict[str, Any]:
    """One request to `wan22_t2v`; returns video, seed and the server's stage seconds."""
    with grpcclient.InferenceServerClient(url) as client:
        inputs = []
        for name, (dtype, array) in request_arrays(values).items():
            tensor = grpcclient.InferInput(name, list(array.shape), dtype)
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        outputs = [grpcclient.InferRequestedOutput(n) for n in OUTPUTS]
        return unpack(client.infer(model, inputs, outputs=outputs, client_timeout=timeout))


def fps_of(url: str, model: str = MODEL) -> float:
    with grpcclient.InferenceServerClient(url) as client:
        return model_fps(client.get_model_config(model, as_json=True)["config"])


def main() -> None:
    args = parse_args("localhost:8001", __doc__)
    fps = args.fps or fps_of(args.url, args.model)
    started = time.perf_counter()
    out = generate(args.url, request_values(args), args.model, args.timeout)
    save(out, args.output, fps, time.perf_counter() - started)


if __name__ == "__main__":
    main()
