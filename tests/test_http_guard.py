"""The HTTP guard (server/http_guard.py) in front of real tritonservers.

Two servers: the session's `torch_server` (conftest) for the Wan2.2 models, and `probe`, a one-model repository
written here (`guard_probe`: runs for `seconds`, watching `is_cancelled()` and the guard's abandon marker, then
answers a `blob` of `blob_bytes` and what it saw) for large outputs, forwarded headers and abandonment. The test that
shows Triton dying on the bomb without the guard starts a throwaway probe server of its own.
"""

from __future__ import annotations

import gzip
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from clients import http_client
from clients.common import request_arrays
from server.http_guard import HttpGuard
from server.inference_request import InferenceLimits
from server.proxy import GuardSettings
from server.triton_server import TritonServer
from wan22_triton.operations import abandonment

from .conftest import Server

ROOT = Path(__file__).resolve().parents[1]
REQUEST = dict(prompt="a lantern in the fog", num_frames=5, height=32, width=48, num_inference_steps=2, seed=11)
BOMB = {"inputs": [{"name": "num_frames", "shape": [1099511627776], "datatype": "INT32", "data": [5]}]}

PROBE = "guard_probe"
PROBE_CONFIG = f"""
name: "{PROBE}"
backend: "python"
max_batch_size: 0
input {{ name: "seconds" data_type: TYPE_FP32 dims: 1 }}
input {{ name: "blob_bytes" data_type: TYPE_INT64 dims: 1 }}
output {{ name: "blob" data_type: TYPE_UINT8 dims: -1 }}
output {{ name: "outcome" data_type: TYPE_STRING dims: 1 }}
output {{ name: "parameters" data_type: TYPE_STRING dims: 1 }}
instance_group {{ count: 2 kind: KIND_CPU }}
"""
PROBE_MODEL = f"""
import sys
import time

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, {str(ROOT)!r})  # this checkout's wan22_triton: the stub imports only what its environment installs
from wan22_triton.operations.abandonment import AbandonWatch


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            seconds = float(pb_utils.get_input_tensor_by_name(request, "seconds").as_numpy()[0])
            blob_bytes = int(pb_utils.get_input_tensor_by_name(request, "blob_bytes").as_numpy()[0])
            abandoned = AbandonWatch(request.parameters())
            started, outcome = time.monotonic(), "finished"
            while time.monotonic() - started < seconds:
                if request.is_cancelled():
                    outcome = "cancelled"
                    break
                if abandoned():
                    outcome = "abandoned"
                    break
                time.sleep(0.05)
            pb_utils.Logger.log_info(f"guard_probe: {{outcome}} after {{time.monotonic() - started:.2f}} s")
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("blob", blob(blob_bytes)),
                pb_utils.Tensor("outcome", np.array([outcome.encode()], dtype=object)),
                pb_utils.Tensor("parameters", np.array([request.parameters().encode()], dtype=object)),
            ]))
        return responses


def blob(size):
    return np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8)
"""
# Headers Triton hands the probe as request parameters: the guard's abandon token, and one to show pass-through.
PROBE_FORWARD_PATTERN = f"{abandonment.FORWARD_PATTERN}|^X-Probe-"  # urllib sends header names title-cased


def expected_blob(size: int) -> np.ndarray:
    return np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8)


def write_probe_repository(root: Path) -> Path:
    (root / PROBE / "1").mkdir(parents=True)
    (root / PROBE / "config.pbtxt").write_text(PROBE_CONFIG)
    (root / PROBE / "1" / "model.py").write_text(PROBE_MODEL)
    return root


def probe_request(seconds: float, blob_bytes: int = 0) -> dict:
    return {"inputs": [{"name": "seconds", "shape": [1], "datatype": "FP32", "data": [seconds]},
                       {"name": "blob_bytes", "shape": [1], "datatype": "INT64", "data": [blob_bytes]}],
            "outputs": [{"name": "outcome"}, {"name": "parameters"}]}


def probe_inputs(client_module, seconds: float, blob_bytes: int = 0) -> list:
    """The probe's inputs for tritonclient.http or tritonclient.grpc."""
    inputs = [client_module.InferInput("seconds", [1], "FP32"), client_module.InferInput("blob_bytes", [1], "INT64")]
    inputs[0].set_data_from_numpy(np.array([seconds], np.float32))
    inputs[1].set_data_from_numpy(np.array([blob_bytes], np.int64))
    return inputs


def post(url: str, path: str, body: bytes, headers: dict | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(f"http://{url}{path}", data=body, method="POST", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def triton_http(server: TritonServer) -> str:
    """Triton's own HTTP host:port, with no guard between (`triton_http_url` once the launcher puts one in front)."""
    return getattr(server, "triton_http_url", server.http_url)


def infer_path(model: str) -> str:
    return f"/v2/models/{model}/infer"


def error_of(body: bytes) -> str:
    return json.loads(body)["error"]


def log_end(server: TritonServer) -> int:
    assert server.log_file is not None
    return server.log_file.stat().st_size


def log_since(server: TritonServer, offset: int) -> str:
    assert server.log_file is not None
    return server.log_file.read_bytes()[offset:].decode(errors="replace")


def wait_for_log(server: TritonServer, offset: int, needle: str, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while needle not in log_since(server, offset):
        assert time.monotonic() < deadline, f"{needle!r} not in the log:\n{log_since(server, offset)[-3000:]}"
        time.sleep(0.1)
    return log_since(server, offset)


def send_and_disconnect(url: str, path: str, body: bytes, after_s: float) -> None:
    """What a client that times out does: send the request, wait, close the connection without reading."""
    host, port = url.rsplit(":", 1)
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {url}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        time.sleep(after_s)


# --------------------------------------------------------------------------- #
# Fixtures
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="module")
def guard(torch_server):
    with HttpGuard("127.0.0.1:0", triton_http(torch_server)) as running:
        yield running


@pytest.fixture(scope="module")
def probe(served, tmp_path_factory):
    markers = tmp_path_factory.mktemp("guard-probe") / "abandoned"
    server = served(repository=write_probe_repository,
                    extra_args=[f"--http-header-forward-pattern={PROBE_FORWARD_PATTERN}"],
                    env={abandonment.DIR_ENV: str(markers)})
    return server, markers


@pytest.fixture(scope="module")
def probe_guard(probe):
    server, markers = probe
    settings = GuardSettings(abandon_dir=str(markers))
    with HttpGuard("127.0.0.1:0", triton_http(server), settings) as running:
        yield running


# --------------------------------------------------------------------------- #
# Refusals
# --------------------------------------------------------------------------- #


@pytest.mark.server
def test_without_the_guard_the_bomb_kills_tritonserver(tmp_path):
    """The evidence: the bytes the guard refuses abort a bare tritonserver 2.51 (SIGABRT, std::bad_alloc)."""
    bomb = json.dumps({"inputs": [{"name": "blob_bytes", "shape": [1099511627776], "datatype": "INT64",
                                   "data": [1]}]}).encode()
    server = Server(write_probe_repository(tmp_path / "repo")).start()  # its own: the bomb kills it
    try:
        with HttpGuard("127.0.0.1:0", triton_http(server)) as running:
            status, body = post(running.url, infer_path(PROBE), bomb)
        assert status == 400 and "blob_bytes" in error_of(body)
        assert server.is_running()
        with pytest.raises((ConnectionError, urllib.error.URLError)):
            post(triton_http(server), infer_path(PROBE), bomb)
        deadline = time.monotonic() + 30
        while server.is_running() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not server.is_running(), "tritonserver survived the bomb: is the guard still needed?"
        assert "std::bad_alloc" in log_since(server, 0)
    finally:
        assert server.stop() == -signal.SIGABRT


def as_json(request: dict) -> tuple[bytes, dict]:
    return json.dumps(request).encode(), {}


def as_binary(request: dict, binary_bytes: int) -> tuple[bytes, dict]:
    """`request` as the JSON part of the binary extension, followed by `binary_bytes` zero bytes."""
    head = json.dumps(request).encode()
    return head + b"\0" * binary_bytes, {"Inference-Header-Content-Length": str(len(head))}


def num_frames_input(shape: list, **fields) -> dict:
    return {"inputs": [{"name": "num_frames", "shape": shape, "datatype": "INT32", **fields}]}


BINARY_4 = {"parameters": {"binary_data_size": 4}}


@pytest.mark.parametrize("body, headers, rule", [
    pytest.param(*as_json(BOMB), "every dimension must be an integer in [0, 268435456]", id="huge-dimension"),
    pytest.param(*as_json(num_frames_input([-1], data=[5])), "every dimension must be an integer",
                 id="negative-dimension"),
    pytest.param(*as_json(num_frames_input([65536, 65536], data=[5])), "4294967296 elements, more than the limit",
                 id="too-many-elements"),
    pytest.param(*as_json(num_frames_input([3], data=[5, 9])), "'data' holds 2 values but shape [3] has 3 elements",
                 id="data-count"),
    pytest.param(*as_json(num_frames_input([1], data=[5], **BINARY_4)), "must set exactly one of", id="two-sources"),
    pytest.param(*as_json(num_frames_input([1], data=[4294967301])), "4294967301 is not a valid INT32 value",
                 id="int32-out-of-range"),  # Triton's parser would take it as 5
    pytest.param(*as_json({"inputs": [{"name": "guidance_scale", "shape": [1], "datatype": "FP32", "data": ["7.5"]}]}),
                 "'7.5' is not a valid FP32 value (a JSON number)", id="fp32-as-string"),  # Triton: 500
    pytest.param(*as_json(num_frames_input([1], data=["9" * 5000])), "5000 bytes of text is not a valid INT32 value",
                 id="long-value-not-echoed"),
    pytest.param(b'{"inputs": [{"name": "num_frames", "shape": [1099511627776], "shape": [1], "datatype": "INT32",'
                 b' "data": [5]}]}', {}, "repeats the key 'shape'", id="duplicate-key"),
    pytest.param(gzip.compress(json.dumps(BOMB).encode()), {"Content-Encoding": "gzip"}, "every dimension must be",
                 id="gzip-bomb"),
    pytest.param(*as_binary(num_frames_input([1099511627776], **BINARY_4), 4), "every dimension must be",
                 id="binary-huge-dimension"),
    pytest.param(*as_binary(num_frames_input([2], **BINARY_4), 4),
                 "binary_data_size is 4 bytes, but 2 INT32 elements take 8", id="binary-size"),
    pytest.param(*as_binary(num_frames_input([1], **BINARY_4), 12), "add up to 4 bytes, but the body carries 12",
                 id="binary-extra-bytes"),
])
def test_bad_shapes_are_refused_and_the_server_keeps_serving(guard, body, headers, rule):
    status, answer = post(guard.url, infer_path("wan22_t2v"), body, headers)
    assert status == 400, answer
    message = error_of(answer)
    assert rule in message and ("input '" in message or "inference request" in message), message
    # Nothing reached Triton's parser: the guard and Triton behind it serve the next request.
    assert http_client.generate(guard.url, REQUEST)["video"].shape == (5, 32, 48, 3)


def test_bodies_over_the_bounds_are_413(probe):
    server, _ = probe
    settings = GuardSettings(max_body_bytes=1 << 20, inference=InferenceLimits(max_json_bytes=64 << 10))
    with HttpGuard("127.0.0.1:0", triton_http(server), settings) as small:
        status, answer = post(small.url, infer_path(PROBE), b"\0" * (2 << 20))  # declared length: refused unread
        assert status == 413 and "--max-body-bytes" in error_of(answer)
        chunked = iter([b"\0" * (512 << 10)] * 4)  # no declared length: counted while it streams
        status, answer = post(small.url, "/v2/repository/index", chunked, {"Transfer-Encoding": "chunked"})
        assert status == 413 and "--max-body-bytes" in error_of(answer)
        values = {"inputs": [{"name": "seconds", "shape": [20000], "datatype": "FP32", "data": [0.0] * 20000}]}
        status, answer = post(small.url, infer_path(PROBE), json.dumps(values).encode())
        assert status == 413 and "--max-json-bytes" in error_of(answer) and "binary" in error_of(answer)
        status, answer = post(small.url, infer_path(PROBE), json.dumps(probe_request(0)).encode())
        assert status == 200 and json.loads(answer)["outputs"][0]["data"] == ["finished"]


def _stalled_post(url: str, path: str, head: bytes, declared: int, headers: str = "") -> tuple[int, float]:
    """A client that sends its request line, headers and the first bytes of a `declared`-byte body, then nothing:
    the status it gets back, and after how long."""
    host, port = url.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {url}\r\nContent-Type: application/octet-stream\r\n{headers}"
                     f"Content-Length: {declared}\r\n\r\n".encode() + head)
        started = time.monotonic()
        status_line = sock.makefile("rb").readline()
    return int(status_line.split()[1]), time.monotonic() - started


def test_a_client_that_stalls_its_body_gets_408_and_the_guard_serves_on(probe):
    """A slow client (slowloris) would hold its connection, and Triton's, for as long as it trickles: no byte for
    `body_idle_s` and it is answered 408, whether the guard still reads the JSON part or already streams the rest."""
    server, _ = probe
    idle_s = 1.0
    with HttpGuard("127.0.0.1:0", triton_http(server), GuardSettings(body_idle_s=idle_s)) as guard:
        whole = json.dumps(probe_request(0)).encode()
        binary = {"inputs": [{"name": "seconds", "shape": [1], "datatype": "FP32", "parameters": {"binary_data_size": 4}},
                             {"name": "blob_bytes", "shape": [1], "datatype": "INT64", "data": [0]}]}
        head = json.dumps(binary).encode()
        cases = {
            "the JSON part": (infer_path(PROBE), whole[:20], len(whole), ""),
            "the binary part, streaming": (infer_path(PROBE), head, len(head) + 4,
                                           f"Inference-Header-Content-Length: {len(head)}\r\n"),
            "another API's body": ("/v2/repository/index", b"{", 2, ""),
        }
        for case, (path, sent, declared, headers) in cases.items():
            status, after = _stalled_post(guard.url, path, sent, declared, headers)
            assert status == 408 and idle_s <= after < idle_s + 10, (case, status, after)
        status, answer = post(guard.url, infer_path(PROBE), whole)
        assert status == 200 and json.loads(answer)["outputs"][0]["data"] == ["finished"]


def test_a_compressed_raw_input_is_bounded_as_it_inflates(probe):
    """Raw-input mode (Inference-Header-Content-Length: 0) has no JSON to check, but Triton inflates the whole body
    first: a 2 KiB gzip body of 2 MiB is refused at a 1 MiB bound, before Triton sees it."""
    server, _ = probe
    with HttpGuard("127.0.0.1:0", triton_http(server), GuardSettings(max_body_bytes=1 << 20)) as small:
        bomb = gzip.compress(b"\0" * (2 << 20))
        status, answer = post(small.url, infer_path(PROBE), bomb,
                              {"Content-Encoding": "gzip", "Inference-Header-Content-Length": "0"})
        assert status == 413 and "inflates to more than" in error_of(answer), answer
        status, answer = post(small.url, infer_path(PROBE), json.dumps(probe_request(0)).encode())
        assert status == 200  # and the server keeps serving


def test_health_answers_while_many_heavy_bodies_are_checked(probe):
    """The guard checks bodies off its event loop: 24 gzip requests, each inflating to a ~4 MiB JSON list the guard
    parses and refuses, keep /v2/health/ready answering (checked on the loop, they held it for seconds)."""
    from concurrent.futures import ThreadPoolExecutor

    server, _ = probe
    values = {"inputs": [{"name": "seconds", "shape": [1], "datatype": "FP32", "data": [0.0] * 700_000}]}
    body = gzip.compress(json.dumps(values).encode())
    headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
    settings = GuardSettings(inference=InferenceLimits(max_json_bytes=64 << 20))
    with HttpGuard("127.0.0.1:0", triton_http(server), settings) as guard, ThreadPoolExecutor(24) as pool:
        started = time.monotonic()
        flood = [pool.submit(post, guard.url, infer_path(PROBE), body, headers) for _ in range(24)]
        time.sleep(0.5)  # the first bodies are being checked
        waits = []
        for _ in range(5):
            t0 = time.monotonic()
            with urllib.request.urlopen(f"http://{guard.url}/v2/health/ready", timeout=60) as response:
                assert response.status == 200
            waits.append(time.monotonic() - t0)
        assert all(f.result()[0] == 400 for f in flood)  # each refused: 700,000 elements for a shape of 1
        flood_s = time.monotonic() - started
    # Relative to the flood, so a loaded machine slows both alike (measured on 2 idle cores: the longest wait 0.35 s
    # of a 3.6 s flood; checked on the loop, the first probe waited for nearly all of it, 3.5 s).
    assert max(waits) < 0.5 * flood_s, (waits, flood_s)


@pytest.mark.parametrize("endpoint", ["generate", "generate_stream"])
def test_the_generate_extension_is_refused_with_the_way_to_infer(guard, endpoint):
    body = json.dumps({"prompt": "x", "num_frames": 4294967301}).encode()  # INT32 wrap: 5 frames in Triton
    status, answer = post(guard.url, f"/v2/models/wan22_t2v/{endpoint}", body, {"Content-Type": "application/json"})
    assert status == 403 and "/infer" in error_of(answer), answer


# --------------------------------------------------------------------------- #
# What passes
# --------------------------------------------------------------------------- #


def _video(url: str, binary: bool, compression: str | None = None) -> np.ndarray:
    """wan22_t2v's frames for REQUEST, inputs and output as JSON values or in the binary extension; `compression`
    both ways (the guard inflates a copy of the request to check it, and passes Triton's compressed answer on)."""
    inputs = []
    for name, (dtype, array) in request_arrays(REQUEST).items():
        tensor = httpclient.InferInput(name, list(array.shape), dtype)
        tensor.set_data_from_numpy(array, binary_data=binary)
        inputs.append(tensor)
    client = httpclient.InferenceServerClient(url, network_timeout=300)
    try:
        outputs = [httpclient.InferRequestedOutput("video", binary_data=binary)]
        result = client.infer("wan22_t2v", inputs, outputs=outputs, request_compression_algorithm=compression,
                              response_compression_algorithm=compression)
        return result.as_numpy("video")
    finally:
        client.close()


@pytest.mark.parametrize("binary, compression", [(False, None), (True, None), (True, "gzip")],
                         ids=["json", "binary", "binary-gzip"])
def test_inference_through_the_guard_equals_direct(torch_server, guard, binary, compression):
    through = _video(guard.url, binary, compression)
    assert through.shape == (5, 32, 48, 3) and np.array_equal(through, _video(triton_http(torch_server), binary))


def test_a_100mb_binary_output_passes_intact(probe_guard):
    size = 100_000_000
    client = httpclient.InferenceServerClient(probe_guard.url, network_timeout=300)
    try:
        outputs = [httpclient.InferRequestedOutput("blob", binary_data=True)]
        result = client.infer(PROBE, probe_inputs(httpclient, 0.0, size), outputs=outputs)
    finally:
        client.close()
    assert np.array_equal(result.as_numpy("blob"), expected_blob(size))


def test_other_requests_and_headers_pass_unchanged(probe, probe_guard):
    server, _ = probe
    for path in (f"/v2/models/{PROBE}/config", f"/v2/models/{PROBE}", "/v2/models/nope", "/v2/health/ready"):
        assert _get(probe_guard.url, path) == _get(triton_http(server), path), path
    # The admin key's header reaches Triton's restricted-API check.
    stats, admin = f"/v2/models/{PROBE}/stats", server.admin_headers("http")
    refused = _get(triton_http(server), stats)
    assert refused[0] == 403 and _get(probe_guard.url, stats) == refused
    assert _get(probe_guard.url, stats, admin)[0] == 200
    # A request header reaches Triton as sent (here as a request parameter, by the forward pattern); a client's own
    # abandon token does not: the guard sets that one.
    status, answer = post(probe_guard.url, infer_path(PROBE), json.dumps(probe_request(0)).encode(),
                          {"x-probe-note": "kept as sent", abandonment.TOKEN_HEADER: "0" * 32})
    parameters = json.loads(json.loads(answer)["outputs"][1]["data"][0])
    assert status == 200 and parameters["X-Probe-Note"] == "kept as sent"
    assert parameters[abandonment.TOKEN_HEADER] != "0" * 32


def _get(url: str, path: str, headers: dict | None = None) -> tuple[int, str | None, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(f"http://{url}{path}", headers=headers or {}),
                                    timeout=30) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read()


def test_command_line_guard_serves_and_leaves_with_tritonserver(probe):
    """The guard on its own: `python -m server.http_guard`, tied to a process by --exit-with-pid."""
    server, _ = probe
    stand_in = subprocess.Popen(["sleep", "60"])  # stands in for tritonserver's pid
    guard = subprocess.Popen([sys.executable, "-m", "server.http_guard", "--listen", "127.0.0.1:0", "--upstream",
                              triton_http(server), "--exit-with-pid", str(stand_in.pid)],
                             cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        assert guard.stderr is not None
        listening = guard.stderr.readline()
        url = listening.split("listening on ", 1)[1].split(",")[0]
        assert _get(url, "/v2/health/ready")[0] == 200
        assert post(url, infer_path(PROBE), json.dumps(BOMB).encode())[0] == 400
        stand_in.kill()
        stand_in.wait()
        assert guard.wait(timeout=10) == 0
    finally:
        for process in (stand_in, guard):
            if process.poll() is None:
                process.kill()


# --------------------------------------------------------------------------- #
# Clients that go away
# --------------------------------------------------------------------------- #


def test_triton_does_not_tell_the_model_when_an_http_client_goes_away(probe):
    """Measured fact of tritonserver 2.51, directly and through the guard without the side channel: the model
    runs to the end. If this fails, Triton has started cancelling on disconnect: update docs/security.md."""
    server, _ = probe
    request = json.dumps(probe_request(3.0)).encode()
    offset = log_end(server)
    send_and_disconnect(triton_http(server), infer_path(PROBE), request, after_s=0.5)
    assert "guard_probe: finished" in wait_for_log(server, offset, "guard_probe: ")
    with HttpGuard("127.0.0.1:0", triton_http(server)) as plain_guard:  # closes its upstream connection, no more
        offset = log_end(server)
        send_and_disconnect(plain_guard.url, infer_path(PROBE), request, after_s=0.5)
        assert "guard_probe: finished" in wait_for_log(server, offset, "guard_probe: ")


def test_grpc_client_timeout_cancels(probe):
    """The contrast, on the same model: gRPC's deadline reaches `is_cancelled()`."""
    server, _ = probe
    offset = log_end(server)
    client = grpcclient.InferenceServerClient(server.grpc_url)
    with pytest.raises(InferenceServerException):
        client.infer(PROBE, probe_inputs(grpcclient, 5.0), client_timeout=0.5)
    assert "guard_probe: cancelled" in wait_for_log(server, offset, "guard_probe: ")


def test_guard_tells_the_model_when_an_http_client_goes_away(probe, probe_guard):
    server, markers = probe
    offset = log_end(server)
    started = time.monotonic()
    send_and_disconnect(probe_guard.url, infer_path(PROBE), json.dumps(probe_request(20.0)).encode(), after_s=0.5)
    line = wait_for_log(server, offset, "guard_probe: ", timeout=20)
    assert "guard_probe: abandoned after" in line and time.monotonic() - started < 5
    assert not any(markers.iterdir())  # the model removed the marker it reported
