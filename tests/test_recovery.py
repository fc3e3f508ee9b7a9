"""A component process that dies (kill -9 of its Python-backend stub) on a real tritonserver under explicit model
control: the models' watchdog (wan22_triton/operations/watchdog.py) notices it, the server says not ready while the model
is reloaded, then serves the same video for the same seed; events record what happened."""

from __future__ import annotations

import http.client
import os
import re
import signal
import stat
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from clients import grpc_client
from export.options import ExportOptions
from export.repository import export_repository
from wan22_triton.components.orchestrator import ORCHESTRATOR, ORCHESTRATOR_STREAM
from wan22_triton.operations import events, locks, procfs, watchdog

from .conftest import ROOT, TEST_LIMITS, Server
from .observed import delta, scrape, wait_for_outcome

# What the launcher must pass for a dead component to be reloaded (the watchdog reads it from the command line).
RECOVERY_FLAGS = ["--model-control-mode=explicit", "--load-model=*"]
REQUEST = dict(prompt="a lighthouse at dusk", num_frames=5, height=32, width=48, num_inference_steps=4, seed=0)
EXPERT = "transformer_high_noise"
RESTART_BOUND_S = 60.0  # death to serving again; measured 4-7 s with the tiny checkpoint on 2 shared cores
# Death to "not ready": the pidfd wakes the watchdog at once and Triton's unload takes milliseconds (measured
# < 30 ms); the bound leaves room for a loaded machine.
NOT_READY_BOUND_S = 2.0
LIMITS = replace(TEST_LIMITS, max_inference_steps=100)  # the mid-request kill's long request
RETRY_S = 2.0  # the server's period between tries of a failed reload


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_checkpoint):
    repo = tmp_path_factory.mktemp("recovery") / "repo"
    export_repository(tiny_checkpoint, repo, ExportOptions(limits=LIMITS), log=lambda _: None)
    # Its own: a stub of it is killed. A short exit timeout: the stop waits for it after the mid-request kill (below).
    server = Server(repo, extra_args=RECOVERY_FLAGS, exit_timeout_s=2,
                    env={watchdog.RETRY_ENV: str(RETRY_S)}).start()
    server.reference = grpc_client.generate(server.grpc_url, REQUEST)["video"]  # before anything dies
    yield server
    # No crash at the stop. 1: Triton's exit timeout, which the expert killed mid-request causes (Triton 2.51 never
    # finishes unloading a model version whose stub died during a request; the reloaded version serves meanwhile).
    assert server.stop() in (0, 1) and "terminate called" not in server.log_file.read_text(), server.log_tail()


class Readiness:
    """`/v2/health/ready` polled as fast as it answers, in a thread: the (time.time(), status) of every change."""

    def __init__(self, server):
        self.server, self.changes, self._stop = server, [], threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        connection = http.client.HTTPConnection(self.server.host, self.server.http_port, timeout=10)
        while not self._stop.is_set():
            connection.request("GET", "/v2/health/ready")
            response = connection.getresponse()
            response.read()
            if not self.changes or self.changes[-1][1] != response.status:
                self.changes.append((time.time(), response.status))

    def since(self, start: float) -> list[tuple[float, int]]:
        return [(t, status) for t, status in list(self.changes) if t > start]

    def wait_back(self, since: float, timeout_s: float = RESTART_BOUND_S) -> None:
        """Returns as soon as the server, not ready at some point after `since`, says ready again."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            statuses = [status for _, status in self.since(since)]
            if 400 in statuses and 200 in statuses[statuses.index(400) + 1:]:
                return
            time.sleep(0.005)
        raise AssertionError(f"not ready, then ready again, within {timeout_s} s: {self.changes}; log:\n"
                             f"{self.server.log_tail()}")

    def __enter__(self) -> "Readiness":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)


def _health_thread_asleep(pid: int) -> bool:
    """Whether the stub's health thread (its first thread after the main one, started before the model) sleeps
    between its beats: it takes its health mutex only once awake."""
    tids = sorted(int(task.name) for task in Path(f"/proc/{pid}/task").iterdir())
    return "nanosleep" in Path(f"/proc/{pid}/task/{tids[1]}/wchan").read_text()


def kill_stubs(pids: list[int]) -> float:
    """SIGKILL of stubs, each while its health thread sleeps; when. python_backend r24.10's tritonserver locks a
    stub's health mutex without a timeout when it unloads the model, so a stub killed while its health thread holds
    that mutex (microseconds every 300 ms, longer when a busy CPU preempts it there) aborts tritonserver (boost
    lock_exception): a Triton defect (docs/security.md) these tests do not provoke."""
    deadline = time.monotonic() + 5
    while not all(_health_thread_asleep(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.001)
    killed_at = time.time()
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    return killed_at


def kill_stub(server, model: str) -> tuple[float, int]:
    """SIGKILL of the model's one stub (kill_stubs): (when, its pid)."""
    [stub] = [s for s in watchdog.server_stubs(server.pid) if s.model == model]
    return kill_stubs([stub.pid]), stub.pid


def wait_for_event(server, since: int, name: str, model: str, timeout_s: float = RESTART_BOUND_S) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = [e for e in events.read_events(server.events_file, since) if e["event"] == name and e["model"] == model]
        if found:
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"no {name} event for {model} within {timeout_s} s; events "
                         f"{events.read_events(server.events_file, since)}; log:\n{server.log_tail()}")


def assert_serves_once_ready_again(server, readiness: Readiness, killed_at: float) -> None:
    """From shortly after the death the server says not ready, without a break, until it serves the same video."""
    readiness.wait_back(killed_at)
    assert np.array_equal(grpc_client.generate(server.grpc_url, REQUEST)["video"], server.reference)
    after = readiness.since(killed_at)
    # Ready only in the moment before the watchdog's unload (the poller may not even see it), then not ready.
    assert [status for _, status in after] in ([400, 200], [200, 400, 200]), readiness.changes
    assert after[-2][0] - killed_at < NOT_READY_BOUND_S


def assert_recorded(server, since: int, model: str, killed_pid: int, killed_at: float) -> dict:
    """The death and the reload, each recorded once; the model serves from a new process. Returns the reload."""
    died = wait_for_event(server, since, "component_died", model)
    restarted = wait_for_event(server, since, "component_restarted", model)
    watchdog_events = [e["event"] for e in events.read_events(server.events_file, since)
                       if e["event"].startswith("component_")]  # the requests' own events (expert_forward) aside
    assert watchdog_events == ["component_died", "component_restarted"]
    assert died["stub_pid"] == killed_pid and died["exit_status"] == signal.SIGKILL
    assert restarted["time"] - killed_at < RESTART_BOUND_S
    assert killed_pid not in restarted["stub_pids"] and len(restarted["stub_pids"]) == 1
    return restarted


@pytest.mark.server
def test_expert_killed_while_idle_is_reloaded_and_serves_the_same_video(server):
    since = events.end_offset(server.events_file)
    with Readiness(server) as readiness:
        killed_at, killed_pid = kill_stub(server, EXPERT)
        assert_serves_once_ready_again(server, readiness, killed_at)
    assert_recorded(server, since, EXPERT, killed_pid, killed_at)


@pytest.mark.server
def test_expert_killed_mid_request_fails_that_request_clearly_then_serves(server):
    since = events.end_offset(server.events_file)
    killed: list[tuple[float, int]] = []

    def kill_after_first_step(progress: dict) -> None:
        if not killed:
            killed.append(kill_stub(server, EXPERT))

    # About 30 of 100 steps are the high-noise expert's: the server cannot be past them when the client kills it.
    before = scrape(server.metrics_url)
    with Readiness(server) as readiness:
        with pytest.raises(InferenceServerException) as failed:
            grpc_client.generate_stream(server.grpc_url, {**REQUEST, "num_inference_steps": 100},
                                        kill_after_first_step)
        [(killed_at, killed_pid)] = killed
        assert_serves_once_ready_again(server, readiness, killed_at)
    # The orchestrator names the expert; Triton's reason: its stub died under the call, or the call came while the
    # watchdog was unloading it (not ready) or after (not there).
    assert re.search(f"{EXPERT}: (Stub process '{EXPERT}_0_0' is not healthy|.*Model '{EXPERT}' is not ready|.*unknown model)",
                     failed.value.message())
    assert_recorded(server, since, EXPERT, killed_pid, killed_at)
    # and the metrics count it as failed (not invalid, not cancelled)
    after = wait_for_outcome(server.metrics_url, before, ORCHESTRATOR_STREAM, "failed")
    assert delta(before, after, "wan22_requests_total", model=ORCHESTRATOR_STREAM, outcome="failed") == 1


@pytest.mark.server
def test_orchestrator_killed_is_reloaded_by_another_model(server):
    since = events.end_offset(server.events_file)
    with Readiness(server) as readiness:
        killed_at, killed_pid = kill_stub(server, "wan22_t2v")
        assert_serves_once_ready_again(server, readiness, killed_at)
    restarted = assert_recorded(server, since, "wan22_t2v", killed_pid, killed_at)
    assert restarted["process"] != "wan22_t2v"  # a watchdog never reloads its own model


@pytest.mark.server
def test_both_orchestrators_killed_together_are_reloaded_and_the_server_not_ready_until_both_serve(server):
    """A double fault: the two models that once watched the others die at once; the components' watchers reload
    both, and readiness stays 400 from shortly after the deaths until both serve again."""
    since = events.end_offset(server.events_file)
    models = (ORCHESTRATOR, ORCHESTRATOR_STREAM)
    stubs = [s for s in watchdog.server_stubs(server.pid) if s.model in models]
    assert sorted(s.model for s in stubs) == sorted(models)
    with Readiness(server) as readiness:
        killed_at = kill_stubs([stub.pid for stub in stubs])
        readiness.wait_back(killed_at)
        restarted = [wait_for_event(server, since, "component_restarted", model) for model in models]
        assert np.array_equal(grpc_client.generate(server.grpc_url, REQUEST)["video"], server.reference)
        streamed = grpc_client.generate_stream(server.grpc_url, REQUEST, lambda progress: None)["video"]
        assert np.array_equal(streamed, server.reference)
    assert all(e["process"] not in models for e in restarted)  # reloaded by the components
    # not ready from shortly after the deaths until both serve: no "ready" between the two reloads
    assert [status for _, status in readiness.since(killed_at)] in ([400, 200], [200, 400, 200]), readiness.changes
    died = [e for e in events.read_events(server.events_file, since) if e["event"] == "component_died"]
    assert sorted((e["model"], e["stub_pid"]) for e in died) == sorted((s.model, s.pid) for s in stubs)  # once each


@pytest.mark.server
def test_a_reload_that_fails_is_tried_again_until_the_repository_is_fixed(server):
    """The expert's weights missing when it is reloaded: the load fails, the server says not ready, and once the
    folder is back the watchdog's next try serves the same video again, without a restart."""
    since = events.end_offset(server.events_file)
    weights = server.model_repository / EXPERT / "1" / "transformer"
    hidden = weights.with_name("transformer.moved")
    with Readiness(server) as readiness:
        weights.rename(hidden)
        try:
            killed_at, _ = kill_stub(server, EXPERT)
            failed = wait_for_event(server, since, "component_restart_failed", EXPERT)
            time.sleep(0.5)
            assert readiness.changes[-1][1] == 400  # honest: a model cannot serve
        finally:
            hidden.rename(weights)
        restarted = wait_for_event(server, since, "component_restarted", EXPERT,
                                   timeout_s=RETRY_S + RESTART_BOUND_S)
        readiness.wait_back(killed_at)
    assert restarted["time"] > failed["time"]
    assert np.array_equal(grpc_client.generate(server.grpc_url, REQUEST)["video"], server.reference)


def _wait_for_zombie(pid: int) -> None:
    deadline = time.monotonic() + 10
    while procfs.read_stat(pid).live and time.monotonic() < deadline:
        time.sleep(0.01)


def test_death_status_tells_a_killed_process_from_one_that_ended():
    killed = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        assert watchdog.death_status(killed.pid) is None  # alive
        killed.kill()
        _wait_for_zombie(killed.pid)
        assert watchdog.death_status(killed.pid) == signal.SIGKILL  # a zombie until its parent waits for it
        _wait_for_zombie(ended.pid)
        assert watchdog.death_status(ended.pid) is None  # exited 0: ended, not died
    finally:
        killed.kill()
        killed.wait()
        ended.wait()
    assert watchdog.death_status(killed.pid) is None  # reaped: whoever ended it has dealt with it


def _recorded_watchers(names: tuple[str, ...], tmp_path, calls: list[tuple[str, str, str]]) -> list:
    """Watchdogs of this process (as if its stubs were a server's) whose model control records what it is asked,
    a load taking 0.5 s."""
    def control(name: str) -> watchdog.ModelControl:
        def load(model: str) -> None:
            calls.append(("load", model, name))
            time.sleep(0.5)
            calls.append(("loaded", model, name))

        return watchdog.ModelControl(unload=lambda model: calls.append(("unload", model, name)), load=load)

    dogs = [watchdog.ComponentWatchdog(name, str(tmp_path), control(name), log_info=lambda _: None,
                                       log_error=lambda _: None, server_pid=os.getpid()) for name in names]
    for dog in dogs:
        dog.can_reload = True  # this process was not started with explicit model control
    return dogs


def _both_orchestrators_dead(recover) -> None:
    """`recover(stubs)` with two stub-like processes killed (zombies until then), one per orchestrator."""
    stubs = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) for _ in range(2)]
    try:
        for stub in stubs:
            stub.kill()
            _wait_for_zombie(stub.pid)
        recover([watchdog.Stub(stub.pid, model, f"{model}_0_0")
                 for stub, model in zip(stubs, (ORCHESTRATOR, ORCHESTRATOR_STREAM))])
    finally:
        for stub in stubs:
            stub.wait()


def test_the_models_of_one_fault_load_side_by_side_in_several_watchers(tmp_path, monkeypatch):
    """One model per watcher: a stub's loads run one at a time, and the server would say ready between two loads
    of one watcher (Triton's readiness leaves out an unloaded model)."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))  # this test's own claims
    calls: list[tuple[str, str, str]] = []
    dogs = _recorded_watchers(("text_encoder", "vae_decoder"), tmp_path, calls)

    def recover(stubs: list) -> None:
        threads = [threading.Thread(target=dog._recover, args=(stubs,)) for dog in dogs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    _both_orchestrators_dead(recover)
    loads = [(model, name) for kind, model, name in calls if kind == "load"]
    assert sorted(model for model, _ in loads) == sorted([ORCHESTRATOR, ORCHESTRATOR_STREAM]), calls  # once each
    assert len({name for _, name in loads}) == 2, calls  # by two watchers
    assert [kind for kind, _, _ in calls if kind != "unload"] == ["load", "load", "loaded", "loaded"], calls


def test_a_watcher_alone_reloads_every_model_of_a_fault(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    calls: list[tuple[str, str, str]] = []
    (dog,) = _recorded_watchers(("text_encoder",), tmp_path, calls)
    _both_orchestrators_dead(dog._recover)
    assert sorted(model for kind, model, _ in calls if kind == "loaded") == sorted([ORCHESTRATOR, ORCHESTRATOR_STREAM])


def test_a_claim_is_held_by_one_holder_until_released_or_its_process_ends():
    name = f"wan22-test-claim-{os.getpid()}"
    held = watchdog.claim(name)
    assert held is not None and watchdog.claim(name) is None
    held.release()
    again = watchdog.claim(name)
    assert again is not None
    again.release()
    code = f"from wan22_triton.operations import watchdog; held = watchdog.claim({name!r}); print(held is not None)"
    holder = subprocess.Popen([sys.executable, "-c", code + "; import time; time.sleep(60)"], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "True" and watchdog.claim(name) is None
    finally:
        holder.kill()
        holder.wait()
    assert watchdog.claim(name) is not None  # the kernel dropped the dead holder's


def test_locks_and_claims_live_in_a_folder_only_this_user_can_open(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    folder = locks.private_dir()
    assert folder == tmp_path / "wan22-triton" and stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert locks.lock_path(tmp_path / "repo" / "wan22_t2v", "generation").parent == folder
    folder.chmod(0o777)  # as another user could have made it in a shared folder
    with pytest.raises(PermissionError, match="no one else can open"):
        watchdog.claim("x")


def test_model_control_mode_is_read_from_the_command_line():
    def mode(*flags: str) -> str:
        process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", *flags])
        try:
            deadline = time.monotonic() + 10
            while "time.sleep" not in open(f"/proc/{process.pid}/cmdline").read() and time.monotonic() < deadline:
                time.sleep(0.01)
            return watchdog.model_control_mode(process.pid)
        finally:
            process.kill()
            process.wait()

    assert mode() == "none"
    assert mode("--model-control-mode=none", *RECOVERY_FLAGS) == "explicit"  # the last one counts, as in Triton
    assert mode("--model-control-mode", "explicit") == "explicit"
    assert mode("--model-control-mode=explicit", "--model-control-mode=poll") == "poll"
