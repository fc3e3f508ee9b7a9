"""The OpenAI-compatible video jobs API (video_api/), called with the official `openai` SDK, in front of the session's
real tritonserver on the tiny checkpoint: the API runs as its own process (`python -m video_api serve`) on a SQLite
job store, so that it can be killed and restarted.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest

from clients import grpc_client
from export.repository import export_repository
from server.process import free_ports
from video_api.store import JobStore, Status
from wan22_triton.components.orchestrator import ORCHESTRATOR_STREAM, VIDEO_MP4
from wan22_triton.operations import events

from .conftest import TORCH, Server
from .observed import delta, scrape, steps_run, wait_for_outcome

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.server, pytest.mark.filterwarnings("ignore::DeprecationWarning")]
# 5 frames (0.25 s at the tiny checkpoint's 16 fps) at 32x32, 2 steps: a job of a fraction of a second
JOB = dict(prompt="a kite over the dunes", seconds="0.25", size="32x32")
WAN = dict(negative_prompt="blurry", num_inference_steps=2, seed=11)
DIRECT = dict(prompt=JOB["prompt"], num_frames=5, height=32, width=32, output_format="mp4", **WAN)
# A job still generating seconds after it started: its steps at the limits' largest size take tens of ms each
LONG_STEPS = 45
LONG_JOB = dict(JOB, size="256x256", extra_body={**WAN, "num_inference_steps": LONG_STEPS})


class ApiProcess:
    """`python -m video_api serve` in the background on `database`, until stopped or killed."""

    def __init__(self, triton_url: str, database: str, results: Path, key: str, events_file: Path,
                 *extra: str) -> None:
        [self.port] = free_ports(1)
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "video_api", "--database", database, "serve", "--triton-url", triton_url,
               "--port", str(self.port), "--results", str(results), "--api-key", key, "--lease-seconds", "2",
               *extra]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, events.EVENTS_FILE_ENV: str(events_file)},
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.proc.stderr.read()
            try:
                with urllib.request.urlopen(f"{self.url}/health/ready", timeout=2):
                    return
            except OSError:
                time.sleep(0.2)
        raise AssertionError("video_api did not answer within 60 s")

    def client(self, key: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0, timeout=120)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)
        self.proc.wait(30)


@pytest.fixture(scope="module")
def keys() -> dict[str, str]:
    return {"alice": "wv-alice-test-key", "bob": "wv-bob-test-key"}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("video-api")


@pytest.fixture(scope="module")
def api(torch_server, workspace, keys):
    database = f"sqlite:///{workspace / 'jobs.db'}"
    JobStore(database).add_key("bob", max_running=2, max_queued=4, key=keys["bob"])
    process = ApiProcess(torch_server.grpc_url, database, workspace / "results", keys["alice"],
                         workspace / "events.jsonl", "--max-queued", "6")
    yield process
    process.stop()


def wait_for(client: openai.OpenAI, video_id: str, timeout_s: float = 120):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        video = client.videos.retrieve(video_id)
        if video.status in (Status.COMPLETED, Status.FAILED):
            return video
        time.sleep(0.1)
    raise AssertionError(f"{video_id} still {video.status} after {timeout_s} s")


def test_create_and_poll_then_download_is_the_grpc_clients_mp4(api, torch_server, keys):
    client = api.client(keys["alice"])
    video = client.videos.create_and_poll(**JOB, extra_body=WAN, poll_interval_ms=100)
    assert (video.status, video.progress, video.seconds, video.size, video.model) == (
        "completed", 100, "0.25", "32x32", "wan22_t2v")
    assert video.error is None and video.completed_at >= video.created_at
    mp4 = client.videos.download_content(video.id).read()
    assert mp4 == grpc_client.generate(torch_server.grpc_url, DIRECT)[VIDEO_MP4]
    thumbnail = client.videos.download_content(video.id, variant="thumbnail").read()
    sheet = client.videos.download_content(video.id, variant="spritesheet").read()
    assert thumbnail[8:12] == b"WEBP" and sheet[:2] == b"\xff\xd8"


def test_progress_rises_to_100(api, keys):
    client = api.client(keys["alice"])
    video = client.videos.create(**{**LONG_JOB, "extra_body": {**WAN, "num_inference_steps": 20}})
    seen = [video.progress]
    while seen[-1] < 100:
        current = client.videos.retrieve(video.id)
        assert current.status != "failed", current.error
        seen.append(current.progress)
    assert seen == sorted(seen) and len(set(seen)) > 3  # monotonic, through several steps


def test_list_retrieve_delete_and_keys_see_only_their_own(api, keys):
    alice, bob = api.client(keys["alice"]), api.client(keys["bob"])
    made = [alice.videos.create(**JOB, extra_body=WAN).id for _ in range(2)]
    theirs = bob.videos.create(**JOB, extra_body=WAN).id
    listed = [v.id for v in alice.videos.list(order="asc", limit=100)]
    assert set(made) <= set(listed) and theirs not in listed
    page = alice.videos.list(order="desc", limit=1)
    assert len(page.data) == 1 and page.has_more
    assert [v.id for v in alice.videos.list(order="desc", limit=1, after=page.data[0].id).data] != [page.data[0].id]
    with pytest.raises(openai.NotFoundError):
        bob.videos.retrieve(made[0])
    with pytest.raises(openai.NotFoundError):
        bob.videos.delete(made[0])
    for video_id in made:
        wait_for(alice, video_id)
        assert alice.videos.delete(video_id).deleted
        with pytest.raises(openai.NotFoundError):
            alice.videos.retrieve(video_id)
    assert wait_for(bob, theirs).status == "completed"


def test_eight_concurrent_jobs_from_two_keys_each_get_their_own_video(api, torch_server, keys):
    clients = {name: api.client(key) for name, key in keys.items()}
    jobs = [(name, seed) for seed in range(100, 104) for name in clients]

    def run(job):
        name, seed = job
        video = clients[name].videos.create_and_poll(**JOB, extra_body={**WAN, "seed": seed}, poll_interval_ms=100)
        return name, video, clients[name].videos.download_content(video.id).read()

    with ThreadPoolExecutor(len(jobs)) as pool:
        results = list(pool.map(run, jobs))
    for (name, seed), (owner, video, mp4) in zip(jobs, results):
        assert video.status == "completed", video.error
        assert mp4 == grpc_client.generate(torch_server.grpc_url, {**DIRECT, "seed": seed})[VIDEO_MP4]
    for name, client in clients.items():
        mine = {v.id for v in client.videos.list(limit=100)}
        assert {video.id for owner, video, _ in results if owner == name} <= mine
        assert not {video.id for owner, video, _ in results if owner != name} & mine


def test_a_key_over_its_queued_quota_gets_429(api, keys):
    bob = api.client(keys["bob"])  # 4 queued or running at most
    made = [bob.videos.create(**JOB, extra_body={**WAN, "num_inference_steps": 30}).id for _ in range(4)]
    with pytest.raises(openai.RateLimitError) as refused:
        bob.videos.create(**JOB, extra_body=WAN)
    assert refused.value.response.headers["retry-after"] and "limit" in refused.value.message
    for video_id in made:
        bob.videos.delete(video_id)


@pytest.mark.parametrize("fields, param, message", [
    (dict(size="33x32"), "size", "must be a multiple of 16"),
    (dict(size="big"), "size", "must be WIDTHxHEIGHT"),
    (dict(seconds="100"), "seconds", "within [1, 33]"),
    (dict(model="sora-2"), "model", "is not served here"),
    (dict(extra_body={"num_inference_steps": "many"}), "num_inference_steps", "must be an integer"),
    (dict(extra_body={"guidance_scale": "-1"}), "guidance_scale", "a finite number >= 0"),
    (dict(extra_body={"lora": "nope"}), "lora", "is not served here"),
    (dict(extra_body={"temperature": "1"}), "temperature", "unknown parameter"),
    (dict(input_reference=("a.png", b"\x89PNG", "image/png")), "input_reference", "is not taken by wan22_t2v"),
])
def test_bad_fields_are_openai_style_400s(api, keys, fields, param, message):
    with pytest.raises(openai.BadRequestError) as refused:
        api.client(keys["alice"]).videos.create(**{**JOB, **fields})
    error = refused.value.body
    assert (error["type"], error["param"]) == ("invalid_request_error", param) and message in error["message"], error


def test_no_key_or_a_wrong_one_is_401(api):
    with pytest.raises(openai.AuthenticationError):
        api.client("wv-wrong").videos.list()


def test_delete_cancels_a_running_job_within_a_step(api, torch_server, keys):
    client = api.client(keys["alice"])
    before = scrape(torch_server.metrics_url)
    video = client.videos.create(**LONG_JOB)
    while client.videos.retrieve(video.id).progress < 5:
        time.sleep(0.05)
    assert client.videos.delete(video.id).deleted
    after = wait_for_outcome(torch_server.metrics_url, before, ORCHESTRATOR_STREAM, "cancelled")
    assert delta(before, after, "wan22_requests_total", model=ORCHESTRATOR_STREAM, outcome="cancelled") == 1
    assert steps_run(before, after, ORCHESTRATOR_STREAM) <= LONG_STEPS // 2
    with pytest.raises(openai.NotFoundError):
        client.videos.retrieve(video.id)


def test_killed_api_restarts_failing_its_lost_job_and_running_the_queued(torch_server, workspace, keys):
    """SIGKILL mid-job: after the restart the running job is failed with the reason (never run again), the job
    still queued runs, and the database is intact."""
    database, results = f"sqlite:///{workspace / 'restart.db'}", workspace / "restart-results"
    events_file = workspace / "restart-events.jsonl"
    first = ApiProcess(torch_server.grpc_url, database, results, keys["alice"], events_file, "--workers", "1")
    client = first.client(keys["alice"])
    running = client.videos.create(**LONG_JOB)
    queued = client.videos.create(**JOB, extra_body=WAN)
    while client.videos.retrieve(running.id).progress < 5:
        time.sleep(0.05)
    first.stop(signal.SIGKILL)
    second = ApiProcess(torch_server.grpc_url, database, results, keys["alice"], events_file, "--workers", "1")
    try:
        client = second.client(keys["alice"])
        lost = wait_for(client, running.id)
        assert lost.status == "failed" and lost.error.code == "job_lost" and "create the job again" in \
            lost.error.message
        assert wait_for(client, queued.id).status == "completed"
    finally:
        second.stop()
    started = [e["job"] for e in events.read_events(events_file) if e["event"] == "video_job_started"]
    assert started.count(running.id) == 1 and started.count(queued.id) == 1
    with JobStore(database).engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"


def test_tritonserver_killed_mid_job_fails_the_job_with_the_reason(tiny_checkpoint, workspace, keys):
    """Its own server, killed (SIGKILL to its process group) while a job generates: the job fails, saying the
    inference server went away, and the API keeps answering."""
    repo = workspace / "killed-repo"
    export_repository(tiny_checkpoint, repo, TORCH, log=lambda _: None)
    server = Server(repo).start()
    api = ApiProcess(server.grpc_url, f"sqlite:///{workspace / 'killed.db'}", workspace / "killed",
                     keys["alice"], workspace / "killed.jsonl")
    try:
        client = api.client(keys["alice"])
        video = client.videos.create(**LONG_JOB)
        while client.videos.retrieve(video.id).progress < 5:
            time.sleep(0.05)
        os.killpg(server.pid, signal.SIGKILL)
        failed = wait_for(client, video.id)
        assert failed.status == "failed" and failed.error.code == "unavailable", failed.error
        assert "the inference server answered UNAVAILABLE" in failed.error.message
        assert [v.id for v in client.videos.list()] == [video.id]
    finally:
        api.stop()
        server.stop()


def test_without_a_served_model_create_is_503(workspace, keys):
    [port] = free_ports(1)
    api = ApiProcess(f"127.0.0.1:{port}", f"sqlite:///{workspace / 'gone.db'}", workspace / "gone",
                     keys["alice"], workspace / "gone.jsonl")
    try:
        with pytest.raises(openai.APIStatusError) as refused:  # no model to check the fields against
            api.client(keys["alice"]).videos.create(**JOB)
        assert refused.value.status_code == 503 and "serves no video model" in refused.value.message
    finally:
        api.stop()


def test_metrics_count_jobs_by_state(api):
    with urllib.request.urlopen(f"{api.url}/metrics") as response:
        text = response.read().decode()
    completed = [line for line in text.splitlines() if line.startswith('wan22_video_jobs{status="completed"}')]
    assert completed and float(completed[0].split()[-1]) >= 1
    assert "wan22_video_job_seconds_count" in text and "wan22_video_job_queue_seconds_bucket" in text


def test_frames_for_seconds_follow_the_checkpoint():
    """seconds -> frames from the fps and the VAE's temporal step (a checkpoint's facts, not constants)."""
    from types import SimpleNamespace

    from video_api.mapping import frames_for

    for fps, step, seconds, frames in [(16, 4, 5, 81), (24, 4, 5, 121), (16, 4, 0.25, 5), (16, 4, 0.3, 5)]:
        manifest = SimpleNamespace(checkpoint=SimpleNamespace(vae_scale_factor_temporal=step,
                                                              generation=SimpleNamespace(fps=fps)))
        assert frames_for(seconds, manifest) == frames
