"""Generate a video over HTTP: python -m clients.http_client --prompt "..." --output out.mp4"""

from __future__ import annotations

import time
from typing import Any

import tritonclient.http as httpclient

from .admin import admin_headers
from .common import (MODEL, model_fps, one_line_errors, output_names, parse_args, request_arrays, request_values, save,
                     unpack)


def _client(url: str, timeout: float | None) -> httpclient.InferenceServerClient:
    timeout = timeout or 3600.0  # generations take minutes; the library's default is 60 s
    return httpclient.InferenceServerClient(url, connection_timeout=timeout, network_timeout=timeout)


def generate(url: str, values: dict[str, Any], model: str = MODEL, timeout: float | None = None,
             admin_key: str | None = None) -> dict[str, Any]:
    """One request to `wan22_t2v`; returns video, seed and the server's stage seconds. `admin_key` is sent along."""
    client = _client(url, timeout)
    try:
        inputs = []
        for name, (dtype, array) in request_arrays(values).items():
            tensor = httpclient.InferInput(name, list(array.shape), dtype)
            tensor.set_data_from_numpy(array, binary_data=True)
            inputs.append(tensor)
        outputs = [httpclient.InferRequestedOutput(n, binary_data=True) for n in output_names(values)]
        return unpack(client.infer(model, inputs, outputs=outputs, headers=admin_headers(admin_key, "http")))
    finally:
        client.close()


def fps_of(url: str, model: str = MODEL, admin_key: str | None = None) -> float:
    client = _client(url, None)
    try:
        return model_fps(client.get_model_config(model, headers=admin_headers(admin_key, "http")))
    finally:
        client.close()


def _quiet_ctrl_c() -> None:
    """Ctrl-C lands in gevent's hub while a request waits, and the hub prints it (with a timestamp) before it reaches
    one_line_errors: that print is left out, the interruption itself goes on as before."""
    import gevent

    hub = gevent.get_hub()
    print_exception = hub.print_exception

    def quiet(context, kind, value, tb):
        if not (isinstance(kind, type) and issubclass(kind, KeyboardInterrupt)):
            print_exception(context, kind, value, tb)

    hub.print_exception = quiet


def main() -> None:
    args = parse_args("localhost:8000", __doc__)
    _quiet_ctrl_c()
    with one_line_errors(args.url, "HTTP", args.timeout):
        fps = args.fps or fps_of(args.url, args.model, args.admin_key)
        started = time.perf_counter()
        out = generate(args.url, request_values(args), args.model, args.timeout, args.admin_key)
        save(out, args.output, fps, time.perf_counter() - started)


if __name__ == "__main__":
    main()
