"""Runs the store's queued jobs against Triton: one streaming gRPC request per job to the model's streaming twin.

Worker threads claim jobs (store.JobStore.claim: each job runs once, whichever process claims it), record the
per-step progress, and store the MP4 the server encodes (`output_format=mp4`) under the results folder. A job deleted
while it runs is stopped at its next step (the stream is cancelled, the server stops between steps) and removed.
A housekeeping thread refreshes this process's heartbeat, fails the jobs of processes that stopped refreshing theirs,
and deletes results past their retention or beyond the size bound, oldest first.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
import time
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import GaugeMetricFamily
from tritonclient.utils import InferenceServerException

from clients import grpc_client
from wan22_triton.components.orchestrator import VIDEO_MP4, stream_model
from wan22_triton.operations import events
from wan22_triton.request.contract import SEED

from .mapping import inputs_for_triton
from .store import JobStore, Status

log = logging.getLogger("video_api")
MP4 = ".mp4"
PROGRESS_PERIOD_S = 0.25


class _Stop(Exception):
    """Raised from the progress callback: the stream is cancelled and the job ends without a result."""


class JobMetrics:
    """Jobs by state (read from the store at each scrape), queue and run seconds (this process's jobs)."""

    def __init__(self, store: JobStore) -> None:
        self.registry = CollectorRegistry()
        self.queue_seconds = Histogram("wan22_video_job_queue_seconds", "time from create to start",
                                       buckets=(1, 5, 15, 60, 300, 900, 3600), registry=self.registry)
        self.job_seconds = Histogram("wan22_video_job_seconds", "time from start to the stored result",
                                     buckets=(1, 5, 15, 60, 180, 600, 1800, 3600), registry=self.registry)
        self._store = store
        self.registry.register(self)

    def collect(self):
        family = GaugeMetricFamily("wan22_video_jobs", "jobs in the store by status", labels=["status"])
        for status, count in self._store.counts().items():
            family.add_metric([str(status)], count)
        yield family


class JobRunner:
    def __init__(self, store: JobStore, triton_url: str, results: Path, metrics: JobMetrics, *, workers: int = 2,
                 lease_s: float = 30.0, retention_s: float = 86400.0, max_results_bytes: int = 50 << 30,
                 poll_s: float = 0.5) -> None:
        self.store, self.url, self.results, self.metrics = store, triton_url, Path(results), metrics
        self.workers, self.lease_s, self.retention_s = workers, lease_s, retention_s
        self.max_results_bytes, self.poll_s = max_results_bytes, poll_s
        self.owner = f"{os.uname().nodename}-{os.getpid()}-{secrets.token_hex(4)}"
        self._stopping = threading.Event()
        self._queued = threading.Event()  # set by this process's creates: a worker claims at once
        self._threads: list[threading.Thread] = []
        self._deleted: set[str] = set()
        self._finished: dict[str, float] = {}  # jobs this process ended lately (for the API's long polls): when

    def job_created(self) -> None:
        self._queued.set()

    def job_deleted(self, job_id: str) -> None:
        """A running job deleted through this process: its worker stops it at the next step."""
        self._deleted.add(job_id)

    def start(self) -> None:
        self.results.mkdir(parents=True, exist_ok=True)
        targets = [self._work] * self.workers + [self._housekeeping]
        self._threads = [threading.Thread(target=t, name=f"video-job-{i}", daemon=True) for i, t in enumerate(targets)]
        for thread in self._threads:
            thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stops claiming; running jobs are cancelled at their next step and fail, saying so."""
        self._stopping.set()
        self._queued.set()
        for thread in self._threads:
            thread.join(timeout_s)

    def ended(self, job_id: str) -> bool:
        """Whether this process ended the job within the last minute."""
        return job_id in self._finished

    def _ended(self, job_id: str) -> None:
        now = time.monotonic()
        if len(self._finished) > 1000:
            self._finished = {k: t for k, t in self._finished.items() if now - t < 60}
        self._finished[job_id] = now

    def result_path(self, job_id: str) -> Path:
        return self.results / f"{job_id}{MP4}"

    # ---- workers

    def _work(self) -> None:
        while not self._stopping.is_set():
            try:
                job = self.store.claim(self.owner)
            except Exception:  # the database away for a moment: try again, never die
                log.exception("claiming a job failed")
                job = None
            if job is None:  # jobs created through other processes are seen within poll_s
                if self._queued.wait(self.poll_s):
                    self._queued.clear()
                continue
            self._queued.set()  # another worker may find another job
            try:
                self._run(job)
            finally:
                self._ended(job["id"])
                self._deleted.discard(job["id"])

    def _run(self, job: dict[str, Any]) -> None:
        job_id, started = job["id"], time.time()
        self.metrics.queue_seconds.observe(started - job["created_at"])
        events.emit("video_job_started", job=job_id, model=job["model"], queued_s=round(started - job["created_at"], 3))
        inputs = json.loads(job["inputs"])

        written = [0.0]

        def on_progress(progress: dict[str, Any]) -> None:
            # the store at most every PROGRESS_PERIOD_S (a deletion through another process is seen then); a
            # deletion through this one at once
            if job_id in self._deleted or self._stopping.is_set():
                raise _Stop
            if time.monotonic() - written[0] >= PROGRESS_PERIOD_S:
                written[0] = time.monotonic()
                if not self.store.progress(job_id, min(99, int(100 * progress["step"] / progress["total"]))):
                    raise _Stop

        try:
            call = time.perf_counter()
            out = grpc_client.generate_stream(self.url, inputs_for_triton(job, inputs), on_progress,
                                              stream_model(job["model"]))
            generation_s = time.perf_counter() - call
        except _Stop:
            self._end_stopped(job_id)
            return
        except InferenceServerException as e:
            status = str(e.status() or "StatusCode.INTERNAL").removeprefix("StatusCode.").lower()
            self._fail(job_id, status, f"the inference server answered {status.upper()}: {e.message()}")
            return
        except Exception as e:  # never lose a job silently: whatever broke is its error
            log.exception("job %s failed", job_id)
            self._fail(job_id, "internal_error", f"{type(e).__name__}: {e}")
            return
        path = self.result_path(job_id)
        partial = path.with_suffix(".partial")
        partial.write_bytes(out[VIDEO_MP4])
        partial.replace(path)
        result_bytes = path.stat().st_size
        self.store.complete(job_id, str(path), result_bytes, int(out[SEED]), self.retention_s)
        self._remove_if_deleted(job_id)  # after its last step
        elapsed = time.time() - started
        self.metrics.job_seconds.observe(elapsed)
        events.emit("video_job_completed", job=job_id, seconds=round(elapsed, 4), generation_s=round(generation_s, 4),
                    bytes=result_bytes)

    def _fail(self, job_id: str, code: str, message: str) -> None:
        self.store.fail(job_id, code, message)
        self._remove_if_deleted(job_id)
        events.emit("video_job_failed", job=job_id, code=code, message=message)

    def _end_stopped(self, job_id: str) -> None:
        if self._remove_if_deleted(job_id):
            events.emit("video_job_deleted", job=job_id, running=True)
        else:
            self._fail(job_id, "service_stopped", "the API service stopped during the generation: create the job "
                                                  "again")

    def _remove_if_deleted(self, job_id: str) -> bool:
        """A job deleted while it ran (the store hides it from then on): its row and files go now; whether it was."""
        if self.store.get(job_id) is not None:
            return False
        self._remove(job_id)
        return True

    def _remove(self, job_id: str) -> None:
        self.store.remove(job_id)
        remove_files(self.results, job_id)

    # ---- housekeeping

    def _housekeeping(self) -> None:
        period = max(min(self.lease_s / 3, 10.0), 0.2)
        while not self._stopping.wait(period):
            try:
                self.store.heartbeat(self.owner)
                for job_id in self.store.fail_lost(self.lease_s):
                    events.emit("video_job_failed", job=job_id, code="job_lost")
                for row in self.store.expired_results(time.time(), self.max_results_bytes):
                    remove_files(self.results, row["id"])
                    self.store.forget_result(row["id"])
            except Exception:
                log.exception("housekeeping failed; trying again")


def remove_files(results: Path, job_id: str) -> None:
    """A job's MP4 and the images made from it."""
    for path in results.glob(f"{job_id}.*"):
        path.unlink(missing_ok=True)
