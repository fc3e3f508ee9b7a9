"""The video jobs API on PostgreSQL: a real PostgreSQL server started here (Debian's `postgresql`), two API processes
sharing it in front of the session's tritonserver, each job run exactly once."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
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
from video_api.store import MIGRATIONS, JobStore, schema_version
from wan22_triton.components.orchestrator import VIDEO_MP4
from wan22_triton.operations import events

from .test_video_api import DIRECT, JOB, LONG_JOB, WAN, ApiProcess, wait_for

pytestmark = [pytest.mark.server, pytest.mark.filterwarnings("ignore::DeprecationWarning")]
KEY = "wv-shared-test-key"
SERVER_USER = "postgres"  # PostgreSQL refuses to run as root


class Postgres:
    """A throwaway PostgreSQL cluster on a unix socket (no TCP listener), fsync off."""

    def __init__(self) -> None:
        initdb = shutil.which("initdb") or next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))), None)
        if initdb is None:
            pytest.fail("PostgreSQL is not installed: apt-get install postgresql (these tests start a server)")
        self.bin = Path(initdb).resolve().parent
        self.folder = Path(tempfile.mkdtemp(prefix="wan22-pg-"))  # outside pytest's root-only folders
        self.as_user = ["runuser", "-u", SERVER_USER, "--"] if os.geteuid() == 0 else []
        if self.as_user:
            account = pwd.getpwnam(SERVER_USER)
            os.chown(self.folder, account.pw_uid, account.pw_gid)
        [self.port] = free_ports(1)
        self._run("initdb", "-D", self.folder / "data", "-U", "wan22", "--auth=trust", "--no-sync", "-E", "UTF8")
        options = f"-k {self.folder} -p {self.port} -c listen_addresses='' -c fsync=off -c max_connections=60"
        self._run("pg_ctl", "-D", self.folder / "data", "-l", self.folder / "server.log", "-w", "-o", options, "start")

    def _run(self, tool: str, *args) -> None:
        subprocess.run([*self.as_user, self.bin / tool, *map(str, args)], check=True, capture_output=True)

    def database(self, name: str) -> str:
        self._run("createdb", "-h", self.folder, "-p", self.port, "-U", "wan22", name)
        return f"postgresql+psycopg://wan22@/{name}?host={self.folder}&port={self.port}"

    def stop(self) -> None:
        self._run("pg_ctl", "-D", self.folder / "data", "-m", "fast", "-w", "stop")
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres():
    server = Postgres()
    yield server
    server.stop()


def test_two_api_processes_share_the_jobs_and_run_each_once(postgres, torch_server, tmp_path):
    database = postgres.database("shared")
    apis = [ApiProcess(torch_server.grpc_url, database, tmp_path / f"results-{i}", KEY, tmp_path / f"events-{i}.jsonl",
                       "--workers", "1") for i in range(2)]
    try:
        clients = [api.client(KEY) for api in apis]
        seeds = list(range(200, 208))
        made = {clients[i % 2].videos.create(**JOB, extra_body={**WAN, "seed": seed}).id: seed
                for i, seed in enumerate(seeds)}
        for index, (video_id, seed) in enumerate(made.items()):
            other = clients[(index + 1) % 2]  # every job is visible through either process
            assert wait_for(other, video_id).status == "completed"
            mp4 = other.videos.download_content(video_id).read()
            assert mp4 == grpc_client.generate(torch_server.grpc_url, {**DIRECT, "seed": seed})[VIDEO_MP4]
    finally:
        for api in apis:
            api.stop()
    started = [[e["job"] for e in events.read_events(tmp_path / f"events-{i}.jsonl")
                if e["event"] == "video_job_started"] for i in range(2)]
    assert sorted(started[0] + started[1]) == sorted(made)  # each job once, in one of the two
    assert started[0] and started[1]  # both took jobs


def test_concurrent_opens_migrate_the_schema_once(postgres):
    database = postgres.database("fresh")
    with ThreadPoolExecutor(4) as pool:
        versions = list(pool.map(lambda _: JobStore(database).migrate(), range(4)))
    assert versions == [len(MIGRATIONS)] * 4
    with JobStore(database).engine.connect() as conn:
        rows = conn.execute(sa.select(schema_version.c.version).order_by(schema_version.c.version)).scalars().all()
    assert rows == list(range(1, len(MIGRATIONS) + 1))


def test_the_queued_quota_holds_on_postgresql(postgres, torch_server, tmp_path):
    database = postgres.database("quota")
    api = ApiProcess(torch_server.grpc_url, database, tmp_path / "results", KEY, tmp_path / "events.jsonl",
                     "--max-queued", "2")
    try:
        client = api.client(KEY)
        made = [client.videos.create(**LONG_JOB).id for _ in range(2)]
        with pytest.raises(openai.RateLimitError):
            client.videos.create(**JOB, extra_body=WAN)
        for video_id in made:
            client.videos.delete(video_id)
        deadline = time.monotonic() + 60
        while client.videos.list().data and time.monotonic() < deadline:  # the running one goes at its next step
            time.sleep(0.1)
        assert client.videos.create_and_poll(**JOB, extra_body=WAN, poll_interval_ms=100).status == "completed"
    finally:
        api.stop()
