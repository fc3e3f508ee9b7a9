"""The OpenAI-compatible video jobs API (`/v1/videos`) in front of Triton.

A job is a row of a database (store.py: SQLite by default, PostgreSQL by URL) that a runner (runner.py) claims,
runs as one streaming gRPC request to the served orchestrator (progress from its per-step messages) and completes
with the MP4 on disk. The HTTP service (app.py, FastAPI) speaks OpenAI's video API; request fields are mapped to the
request contract from the served checkpoint's facts (mapping.py). `python -m video_api` starts it.
"""

from __future__ import annotations

# `python -m video_api serve`'s settings, also read by the launcher and the Kubernetes manifests
DEFAULT_PORT = 8080  # and the serve image's
DEFAULT_DATABASE = "sqlite:///video_jobs.db"  # in the working folder
DEFAULT_RESULTS = "video_results"
API_KEY_ENV = "WAN22_API_KEY"
DATABASE_ENV = "WAN22_VIDEO_API_DATABASE"  # the serve image points both at its state volume
RESULTS_ENV = "WAN22_VIDEO_API_RESULTS"


def absolute_sqlite(url: str) -> str:
    """A SQLite URL whose file is relative to the working folder (sqlite:///video_jobs.db) made absolute, for a
    process started elsewhere; other URLs as they are."""
    from pathlib import Path

    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:" or \
            Path(parsed.database).is_absolute():
        return url
    return parsed.set(database=str(Path(parsed.database).resolve())).render_as_string(hide_password=False)


def shown_url(url: str) -> str:
    """A database URL as logs may show it: a password (a URL from a Secret) as ***."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy reads: opening it says so
        return url
