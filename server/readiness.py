"""Readiness as the HTTP guard answers it: Triton's own, and every model of the repository READY.

Triton's strict readiness counts the models that are loaded: a model unloaded (by a watcher on its way to reloading
a dead model process, or by hand) drops out of the count, and the server says ready without it. With the admin key
the guard also reads Triton's repository index before it forwards a readiness probe, and answers 400 naming the
models that are not READY, so the probe does not rest on how fast a reload follows its unload. (gRPC's ServerReady
is Triton's alone.)
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from clients.admin import admin_headers

READY_PATH = "/v2/health/ready"
INDEX_PATH = "/v2/repository/index"
READY = "READY"


def models_not_ready(index: list[dict[str, Any]]) -> list[str]:
    """`name STATE (reason)` of each entry of Triton's repository index that is not READY."""
    return [f"{m.get('name')} {m.get('state') or 'UNAVAILABLE'}" + (f" ({m['reason']})" if m.get("reason") else "")
            for m in index if m.get("state") != READY]


async def repository_not_ready(session: aiohttp.ClientSession, upstream: str, admin_key: str) -> list[str]:
    """What keeps the repository from being ready (empty: every model READY); a failed index read is one entry."""
    try:
        async with session.post(f"http://{upstream}{INDEX_PATH}", data=b"{}",
                                headers=admin_headers(admin_key, "http")) as response:
            body = await response.read()
            if response.status != 200:
                return [f"the repository index answered {response.status}: {body[:200].decode(errors='replace')}"]
            return models_not_ready(json.loads(body))
    except (aiohttp.ClientError, ValueError) as exc:
        return [f"the repository index could not be read: {exc}"]
