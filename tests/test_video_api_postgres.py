"""The video jobs API on PostgreSQL: a real PostgreSQL server started here (Debian's `postgresql`, as an unprivileged
account when root), two API processes sharing it in front of the session's tritonserver, each job run exactly once;
the migrations, the queued quota and max_running under concurrency."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
import sqlalchemy as sa

from clients import grpc_client
from server.process import free_ports
from video_api.store import MIGRATIONS, JobStore, Status, schema_version
from wan22_triton.components.orchestrator import VIDEO_MP4
from wan22_triton.operations import events

from .test_video_api import DIRECT, JOB, LONG_JOB, WAN, ApiProcess, wait_for

pytestmark = [pytest.mark.server, pytest.mark.filterwarnings("ignore::DeprecationWarning")]
KEY = "wv-shared-test-key"
TOOLS = ("initdb", "postgres", "pg_ctl", "pg_isready")


def _bin() -> Path:
    for initdb in [*sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))[::-1], shutil.which("initdb")]:
        if initdb and all((Path(initdb).resolve().parent / tool).is_file() for tool in TOOLS):
            return Path(initdb).resolve().parent
    pytest.fail("PostgreSQL's server (initdb, postgres, pg_ctl) is not installed: apt-get install postgresql",
                pytrace=False)


def _as_server_user(folder: Path) -> list[str]:
    """setpriv: as an unprivileged account when root (PostgreSQL refuses root), and SIGINT (a fast shutdown) when
    pytest dies without its teardown. The folder becomes that account's."""
    command = ["setpriv", "--pdeathsig", "INT"]
    if os.geteuid() == 0:
        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            account = pwd.getpwnam("nobody")
        os.chown(folder, account.pw_uid, account.pw_gid)
        command += [f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}", "--clear-groups"]
    return command


@pytest.fixture(scope="module")
def postgres_url():
    """A throwaway cluster (unix socket only, fsync off) and its database `jobs`: the SQLAlchemy URL."""
    tools = _bin()
    # not under pytest's tmp folders: root-only (0700), and a socket's path must stay under 108 bytes
    folder = Path(tempfile.mkdtemp(prefix="wan22-pg-"))
    as_user, data, [port] = _as_server_user(folder), folder / "data", free_ports(1)

    def run(tool: str, *args) -> None:
        done = subprocess.run([*as_user, tools / tool, *map(str, args)], capture_output=True, text=True)
        assert done.returncode == 0, f"{tool}: {done.stdout}{done.stderr}"

    server = None
    try:
        run("initdb", "-D", data, "-U", "wan22", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync")
        with open(folder / "server.log", "w") as log:
            server = subprocess.Popen([*as_user, tools / "postgres", "-D", data, "-k", folder, "-p", str(port),
                                       "-c", "listen_addresses=", "-c", "fsync=off", "-c", "max_connections=60"],
                                      stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while subprocess.run([tools / "pg_isready", "-q", "-h", folder, "-p", str(port)]).returncode:
            assert server.poll() is None and time.monotonic() < deadline, (folder / "server.log").read_text()
            time.sleep(0.1)
        url = f"postgresql+psycopg://wan22@/postgres?host={folder}&port={port}"
        yield new_database(url, "jobs")
    finally:
        if server is not None:
            try:
                run("pg_ctl", "stop", "-D", data, "-m", "fast", "-w")
                server.wait(30)
            finally:
                if server.poll() is None:
                    server.send_signal(signal.SIGQUIT)  # an immediate shutdown
                    server.wait(30)
        shutil.rmtree(folder, ignore_errors=True)


def new_database(url: str, name: str) -> str:
    """CREATE DATABASE `name` on the server of `url`; its URL."""
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    engine.dispose()
    return sa.make_url(url).set(database=name).render_as_string(hide_password=False)


def test_two_api_processes_share_the_jobs_and_run_each_once(postgres_url, torch_server, tmp_path):
    apis = [ApiProcess(torch_server.grpc_url, postgres_url, tmp_path / f"results-{i}", KEY,
                       tmp_path / f"events-{i}.jsonl", "--workers", "1") for i in range(2)]
    try:
        clients = [api.client(KEY) for api in apis]
        made = {clients[i % 2].videos.create(**JOB, extra_body={**WAN, "seed": seed}).id: seed
                for i, seed in enumerate(range(200, 208))}
        for index, (video_id, seed) in enumerate(made.items()):
            other = clients[(index + 1) % 2]  # the process the job was not created through
            assert wait_for(other, video_id).status == "completed"
            assert clients[index % 2].videos.retrieve(video_id).status == "completed"
            mp4 = other.videos.download_content(video_id).read()
            assert mp4 == grpc_client.generate(torch_server.grpc_url, {**DIRECT, "seed": seed})[VIDEO_MP4]
    finally:
        for api in apis:
            api.stop()
    started = [[e["job"] for e in events.read_events(tmp_path / f"events-{i}.jsonl")
                if e["event"] == "video_job_started"] for i in range(2)]
    assert sorted(started[0] + started[1]) == sorted(made)  # each job once, in one of the two
    assert started[0] and started[1], started  # both took jobs


def test_concurrent_opens_migrate_the_schema_once(postgres_url):
    database = new_database(postgres_url, "fresh")
    with ThreadPoolExecutor(4) as pool:
        stores = list(pool.map(lambda _: JobStore(database), range(4)))
    with stores[0].engine.connect() as conn:
        rows = conn.execute(sa.select(schema_version.c.version).order_by(schema_version.c.version)).scalars().all()
    assert rows == list(range(1, len(MIGRATIONS) + 1))
    for store in stores:
        assert store.migrate() == len(MIGRATIONS)
        store.engine.dispose()


def test_the_queued_quota_holds_for_concurrent_creates(postgres_url, torch_server, tmp_path):
    api = ApiProcess(torch_server.grpc_url, new_database(postgres_url, "quota"), tmp_path / "results", KEY,
                     tmp_path / "events.jsonl", "--max-queued", "2")
    try:
        client = api.client(KEY)

        def create(_):
            try:
                return client.videos.create(**LONG_JOB).id
            except openai.RateLimitError as refused:
                return refused

        with ThreadPoolExecutor(6) as pool:  # at once: the quota's count and insert are one, per key
            results = list(pool.map(create, range(6)))
        made = [r for r in results if isinstance(r, str)]
        assert len(made) == 2 and sum(isinstance(r, openai.RateLimitError) for r in results) == 4, results
        for video_id in made:
            client.videos.delete(video_id)
        deadline = time.monotonic() + 60
        while client.videos.list().data and time.monotonic() < deadline:  # the running ones go at their next step
            time.sleep(0.1)
        assert client.videos.create_and_poll(**JOB, extra_body=WAN, poll_interval_ms=100).status == "completed"
    finally:
        api.stop()


def test_concurrent_claims_run_each_job_once_within_max_running(postgres_url):
    """Four stores (as four processes would), eight workers, a key with max_running=1: each job is claimed once,
    and never two at a time."""
    database = new_database(postgres_url, "claims")
    stores = [JobStore(database) for _ in range(4)]
    key = stores[0].find_key(stores[0].add_key("claims", max_running=1, max_queued=100))
    made = [stores[0].create(key, model="m", prompt="p", seconds="1", size="32x32", inputs={}, image=None)["id"]
            for _ in range(24)]
    claimed, running = [], []

    def work(worker: int) -> None:
        store = stores[worker % len(stores)]
        while store.counts()[Status.QUEUED]:
            job = store.claim(f"worker-{worker}")
            if job is None:
                time.sleep(0.002)
            else:
                claimed.append(job["id"])
                running.append(store.counts()[Status.IN_PROGRESS])
                time.sleep(0.005)
                store.complete(job["id"], "/nowhere.mp4", 1, 1, 60)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(work, range(8)))
    for store in stores:
        store.engine.dispose()
    assert sorted(claimed) == sorted(made) and max(running) == 1, running
