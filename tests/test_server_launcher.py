"""server.launcher + perf/perf_analyzer_env.py against a tiny Python-backend model.

No GPU needed: the model repository is generated in tmp_path (an add/sub model
on numpy, KIND_CPU), served by tritonserver from PATH or from the nvidia-pytriton
wheel, queried over HTTP and gRPC with tritonclient, and benchmarked briefly with
perf_analyzer.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Mapping

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "perf"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import perf_analyzer_env  # noqa: E402
from server import process, tritonserver_install  # noqa: E402
from server.startup_faults import HANG_AFTER_ENV  # noqa: E402
from server.tritonserver_install import TritonLaunchError  # noqa: E402

from .conftest import Server  # noqa: E402

import tritonclient.grpc as tritonclient_grpc  # noqa: E402
import tritonclient.http as tritonclient_http  # noqa: E402

# A hung start told sooner than in production: tritonserver waits on a live stub's exit only when it hung
TEST_HANG_AFTER_S = 4.0
MODEL = "add_sub"
CONFIG = f"""
name: "{MODEL}"
backend: "python"
max_batch_size: 0
input [
  {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] }},
  {{ name: "INPUT1" data_type: TYPE_FP32 dims: [ 4 ] }}
]
output [
  {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] }},
  {{ name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 4 ] }}
]
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
"""
MODEL_PY = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        {init}

    def execute(self, requests):
        responses = []
        for request in requests:
            a = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            b = pb_utils.get_input_tensor_by_name(request, "INPUT1").as_numpy()
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("OUTPUT0", (a + b).astype(np.float32)),
                pb_utils.Tensor("OUTPUT1", (a - b).astype(np.float32)),
            ]))
        return responses
"""


def write_repository(root: Path, init: str = "pass") -> Path:
    model_dir = root / MODEL / "1"
    model_dir.mkdir(parents=True)
    (root / MODEL / "config.pbtxt").write_text(CONFIG)
    (model_dir / "model.py").write_text(MODEL_PY.format(init=init))
    return root


def port_is_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def server(served):
    return served(repository=write_repository)


def _infer(module, url: str, a: np.ndarray, b: np.ndarray):
    client = module.InferenceServerClient(url)
    try:
        assert client.is_server_ready()
        assert client.is_model_ready(MODEL)
        inputs = [module.InferInput("INPUT0", list(a.shape), "FP32"), module.InferInput("INPUT1", list(b.shape), "FP32")]
        inputs[0].set_data_from_numpy(a)
        inputs[1].set_data_from_numpy(b)
        result = client.infer(MODEL, inputs)
        return result.as_numpy("OUTPUT0"), result.as_numpy("OUTPUT1")
    finally:
        client.close()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_infer(server, protocol):
    module, url = (tritonclient_http, server.http_url) if protocol == "http" else (tritonclient_grpc, server.grpc_url)
    a = np.array([1.0, 2.5, -3.0, 4.0], dtype=np.float32)
    b = np.array([0.5, 0.5, 1.0, -4.0], dtype=np.float32)
    out0, out1 = _infer(module, url, a, b)
    assert out0 is not None and out0.shape == (4,)
    assert out1 is not None and out1.shape == (4,)
    np.testing.assert_array_equal(out0, a + b)
    np.testing.assert_array_equal(out1, a - b)


def test_metrics_endpoint(server):
    with urllib.request.urlopen(server.metrics_url, timeout=10) as resp:
        body = resp.read().decode()
    assert "nv_inference_request_success" in body


def test_python_backend_runs_in_this_environment(server):
    # The stub must use this interpreter's environment (PATH), not whatever python3 is first otherwise.
    env_bin = str(Path(sys.executable).parent)
    assert server.install.env["PATH"].split(os.pathsep)[0] == env_bin
    if server.install.source == "nvidia-pytriton":
        backend_dir = next(a for a in server.command if a.startswith("--backend-directory=")).split("=", 1)[1]
        assert set(tritonserver_install.PYTHON_BACKEND_FILES) <= set(os.listdir(Path(backend_dir) / "python"))


@pytest.mark.server
def test_extra_environment_reaches_the_model_processes(tmp_path):
    seen, first = tmp_path / "seen.txt", tmp_path / "bin"
    first.mkdir()
    init = f'import os; open(r"{seen}", "w").write(os.environ["WAN22_TEST_VALUE"] + "\\n" + os.environ["PATH"])'
    repo = write_repository(tmp_path / "repo", init=init)
    with Server(repo, env={"WAN22_TEST_VALUE": "from-the-launcher"}, path_first=[str(first)]):
        value, path = seen.read_text().split("\n")
    assert value == "from-the-launcher"
    # the extra directory first, then this interpreter's (whose python3 runs the stub when the first has none)
    assert path.split(os.pathsep)[:2] == [str(first), str(Path(sys.executable).parent)]


@pytest.mark.server
def test_server_stops_cleanly(tmp_path):
    srv = Server(write_repository(tmp_path / "repo")).start()
    pid, ports = srv.pid, (srv.http_port, srv.grpc_port)
    assert srv.is_running() and srv.startup_seconds is not None
    out0, _ = _infer(tritonclient_http, srv.http_url, np.ones(4, np.float32), np.ones(4, np.float32))
    np.testing.assert_array_equal(out0, np.full(4, 2, np.float32))
    assert srv.stop() == 0, srv.log_tail()
    assert not srv.is_running()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not any(port_is_open(p) for p in ports)
    assert srv.stop() == 0  # idempotent


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.server
def test_sigkill_fallback_takes_the_stubs_along(tmp_path):
    srv = Server(write_repository(tmp_path / "repo"), stop_timeout=0.01).start()
    stubs = subprocess.run(["pgrep", "-P", str(srv.pid)], capture_output=True, text=True).stdout.split()
    assert stubs, "expected a Python-backend stub process"
    assert srv.shm_prefix == f"wan22_server_{srv.pid}_" and list(Path("/dev/shm").glob(f"{srv.shm_prefix}*"))
    assert srv.stop() == -signal.SIGKILL
    time.sleep(0.2)
    assert not any(_alive(int(pid)) for pid in stubs)
    assert not list(Path("/dev/shm").glob(f"{srv.shm_prefix}*"))


@pytest.mark.server
def test_failing_model_fails_fast_with_log(tmp_path):
    repo = write_repository(tmp_path / "repo", init='raise RuntimeError("boom-from-initialize")')
    t0 = time.monotonic()
    with pytest.raises(TritonLaunchError) as info:
        Server(repo, startup_timeout=60).start()
    assert time.monotonic() - t0 < 60
    assert "exited with code" in str(info.value)
    assert "boom-from-initialize" in str(info.value)


def _abort_once(marker: Path, message: str) -> str:
    """A model `initialize` that, the first time only, writes `message` and aborts its tritonserver (SIGABRT), as
    the Python backend's startup fault does."""
    return (f'import os, signal, sys\n        if not os.path.exists(r"{marker}"):\n'
            f'            open(r"{marker}", "w").close(); print("{message}", file=sys.stderr, flush=True)\n'
            f'            os.kill(os.getppid(), signal.SIGABRT)')


def _stall_once(marker: Path, seconds: int = 7) -> str:
    """A model `initialize` that, the first time only, stops its whole stub for `seconds` (its health thread too):
    the Python backend gives up on it after 5 s and waits for it to exit, as when the machine is busy."""
    return (f'import os, signal, subprocess\n        if not os.path.exists(r"{marker}"):\n'
            f'            open(r"{marker}", "w").close()\n'
            f'            subprocess.Popen(["sh", "-c", f"sleep {seconds}; kill -CONT {{os.getpid()}}"])\n'
            f'            os.kill(os.getpid(), signal.SIGSTOP)')


@pytest.mark.server
def test_the_known_startup_abort_is_started_again_and_said(tmp_path, capfd):
    from server.startup_faults import ABORT_MESSAGE

    message = f"terminate called after throwing an instance of '{ABORT_MESSAGE}'"
    repo = write_repository(tmp_path / "repo", init=_abort_once(tmp_path / "aborted", message))
    with Server(repo) as srv:
        out0, _ = _infer(tritonclient_http, srv.http_url, np.ones(4, np.float32), np.ones(4, np.float32))
        np.testing.assert_array_equal(out0, np.full(4, 2, np.float32))
        assert len(srv.startup_faults) == 1 and "aborted during startup (code -6" in srv.startup_faults[0]
        assert message in srv.log_file.read_text()  # the log keeps the lost attempt
    assert "aborted during startup" in capfd.readouterr().err


@pytest.mark.server
def test_a_start_hung_on_a_model_process_is_started_again_and_said(tmp_path, capfd, monkeypatch):
    monkeypatch.setenv(HANG_AFTER_ENV, str(TEST_HANG_AFTER_S))
    repo = write_repository(tmp_path / "repo", init=_stall_once(tmp_path / "stalled"))
    t0 = time.monotonic()
    with Server(repo, startup_timeout=120) as srv:
        out0, _ = _infer(tritonclient_http, srv.http_url, np.ones(4, np.float32), np.ones(4, np.float32))
        np.testing.assert_array_equal(out0, np.full(4, 2, np.float32))
        assert len(srv.startup_faults) == 1 and "hung starting a model process" in srv.startup_faults[0]
    assert time.monotonic() - t0 < 60  # seen within HANG_AFTER_S of the backend's wait, not at the timeout
    assert "hung starting a model process" in capfd.readouterr().err


@pytest.mark.server
def test_any_other_startup_abort_fails_the_start(tmp_path):
    repo = write_repository(tmp_path / "repo", init=_abort_once(tmp_path / "aborted", "some other fault"))
    srv = Server(repo, startup_timeout=60)
    with pytest.raises(TritonLaunchError, match="code -6"):
        srv.start()
    assert srv.startup_faults == [] and not srv.is_running()


@contextlib.contextmanager
def launcher_cli(repo: Path, log_path: Path, *args: str, env: Mapping[str, str] | None = None,
                 video_api: bool = False):
    """`python -m server.launcher` as `make serve` runs it, on free ports (HTTP's through $HTTP_PORT), once ready:
    yields (the process, {kind: port}); killed on the way out if still running. `video_api`: with
    --video-api-port on a free port too (`video-api`)."""
    http, grpc, metrics, *api = process.free_ports(4 if video_api else 3)
    if video_api:
        args = (*args, "--video-api-port", str(api[0]))
    pythonpath = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    full_env = dict(os.environ, PYTHONPATH=pythonpath, HTTP_PORT=str(http), **(env or {}))
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "server.launcher", "--model-repository", str(repo),
         "--grpc-port", str(grpc), "--metrics-port", str(metrics), *args],
        env=full_env, stdout=log, stderr=subprocess.STDOUT, cwd=log_path.parent,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, log_path.read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/health/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.25)
        yield proc, {"http": http, "grpc": grpc, "metrics": metrics, **({"video-api": api[0]} if api else {})}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


@pytest.mark.server
def test_cli_runs_in_foreground_and_stops_on_sigterm(tmp_path):
    with launcher_cli(write_repository(tmp_path / "repo"), tmp_path / "cli.log") as (proc, ports):
        # tritonserver is the launcher's child ($HTTP_PORT honoured, flags as given), its output on the launcher's
        (server_pid,) = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        assert Path(f"/proc/{server_pid}/exe").resolve().name == "tritonserver"
        assert "Started GRPCInferenceService" in (tmp_path / "cli.log").read_text()
        url = f"127.0.0.1:{ports['grpc']}"
        out0, out1 = _infer(tritonclient_grpc, url, np.zeros(4, np.float32), np.ones(4, np.float32))
        np.testing.assert_array_equal(out1, -np.ones(4, np.float32))
        # A quiet start: one line once READY, naming what loaded; no line per readiness probe.
        ready = rf"READY in [0-9.]+s: {MODEL}; serving on 127\.0\.0\.1, HTTP {ports['http']}"
        deadline = time.monotonic() + 10
        while not re.search(ready, (tmp_path / "cli.log").read_text()):
            assert time.monotonic() < deadline, (tmp_path / "cli.log").read_text()
            time.sleep(0.1)
        assert "upstream" not in (tmp_path / "cli.log").read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert not Path(f"/proc/{server_pid}").exists()


@pytest.mark.server
def test_cli_says_a_start_hung_on_a_model_process_in_one_line(tmp_path):
    repo = write_repository(tmp_path / "repo", init=_stall_once(tmp_path / "stalled"))
    http, grpc, metrics = process.free_ports(3)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               **{HANG_AFTER_ENV: str(TEST_HANG_AFTER_S)})
    done = subprocess.run([sys.executable, "-m", "server.launcher", "--model-repository", str(repo), "--http-port",
                           str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics)],
                          env=env, capture_output=True, text=True, timeout=90)
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: tritonserver hung starting a model process") and last.endswith(
        "start the server again")
    assert subprocess.run(["pgrep", "-f", str(repo)], capture_output=True).returncode == 1  # no process left


def test_prepare_wheel_backends_is_idempotent(tmp_path):
    first = tritonserver_install.prepare_wheel_backends(tmp_path)
    stamp = (first / "python" / "triton_python_backend_stub").stat().st_mtime_ns
    second = tritonserver_install.prepare_wheel_backends(tmp_path)
    assert first == second
    assert (second / "python" / "triton_python_backend_stub").stat().st_mtime_ns == stamp
    assert sorted(p.name for p in (first / "python").iterdir()) == sorted(tritonserver_install.PYTHON_BACKEND_FILES)
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging leftovers


def test_missing_stub_version_is_a_clear_error(tmp_path):
    with pytest.raises(TritonLaunchError, match=r"no Python-backend stub for Python 3\.7 \(available: .*3\.11"):
        tritonserver_install.prepare_wheel_backends(tmp_path, python_version="3.7")


def test_perf_analyzer_smoke(server, tmp_path):
    missing = perf_analyzer_env.check()
    assert not missing, (f"perf_analyzer is missing libraries: {missing} (`make setup` installs Debian's libb64-0d "
                         "as root; otherwise apt-get install libb64-0d)")
    cmd, env = perf_analyzer_env.perf_analyzer_command()
    csv = tmp_path / "perf.csv"
    (header,) = server.admin_headers("grpc").items()  # perf_analyzer reads the statistics, an admin API
    result = subprocess.run(
        cmd + ["-m", MODEL, "-i", "grpc", "-u", server.grpc_url, "-H", ":".join(header),
               "--concurrency-range", "1:2", "--measurement-mode", "count_windows",
               "--measurement-request-count", "20", "-f", str(csv),
               # microsecond-scale toy model on a loaded 2-core box: stability is noise, accept any
               "--stability-percentage", "1000", "--max-trials", "5"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = csv.read_text().strip().splitlines()
    assert rows[0].startswith("Concurrency,Inferences/Second")
    assert sorted(r.split(",")[0] for r in rows[1:]) == ["1", "2"], result.stdout[-3000:]  # rows sorted by throughput
    assert all(float(r.split(",")[1]) > 0 for r in rows[1:])


def test_tritons_own_http_port_is_none_of_the_servers_other_ports(monkeypatch):
    """The server's ports are picked free and released before Triton's loopback HTTP port is picked, so the kernel
    may offer one of them again: that one is skipped (else HTTP and gRPC could get one port, and no server starts)."""
    offered = iter([[5001], [5002], [5003]])
    monkeypatch.setattr(process, "free_ports", lambda count: next(offered))
    front = process.HttpFront("127.0.0.1", 5000, taken=(5001, 5002))
    assert front.triton_port == 5003


@pytest.mark.parametrize("kind", ["http", "grpc", "metrics"])
def test_a_port_in_use_is_named_in_one_line_before_anything_starts(tmp_path, kind):
    http, grpc, metrics = process.free_ports(3)
    ports = {"http": http, "grpc": grpc, "metrics": metrics}
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", ports[kind]))
        holder.listen()
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "server.launcher", "--model-repository",
                               str(write_repository(tmp_path / "repo")), *[f"--{k}-port={v}" for k, v in ports.items()]],
                              cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and time.monotonic() - started < 30
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("error: ") and f"port {ports[kind]} ({kind})" in line, line


@pytest.mark.server
def test_a_killed_owner_takes_its_servers_along(tmp_path):
    """A test worker or benchmark killed outright (SIGKILL, the out-of-memory killer) leaves no tritonserver or stub
    behind: they would hold their memory for good."""
    script = ("import sys, time\nfrom server.triton_server import TritonServer\n"
              f"server = TritonServer(r'{write_repository(tmp_path / 'repo')}').start()\n"
              "print(server.pid, flush=True)\ntime.sleep(600)\n")
    owner = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        server_pid = int(owner.stdout.readline())
        assert subprocess.run(["pgrep", "-g", str(server_pid)], capture_output=True).stdout.split()  # its stub
        owner.kill()
        owner.wait()
        deadline = time.monotonic() + 30
        while left := subprocess.run(["pgrep", "-g", str(server_pid)], capture_output=True, text=True).stdout.split():
            assert time.monotonic() < deadline, f"left behind: {left}"
            time.sleep(0.2)
    finally:
        owner.kill()


def test_picked_ports_are_free_distinct_and_below_the_ephemeral_range():
    """An outgoing connection takes a port from the ephemeral range: one picked there can be gone by the time
    tritonserver binds it."""
    first_ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = process.free_ports(8)
    assert len(set(ports)) == 8 and all(1024 <= port < first_ephemeral for port in ports)
    for port in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


@pytest.mark.server
@pytest.mark.parametrize("kind", ["grpc", "metrics"])
def test_a_picked_port_taken_before_tritonserver_binds_it_is_picked_again(tmp_path, kind):
    """Ports are picked free and released before tritonserver binds them; another process may bind one meanwhile:
    the start is tried again on new ports, and said. Triton opens the metrics port after READY and then ends: a
    start is done only once that answers."""
    srv = Server(write_repository(tmp_path / "repo"))
    taken = getattr(srv, f"{kind}_port")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", taken))
        holder.listen()
        try:
            srv.start()
            assert getattr(srv, f"{kind}_port") != taken and srv.is_running()
            assert len(srv.startup_faults) == 1 and "bound by another process" in srv.startup_faults[0]
            out0, _ = _infer(tritonclient_grpc, srv.grpc_url, np.ones(4, np.float32), np.ones(4, np.float32))
            np.testing.assert_array_equal(out0, 2 * np.ones(4, np.float32))
        finally:
            srv.stop()


@pytest.mark.server
def test_the_launchers_video_api_answers_is_started_again_and_stops_with_it(tmp_path):
    """--video-api-port: `python -m video_api serve` as the launcher's second child once Triton is READY, on the
    launcher's listen address, its store and results where the flags say, its key from $WAN22_API_KEY, the database
    URL not on its command line; killed, it is started again; SIGTERM to the launcher stops both."""
    api_key, database = "wv-launcher-test", f"sqlite:///{tmp_path / 'jobs.db'}"
    log = tmp_path / "cli.log"
    with launcher_cli(write_repository(tmp_path / "repo"), log, "--video-api-database", database,
                      "--video-api-results", str(tmp_path / "results"), video_api=True,
                      env={"WAN22_API_KEY": api_key}) as (proc, ports):
        base = f"http://127.0.0.1:{ports['video-api']}"

        def api_pid(not_this: str | None = None) -> str:
            deadline = time.monotonic() + 90
            while True:
                children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True)
                found = [pid for pid in children.stdout.split()
                         if pid != not_this and b"\0-m\0video_api\0" in _cmdline(pid)]
                if found:
                    with contextlib.suppress(OSError), urllib.request.urlopen(f"{base}/health/ready", timeout=2) as r:
                        if r.status == 200:
                            return found[0]
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.25)

        first = api_pid()
        assert b"jobs.db" not in _cmdline(first)  # a password would show in `ps`
        listed = urllib.request.Request(f"{base}/v1/videos", headers={"Authorization": f"Bearer {api_key}"})
        with urllib.request.urlopen(listed, timeout=10) as answer:
            assert answer.status == 200 and json.load(answer)["data"] == []
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(urllib.request.Request(f"{base}/v1/videos", headers={
                "Authorization": "Bearer wrong"}), timeout=10)
        assert refused.value.code == 401
        said = log.read_text()
        assert (f"video jobs API (OpenAI /v1/videos) on {base}/v1: jobs in {database}, results in "
                f"{tmp_path / 'results'}, key from $WAN22_API_KEY") in said

        os.kill(int(first), signal.SIGKILL)
        second = api_pid(not_this=first)
        assert "the video jobs API exited with code -9; starting it again" in log.read_text()
        (server_pid,) = [pid for pid in subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                                                       text=True).stdout.split() if pid != second]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log.read_text()
        assert not Path(f"/proc/{second}").exists() and not Path(f"/proc/{server_pid}").exists()
    assert (tmp_path / "jobs.db").is_file()


def _cmdline(pid: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # gone meanwhile
        return b""

