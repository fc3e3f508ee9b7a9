"""Abandoned HTTP requests, told to the model that serves them: a side channel from the HTTP guard.

Over HTTP, Triton 2.51 does not tell a model that its client went away: while a model runs, Triton's HTTP server
keeps that connection paused with reading off (libevhtp's `evhtp_request_pause`), so a close goes unseen until the
response is written, and `request.is_cancelled()` stays False to the end (measured; docs/security.md, "Security and failure
behaviour"). Closing the upstream connection, which is all a proxy can do, changes nothing. So the guard says it
another way, opt-in (`--abandon-dir`):

* it adds `TOKEN_HEADER: <32 hex digits>` to each inference request; tritonserver started with
  `--http-header-forward-pattern=FORWARD_PATTERN` hands the model that header as a request parameter;
* when the client disconnects before the response has started, the guard creates the empty file `<dir>/<token>`;
* the model asks `AbandonWatch(request.parameters(), dir)` between steps, next to `request.is_cancelled()`; the
  watch removes the marker it reports. Markers nobody reported (the request had finished) are swept after
  MARKER_TTL_S.

Standard library only: the Python-backend models import it (the guard too), without aiohttp.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from pathlib import Path

TOKEN_HEADER = "wan22-abandon-token"
FORWARD_PATTERN = f"^{TOKEN_HEADER}$"  # tritonserver --http-header-forward-pattern (RE2, matched on the header name)
DIR_ENV = "WAN22_ABANDON_DIR"  # where tritonserver's models find the markers (the guard's --abandon-dir)
MARKER_TTL_S = 3600.0
_TOKEN = re.compile(r"[0-9a-f]{32}")


def new_token() -> str:
    return secrets.token_hex(16)


def marker_path(directory: str | os.PathLike, token: str) -> Path:
    if not _TOKEN.fullmatch(token):  # the token names a file: nothing but hex digits
        raise ValueError(f"not an abandon token: {token!r}")
    return Path(directory) / token


def mark_abandoned(directory: str | os.PathLike, token: str) -> None:
    marker_path(directory, token).touch()


def sweep(directory: str | os.PathLike, older_than_s: float = MARKER_TTL_S) -> int:
    """Remove markers older than `older_than_s`; returns how many."""
    cutoff, removed = time.time() - older_than_s, 0
    for path in Path(directory).iterdir():
        if _TOKEN.fullmatch(path.name) and path.stat().st_mtime < cutoff:
            path.unlink(missing_ok=True)
            removed += 1
    return removed


class AbandonWatch:
    """Called, True from when the guard has marked this request abandoned (never without a token or directory).

    `parameters_json`: the request's parameters as the Python backend gives them (`request.parameters()`).
    """

    def __init__(self, parameters_json: str, directory: str | os.PathLike | None = None) -> None:
        directory = directory if directory is not None else os.environ.get(DIR_ENV)
        token = json.loads(parameters_json or "{}").get(TOKEN_HEADER)
        self.marker = (
            marker_path(directory, token) if directory and isinstance(token, str) and _TOKEN.fullmatch(token) else None
        )
        self.abandoned = False

    def __call__(self) -> bool:
        if not self.abandoned and self.marker is not None and self.marker.exists():
            self.marker.unlink(missing_ok=True)
            self.abandoned = True
        return self.abandoned
