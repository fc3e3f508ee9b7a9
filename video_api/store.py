"""The durable job store: jobs, API keys and the schema's version in one database (SQLAlchemy Core).

SQLite by default (a file; WAL, so readers never wait for the runner's writes), PostgreSQL by URL
(`postgresql+psycopg://...`) when several API processes share the jobs. The schema is migrated at open: MIGRATIONS
in order, each recorded in `schema_version`, inside one transaction.

Exactly once: a process claims a queued job with a conditional UPDATE (status still queued), so two processes never
both run it. A running job's owner refreshes `heartbeat_at`; a running job whose heartbeat is older than the lease
lost its process (killed, crashed) and is failed with that reason, never run again.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import secrets
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Callable, Iterator

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from . import DEFAULT_DATABASE

KEY_PREFIX = "wv-"  # a key's visible start, like other services' keys
MIGRATION_LOCK = 0x77616E32  # PostgreSQL advisory lock id of the migrations ("wan2")


class Status(StrEnum):
    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"


metadata = sa.MetaData()
schema_version = sa.Table("schema_version", metadata, sa.Column("version", sa.Integer, nullable=False))
api_keys = sa.Table(
    "api_keys", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(64), nullable=False, unique=True),
    sa.Column("key_hash", sa.String(64), nullable=False, unique=True),  # sha256 hex: the key itself is never stored
    sa.Column("max_running", sa.Integer, nullable=False),
    sa.Column("max_queued", sa.Integer, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)
jobs = sa.Table(
    "jobs", metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("key_id", sa.Integer, sa.ForeignKey("api_keys.id"), nullable=False, index=True),
    sa.Column("model", sa.String(64), nullable=False),
    sa.Column("status", sa.String(16), nullable=False, index=True),
    sa.Column("progress", sa.Integer, nullable=False, default=0),
    sa.Column("prompt", sa.Text, nullable=False),
    sa.Column("seconds", sa.String(16), nullable=False),
    sa.Column("size", sa.String(16), nullable=False),
    sa.Column("inputs", sa.Text, nullable=False),  # JSON: the request contract's inputs, the image aside
    sa.Column("image", sa.LargeBinary, nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("started_at", sa.Float, nullable=True),
    sa.Column("completed_at", sa.Float, nullable=True),
    sa.Column("expires_at", sa.Float, nullable=True),
    sa.Column("owner", sa.String(40), nullable=True),
    sa.Column("heartbeat_at", sa.Float, nullable=True),
    sa.Column("cancel_requested", sa.Boolean, nullable=False, default=False),
    sa.Column("error_code", sa.String(64), nullable=True),
    sa.Column("error_message", sa.Text, nullable=True),
    sa.Column("result_path", sa.Text, nullable=True),
    sa.Column("result_bytes", sa.Integer, nullable=True),
    sa.Column("seed_used", sa.BigInteger, nullable=True),
)


def _v1(conn: Connection) -> None:
    metadata.create_all(conn, tables=[api_keys, jobs])


MIGRATIONS: tuple[Callable[[Connection], None], ...] = (_v1,)  # a new schema: append a step, never edit one


@dataclass(frozen=True)
class ApiKey:
    id: int
    name: str
    max_running: int
    max_queued: int


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_job_id() -> str:
    return f"video_{secrets.token_hex(16)}"


class JobStore:
    def __init__(self, url: str = DEFAULT_DATABASE) -> None:
        self.engine: Engine = sa.create_engine(url, future=True, pool_pre_ping=True)
        if self.engine.dialect.name == "sqlite":
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        self.migrate()

    def migrate(self) -> int:
        """Applies the migrations this database has not had, one process at a time; returns the schema's version."""
        with self._migration_lock(), self.engine.begin() as conn:
            if self.engine.dialect.name == "postgresql":  # held until the transaction ends
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
            metadata.create_all(conn, tables=[schema_version])
            version = conn.execute(sa.select(sa.func.max(schema_version.c.version))).scalar() or 0
            for number, step in enumerate(MIGRATIONS[version:], start=version + 1):
                step(conn)
                conn.execute(schema_version.insert().values(version=number))
            return len(MIGRATIONS)

    # ---- keys

    def _migration_lock(self) -> contextlib.AbstractContextManager:
        """SQLite: a lock file beside the database (PostgreSQL: an advisory lock, in migrate)."""
        path = self.engine.url.database if self.engine.dialect.name == "sqlite" else None
        if not path or path == ":memory:":
            return contextlib.nullcontext()
        return _file_lock(Path(f"{path}.migrate-lock"))

    def add_key(self, name: str, max_running: int, max_queued: int, key: str | None = None) -> str:
        """Stores a key (the given one, else a new one) by its hash; returns the key."""
        key = key or KEY_PREFIX + secrets.token_urlsafe(24)
        with self.engine.begin() as conn:
            conn.execute(api_keys.insert().values(name=name, key_hash=hash_key(key), max_running=max_running,
                                                  max_queued=max_queued, created_at=time.time()))
        return key

    def ensure_key(self, name: str, key: str, max_running: int, max_queued: int) -> None:
        """The key present under `name` with these quotas (the service's --api-key)."""
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(api_keys.c.id).where(api_keys.c.name == name)).first()
            values = dict(key_hash=hash_key(key), max_running=max_running, max_queued=max_queued)
            if row is None:
                conn.execute(api_keys.insert().values(name=name, created_at=time.time(), **values))
            else:
                conn.execute(api_keys.update().where(api_keys.c.id == row.id).values(**values))

    def has_keys(self) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(api_keys.c.id).limit(1)).first() is not None

    def find_key(self, key: str) -> ApiKey | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(api_keys).where(api_keys.c.key_hash == hash_key(key))).first()
        return None if row is None else ApiKey(row.id, row.name, row.max_running, row.max_queued)

    # ---- jobs

    def create(self, key: ApiKey, *, model: str, prompt: str, seconds: str, size: str, inputs: dict[str, Any],
               image: bytes | None) -> dict[str, Any] | None:
        """A queued job; None when the key already has its max_queued jobs waiting or running."""
        with self.engine.begin() as conn:
            if self.engine.dialect.name == "postgresql":  # the count and the insert as one, per key
                conn.execute(sa.select(api_keys.c.id).where(api_keys.c.id == key.id).with_for_update())
            active = conn.execute(sa.select(sa.func.count()).select_from(jobs).where(
                jobs.c.key_id == key.id, jobs.c.status.in_([Status.QUEUED, Status.IN_PROGRESS]),
                jobs.c.cancel_requested.is_(False))).scalar()
            if active >= key.max_queued:
                return None
            row = dict(id=new_job_id(), key_id=key.id, model=model, status=Status.QUEUED, progress=0, prompt=prompt,
                       seconds=seconds, size=size, inputs=json.dumps(inputs), image=image, created_at=time.time(),
                       cancel_requested=False)
            conn.execute(jobs.insert().values(**row))
        return self.get(row["id"])

    def get(self, job_id: str, key_id: int | None = None) -> dict[str, Any] | None:
        """The job (a deleted one is gone), only if `key_id` owns it when given."""
        query = sa.select(jobs).where(jobs.c.id == job_id, jobs.c.cancel_requested.is_(False))
        if key_id is not None:
            query = query.where(jobs.c.key_id == key_id)
        with self.engine.connect() as conn:
            row = conn.execute(query).mappings().first()
        return None if row is None else dict(row)

    def list(self, key_id: int, *, after: str | None, limit: int, ascending: bool) -> tuple[list[dict], bool]:
        """The key's jobs by creation time, `limit` after the job `after`; and whether more follow."""
        order = (jobs.c.created_at.asc(), jobs.c.id.asc()) if ascending else (jobs.c.created_at.desc(),
                                                                              jobs.c.id.desc())
        query = sa.select(jobs).where(jobs.c.key_id == key_id, jobs.c.cancel_requested.is_(False))
        with self.engine.connect() as conn:
            if after:
                mark = conn.execute(sa.select(jobs.c.created_at, jobs.c.id).where(jobs.c.id == after)).first()
                if mark is not None:
                    key = sa.tuple_(jobs.c.created_at, jobs.c.id)
                    query = query.where(key > tuple(mark) if ascending else key < tuple(mark))
            rows = [dict(r) for r in conn.execute(query.order_by(*order).limit(limit + 1)).mappings()]
        return rows[:limit], len(rows) > limit

    def delete(self, job_id: str, key_id: int) -> dict[str, Any] | None:
        """A queued or finished job is removed at once (its row returned, for its files); a running one is marked,
        and its runner stops it at the next step and removes it. None: no such job of this key."""
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(jobs).where(jobs.c.id == job_id, jobs.c.key_id == key_id,
                                                     jobs.c.cancel_requested.is_(False))).mappings().first()
            if row is None:
                return None
            if row["status"] == Status.IN_PROGRESS:
                conn.execute(jobs.update().where(jobs.c.id == job_id).values(cancel_requested=True))
            else:
                conn.execute(jobs.delete().where(jobs.c.id == job_id))
        return dict(row)

    def claim(self, owner: str) -> dict[str, Any] | None:
        """The oldest queued job whose key runs fewer than its max_running, now in progress and this owner's."""
        with self.engine.connect() as conn:
            running = dict(conn.execute(sa.select(jobs.c.key_id, sa.func.count()).where(
                jobs.c.status == Status.IN_PROGRESS).group_by(jobs.c.key_id)).all())
            limits = dict(conn.execute(sa.select(api_keys.c.id, api_keys.c.max_running)).all())
            candidates = conn.execute(sa.select(jobs.c.id, jobs.c.key_id).where(
                jobs.c.status == Status.QUEUED, jobs.c.cancel_requested.is_(False)).order_by(
                jobs.c.created_at).limit(32)).all()
        for job_id, key_id in candidates:
            if running.get(key_id, 0) >= limits.get(key_id, 0):
                continue
            # max_running checked in the UPDATE itself (read above, other workers and processes may have claimed
            # since); PostgreSQL: the key's claims one at a time, so that the count sees the others' claims
            busy = jobs.alias("busy")
            running_now = sa.select(sa.func.count()).select_from(busy).where(
                busy.c.key_id == key_id, busy.c.status == Status.IN_PROGRESS).scalar_subquery()
            limit = sa.select(api_keys.c.max_running).where(api_keys.c.id == key_id).scalar_subquery()
            now = time.time()
            with self.engine.begin() as conn:
                if self.engine.dialect.name == "postgresql":
                    conn.execute(sa.select(api_keys.c.id).where(api_keys.c.id == key_id).with_for_update())
                claimed = conn.execute(jobs.update().where(jobs.c.id == job_id, jobs.c.status == Status.QUEUED,
                                                           running_now < limit).values(
                    status=Status.IN_PROGRESS, owner=owner, started_at=now, heartbeat_at=now)).rowcount
            if claimed:
                return self.get(job_id)
        return None

    def progress(self, job_id: str, percent: int) -> bool:
        """Records the progress (never lower); False when the job was deleted meanwhile (stop it)."""
        with self.engine.begin() as conn:
            conn.execute(jobs.update().where(jobs.c.id == job_id, jobs.c.progress < percent).values(progress=percent))
            return not conn.execute(sa.select(jobs.c.cancel_requested).where(jobs.c.id == job_id)).scalar()

    def heartbeat(self, owner: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(jobs.update().where(jobs.c.owner == owner, jobs.c.status == Status.IN_PROGRESS).values(
                heartbeat_at=time.time()))

    def complete(self, job_id: str, result_path: str, result_bytes: int, seed: int, retention_s: float) -> None:
        now = time.time()
        with self.engine.begin() as conn:
            conn.execute(jobs.update().where(jobs.c.id == job_id).values(
                status=Status.COMPLETED, progress=100, completed_at=now, expires_at=now + retention_s,
                result_path=result_path, result_bytes=result_bytes, seed_used=seed, image=None))

    def fail(self, job_id: str, code: str, message: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(jobs.update().where(jobs.c.id == job_id).values(
                status=Status.FAILED, completed_at=time.time(), error_code=code, error_message=message, image=None))

    def remove(self, job_id: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(jobs.delete().where(jobs.c.id == job_id))

    def fail_lost(self, lease_s: float) -> list[str]:
        """Fails the running jobs whose process stopped refreshing them (their generation is lost); their ids."""
        cutoff = time.time() - lease_s
        with self.engine.begin() as conn:
            lost = conn.execute(sa.select(jobs.c.id).where(jobs.c.status == Status.IN_PROGRESS,
                                                           jobs.c.heartbeat_at < cutoff)).scalars().all()
            # deleted while their process was dying: nobody is left to remove them
            conn.execute(jobs.delete().where(jobs.c.id.in_(lost), jobs.c.cancel_requested.is_(True)))
            for job_id in lost:
                conn.execute(jobs.update().where(jobs.c.id == job_id, jobs.c.status == Status.IN_PROGRESS).values(
                    status=Status.FAILED, completed_at=time.time(), error_code="job_lost", image=None,
                    error_message=f"the API process running this job stopped (no heartbeat for {lease_s:g} s); its "
                                  "generation was lost: create the job again"))
        return list(lost)

    def expired_results(self, now: float, max_total_bytes: int) -> list[dict[str, Any]]:
        """Completed jobs whose result is past its time, then the oldest beyond the total size bound."""
        with self.engine.connect() as conn:
            done = [dict(r) for r in conn.execute(sa.select(jobs.c.id, jobs.c.result_path, jobs.c.result_bytes,
                                                            jobs.c.expires_at).where(
                jobs.c.status == Status.COMPLETED, jobs.c.result_path.is_not(None)).order_by(
                jobs.c.completed_at.desc())).mappings()]
        out, total = [], 0
        for row in done:
            total += row["result_bytes"] or 0
            if row["expires_at"] <= now or total > max_total_bytes:
                out.append(row)
        return out

    def forget_result(self, job_id: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(jobs.update().where(jobs.c.id == job_id).values(result_path=None,
                                                                          expires_at=time.time()))

    def counts(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(jobs.c.status, sa.func.count()).where(
                jobs.c.cancel_requested.is_(False)).group_by(jobs.c.status)).all()
        return {**dict.fromkeys(Status, 0), **dict(rows)}


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")  # in WAL mode: durable across a process crash, no fsync per commit
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
