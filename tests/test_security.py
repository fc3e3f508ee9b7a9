"""How the launcher exposes tritonserver and how it fails, against real tritonservers (the add/sub model of
test_server_launcher; the tiny Wan export for the client's shared-memory path).

* loopback only by default, every interface only when asked (`--listen-address 0.0.0.0`);
* Triton's admin APIs (shared memory, statistics, model repository, trace, logging) refused without the admin key
  header and served with it; inference, health, metadata and model config open;
* the Python backend's /dev/shm regions of servers that are gone removed at start, a live server's kept;
* a SIGTERM stop bounded by the exit timeout + process.STOP_GRACE_S, with a keep-alive HTTP connection open and a
  request in flight (each held Triton's stop for its whole exit timeout, 30 s by default; the request, past it, for
  as long as its model executes);
* a repository without an export, and clients that cannot reach the server: one clear line, no traceback.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from clients import grpc_client
from clients.admin import ADMIN_KEY_ENV
from server import process, shm_regions
from server.triton_server import TritonServer
from server.tritonserver_install import TritonLaunchError

from wan22_triton.components.orchestrator import ORCHESTRATOR
from wan22_triton.operations import events, ipc_region

from .conftest import TORCH, Server
from .observed import scrape, wait_for_forwards, wait_for_outcome
from .test_server_launcher import CONFIG, MODEL, _infer, launcher_cli, write_repository

ROOT = Path(__file__).resolve().parents[1]
SHM = Path("/dev/shm")
EXIT_TIMEOUT_S = 3  # the stop test's --exit-timeout-secs
STOP_SLACK_S = 3  # the launcher's own reaping and cleanup, on a loaded 2-core box
ADMIN_CALLS = {  # one read-only call per restricted API, as both tritonclient protocols name it
    "shared-memory": "get_system_shared_memory_status",
    "statistics": "get_inference_statistics",
    "model-repository": "get_model_repository_index",
    "logging": "get_log_settings",
    "trace": "get_trace_settings",
}
CLIENTS = {"grpc": grpcclient, "http": httpclient}


@pytest.fixture(scope="module")
def server(served):
    return served(repository=write_repository)  # test_server_launcher's


def _client(server: TritonServer, protocol: str):
    return CLIENTS[protocol].InferenceServerClient(server.grpc_url if protocol == "grpc" else server.http_url)


def listening_addresses(port: int) -> set[str]:
    """Local addresses of the TCP sockets listening on `port` (/proc/net/tcp{,6}; IPv4-mapped IPv6 as IPv4)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            local, state = row.split()[1], row.split()[3]
            address, port_hex = local.split(":")
            if state != "0A" or int(port_hex, 16) != port:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(address)  # 32-bit words in host byte order
            if sys.byteorder == "little":
                raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            ip = ipaddress.ip_address(raw)
            found.add(str(ip.ipv4_mapped or ip) if ip.version == 6 else str(ip))
    return found


# --------------------------------------------------------------------------- who can reach it


def test_listens_on_loopback_only_by_default(server):
    for port in (server.http_port, server.grpc_port, server.metrics_port):
        assert listening_addresses(port) == {"127.0.0.1"}, port


@pytest.mark.server
def test_listen_address_option_exposes_every_interface(tmp_path):
    with Server(write_repository(tmp_path / "repo"), listen_address="0.0.0.0") as exposed:
        for port in (exposed.http_port, exposed.grpc_port, exposed.metrics_port):
            assert listening_addresses(port) and listening_addresses(port) <= {"0.0.0.0", "::"}, port
        assert exposed.host == "127.0.0.1"  # where its own clients connect


# --------------------------------------------------------------------------- admin APIs behind the key


@pytest.mark.parametrize("protocol", ["grpc", "http"])
@pytest.mark.parametrize("api", sorted(ADMIN_CALLS))
def test_admin_apis_need_the_key(server, protocol, api):
    client = _client(server, protocol)
    try:
        call = getattr(client, ADMIN_CALLS[api])
        for wrong in (None, {"wan22-admin-key": "not-the-key", "triton-grpc-protocol-wan22-admin-key": "nope"}):
            with pytest.raises(InferenceServerException):
                call(headers=wrong)
        call(headers=server.admin_headers(protocol))
    finally:
        client.close()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_backend_region_cannot_be_registered_without_the_key(server, protocol):
    """The attack: register the Python backend's own IPC region, then have an inference write into it."""
    (region, *_) = sorted(SHM.glob(f"{server.shm_prefix}*"))
    client = _client(server, protocol)
    try:
        with pytest.raises(InferenceServerException, match="restricted"):
            client.register_system_shared_memory("stolen", "/" + region.name, 64)
        status = client.get_system_shared_memory_status(headers=server.admin_headers(protocol))
        assert "stolen" not in str(status)
    finally:
        client.close()


def _model_regions(server: TritonServer) -> dict[str, str]:
    """The IPC region of each Python-backend process of the server (argv[2] of the stub) -> its model."""
    stubs = subprocess.run(["pgrep", "-P", str(server.pid)], capture_output=True, text=True).stdout.split()
    argvs = [Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0") for pid in stubs]
    return {argv[2]: Path(argv[1]).parts[-3] for argv in argvs if Path(argv[0]).name == ipc_region.STUB}


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_model_regions_cannot_be_registered_even_with_the_key(torch_server, protocol):
    """The key holder's attack: register a model process's IPC region, then have an inference write into it. Once
    the models run, their regions have no name left in /dev/shm, so Triton cannot open one."""
    regions = _model_regions(torch_server)
    assert set(regions.values()) == {c.parent.name for c in Path(torch_server.model_repository).glob("*/config.pbtxt")}
    assert all(r.startswith(torch_server.shm_prefix) and not (SHM / r).exists() for r in regions)
    client, headers = _client(torch_server, protocol), torch_server.admin_headers(protocol)
    try:
        for region in regions:
            with pytest.raises(InferenceServerException, match="Unable to open shared memory region"):
                client.register_system_shared_memory("stolen", "/" + region, 64, headers=headers)
        assert "stolen" not in str(client.get_system_shared_memory_status(headers=headers))
        assert client.is_server_ready()
    finally:
        client.close()


def test_a_region_name_is_removed_only_inside_a_model_process(tmp_path):
    region = tmp_path / "wan22_server_1_region"
    region.write_bytes(b"\0" * 16)
    cmdline = tmp_path / "cmdline"
    for argv, removed in (([sys.executable, "-m", "pytest", region.name], None),  # a test or a tool importing it
                          ([f"/opt/{ipc_region.STUB}", "/repo/m/1/model.py", region.name, "1048576"], region.name),
                          ([f"/opt/{ipc_region.STUB}", "/repo/m/1/model.py", region.name, "1048576"], None)):  # gone
        cmdline.write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
        assert ipc_region.unlink_own_region(cmdline, tmp_path) == removed
        assert region.exists() == (argv[0] == sys.executable)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_shared_memory_works_with_the_key(server, protocol):
    shm = grpc_client._shared_memory_utils()
    name = f"wan22_test_{uuid.uuid4().hex[:8]}"
    handle = shm.create_shared_memory_region(name, "/" + name, 64)
    client, headers = _client(server, protocol), server.admin_headers(protocol)
    try:
        client.register_system_shared_memory(name, "/" + name, 64, headers=headers)
        assert name in str(client.get_system_shared_memory_status(headers=headers))
        client.unregister_system_shared_memory(name, headers=headers)
    finally:
        client.close()
        shm.destroy_shared_memory_region(handle)


def test_video_shared_memory_sends_the_key(server):
    with pytest.raises(InferenceServerException, match="restricted"):
        with grpc_client.VideoSharedMemory(server.grpc_url, 1024):
            pass
    with grpc_client.VideoSharedMemory(server.grpc_url, 1024, server.admin_key) as region:
        with grpcclient.InferenceServerClient(server.grpc_url) as client:
            status = client.get_system_shared_memory_status(as_json=True, headers=server.admin_headers("grpc"))
        assert region.name in status.get("regions", {})
    assert not list(SHM.glob(f"{region.name}*"))  # destroyed on exit


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_inference_health_and_metadata_need_no_key(server, protocol):
    url = server.grpc_url if protocol == "grpc" else server.http_url
    a, b = np.arange(4, dtype=np.float32), np.ones(4, dtype=np.float32)
    out0, _ = _infer(CLIENTS[protocol], url, a, b)  # also asks is_server_ready / is_model_ready
    np.testing.assert_array_equal(out0, a + b)
    client = _client(server, protocol)
    try:
        assert client.is_server_live()
        client.get_server_metadata()
        client.get_model_metadata(MODEL)
        client.get_model_config(MODEL)
    finally:
        client.close()


def test_admin_key_comes_from_the_environment_and_is_checked(tmp_path, monkeypatch):
    monkeypatch.setenv(ADMIN_KEY_ENV, "k" * 24)
    assert TritonServer(tmp_path).admin_key == "k" * 24
    assert TritonServer(tmp_path, admin_key="given-key-0123456789").admin_key == "given-key-0123456789"
    monkeypatch.delenv(ADMIN_KEY_ENV)
    first, second = TritonServer(tmp_path).admin_key, TritonServer(tmp_path).admin_key
    assert first != second and len(first) >= 16  # generated per server
    for weak in ("short", "has:colon-and-more-chars", "has=equals-and-more-chars"):
        with pytest.raises(TritonLaunchError, match="admin key"):
            TritonServer(tmp_path, admin_key=weak)


# --------------------------------------------------------------------------- leftovers, stopping, starting


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_regions_of_gone_servers_are_removed_at_start_and_a_live_servers_kept(server, tmp_path):
    live = sorted(SHM.glob(f"{server.shm_prefix}*"))
    assert live
    # A crashed server's pid, and a pid now used by a process that is no tritonserver (this one).
    stale = [SHM / f"{shm_regions.server_region_prefix(pid)}{uuid.uuid4()}" for pid in (_dead_pid(), os.getpid())]
    for region in stale:
        region.write_bytes(b"\0" * 16)
    try:
        with Server(write_repository(tmp_path / "repo")) as second:
            assert list(SHM.glob(f"{second.shm_prefix}*"))
            assert not [r for r in stale if r.exists()]
            assert all(r.exists() for r in live)
    finally:
        for region in stale:
            region.unlink(missing_ok=True)


SLOW_MODEL_PY = """
import time
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        time.sleep(120)  # a generation that outlasts any stop
        return [pb_utils.InferenceResponse(output_tensors=[]) for _ in requests]
"""


@pytest.mark.server
def test_sigterm_stop_is_bounded_with_a_request_in_flight_and_a_connection_open(tmp_path):
    """`make serve` style: the launcher CLI, a stale region to clean, then SIGTERM while a request runs and an HTTP
    keep-alive connection stays open. A short exit timeout keeps the test short; the default's bound is the same sum."""
    repo = write_repository(tmp_path / "repo")
    (repo / "slow" / "1").mkdir(parents=True)
    (repo / "slow" / "config.pbtxt").write_text(CONFIG.replace(f'name: "{MODEL}"', 'name: "slow"'))
    (repo / "slow" / "1" / "model.py").write_text(SLOW_MODEL_PY)
    stale = SHM / f"{shm_regions.server_region_prefix(_dead_pid())}{uuid.uuid4()}"
    stale.write_bytes(b"\0" * 16)
    log, flags = tmp_path / "cli.log", ("--exit-timeout-secs", str(EXIT_TIMEOUT_S))
    try:
        with launcher_cli(repo, log, *flags, env={ADMIN_KEY_ENV: ""}) as (proc, ports):
            assert not stale.exists()
            notes = log.read_text()
            assert "listening on 127.0.0.1 only" in notes and "LISTEN_ADDRESS=0.0.0.0" in notes
            key = notes.split("generated for this start: ")[1].split()[0]
            command = next(line for line in notes.splitlines() if "tritonserver from" in line)
            assert key not in command and "wan22-admin-key=***" in command  # printed once, masked in the command

            (server_pid,) = _children(proc.pid)
            assert list(SHM.glob(f"{shm_regions.server_region_prefix(server_pid)}*"))
            errors: list[BaseException] = []
            in_flight = threading.Thread(target=_call_slow, args=(f"127.0.0.1:{ports['grpc']}", errors))
            in_flight.start()
            keep_alive = httpclient.InferenceServerClient(f"127.0.0.1:{ports['http']}")
            assert keep_alive.is_server_ready()
            time.sleep(1.0)  # the slow request reaches its execute
            bound = EXIT_TIMEOUT_S + process.STOP_GRACE_S + STOP_SLACK_S
            t0 = time.monotonic()
            proc.terminate()
            proc.wait(timeout=bound)
            assert time.monotonic() - t0 < bound
            in_flight.join(timeout=30)
            assert errors, "the request in flight should end with an error"
            said = log.read_text()  # the stop, said: begun, then how it ended (the slow model outlasts the bound)
            assert f"[server.launcher] stopping: requests in flight get {EXIT_TIMEOUT_S} s" in said
            assert "it was killed with its model processes" in said and proc.returncode == 128 + signal.SIGKILL
            keep_alive.close()
            assert not Path(f"/proc/{server_pid}").exists()
            assert not list(SHM.glob(f"{shm_regions.server_region_prefix(server_pid)}*"))
            deadline = time.monotonic() + 5  # SIGKILLed with the group: gone once the kernel has reaped them
            while left := subprocess.run(["pgrep", "-g", str(server_pid)], capture_output=True, text=True).stdout.split():
                assert time.monotonic() < deadline, f"processes of the server's group left behind: {left}"  # stubs
                time.sleep(0.1)
    finally:
        stale.unlink(missing_ok=True)


def _children(pid: int) -> list[int]:
    return [int(c) for c in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()]


def _call_slow(url: str, errors: list) -> None:
    inputs = []
    for name in ("INPUT0", "INPUT1"):
        tensor = grpcclient.InferInput(name, [4], "FP32")
        tensor.set_data_from_numpy(np.zeros(4, dtype=np.float32))
        inputs.append(tensor)
    try:
        with grpcclient.InferenceServerClient(url) as client:
            client.infer("slow", inputs, client_timeout=60)
    except Exception as exc:  # noqa: BLE001 - any error: the point is that it ends
        errors.append(exc)


def _run(module: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})})


@pytest.mark.parametrize("layout", ["missing", "empty", "model folders without configs"])
def test_serving_a_repository_without_an_export_says_to_export(tmp_path, layout):
    repo = tmp_path / "model_repository"
    if layout != "missing":
        repo.mkdir()
    if layout == "model folders without configs":
        for name in ("wan22_t2v", "text_encoder"):
            (repo / name / "1").mkdir(parents=True)
    proc = _run("server.launcher", "--model-repository", str(repo))
    assert proc.returncode == 2
    assert "make export" in proc.stderr and "python -m export" in proc.stderr and "Traceback" not in proc.stderr
    assert layout == "missing" or "no exported model" in proc.stderr


# --------------------------------------------------------------------------- clients


@pytest.mark.parametrize("module, protocol", [("clients.grpc_client", "gRPC"), ("clients.http_client", "HTTP")])
def test_clients_say_in_one_line_that_the_server_is_unreachable(module, protocol):
    (port,) = process.free_ports(1)
    proc = _run(module, "--url", f"127.0.0.1:{port}", "--prompt", "x")
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"error: cannot reach tritonserver over {protocol} at 127.0.0.1:{port}")
    assert "make serve" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("module", ["clients.grpc_client", "clients.http_client"])
def test_clients_say_in_one_line_that_the_port_speaks_the_other_protocol(torch_server, module):
    url = torch_server.grpc_url if module == "clients.http_client" else torch_server.http_url
    proc = _run(module, "--url", url, "--prompt", "x")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("error: ") and url in line, line


@pytest.mark.parametrize("module", ["clients.grpc_client", "clients.http_client"])
def test_ctrl_c_on_a_client_is_one_line_and_the_generation_stops(torch_server, module, tmp_path):
    url = torch_server.grpc_url if module == "clients.grpc_client" else torch_server.http_url
    before, offset = scrape(torch_server.metrics_url), events.end_offset(torch_server.events_file)
    # the largest size the test servers take; SIGINT handled as in a terminal whatever the test worker's disposition
    # (CI runs saw the client run its generation to the end), and the start read from the server's events
    client = subprocess.Popen([sys.executable, "-m", module, "--url", url, "--prompt", "a long one", "--num-frames",
                               "33", "--height", "256", "--width", "256", "--num-inference-steps", "50", "--output",
                               str(tmp_path / "v.mp4")], cwd=ROOT, stderr=subprocess.PIPE, text=True,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    wait_for_forwards(torch_server.events_file, offset, 1)  # a step has begun
    assert client.poll() is None
    client.send_signal(signal.SIGINT)
    assert client.communicate(timeout=60)[1] == "error: cancelled (Ctrl-C)\n" and client.returncode == 130
    wait_for_outcome(torch_server.metrics_url, before, ORCHESTRATOR, "cancelled")
    assert not (tmp_path / "v.mp4").exists()


def test_grpc_client_refuses_stream_with_shared_memory():
    proc = _run("clients.grpc_client", "--prompt", "x", "--stream", "--shared-memory")
    assert proc.returncode == 2 and "--shared-memory works with unary requests only" in proc.stderr


def test_shared_memory_client_needs_the_admin_key_and_is_quiet(torch_server, tmp_path):
    request = ["--url", torch_server.grpc_url, "--prompt", "a kite", "--shared-memory", "--num-frames", "5",
               "--height", "32", "--width", "32", "--num-inference-steps", "1", "--output", str(tmp_path / "v.mp4")]
    refused = _run("clients.grpc_client", *request, env={ADMIN_KEY_ENV: ""})
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert refused.stderr.startswith("error: ") and "--admin-key" in refused.stderr
    served = _run("clients.grpc_client", *request, env={ADMIN_KEY_ENV: torch_server.admin_key})
    assert served.returncode == 0, served.stderr
    assert "pkg_resources" not in served.stderr and "wrote" in served.stdout


def test_a_full_disk_under_the_events_file_fails_no_request(served, tmp_path):
    """ENOSPC on every event write (the events file on /dev/full) from the first: the server starts, says ready,
    serves, and each model process says once that its events are dropped."""
    srv = served(TORCH, env={events.EVENTS_FILE_ENV: "/dev/full"})
    video = tmp_path / "v.mp4"
    served_ok = _run("clients.grpc_client", "--url", srv.grpc_url, "--prompt", "a kite", "--num-frames", "5",
                     "--height", "32", "--width", "32", "--num-inference-steps", "2", "--output", str(video))
    assert served_ok.returncode == 0, served_ok.stderr
    assert video.stat().st_size > 0
    with grpcclient.InferenceServerClient(srv.grpc_url) as client:
        assert client.is_server_ready()
    assert "events are dropped until it can" in srv.log_file.read_text()
