"""The admin key: the header Triton checks on its restricted (admin) APIs, as each protocol carries it.

The launcher (server/tritonserver_args.py) restricts Triton's admin APIs (shared memory, model repository, statistics,
trace, logging) to requests carrying ADMIN_HEADER with the server's key; inference, health and metadata stay
open. Standard library only: the launcher imports it too.
"""

from __future__ import annotations

import os

ADMIN_HEADER = "wan22-admin-key"
ADMIN_KEY_ENV = "WAN22_ADMIN_KEY"
# Triton's gRPC server looks for the restricted key under this prefix (HTTP takes the header as named).
GRPC_HEADER_PREFIX = "triton-grpc-protocol-"


def admin_headers(key: str | None, protocol: str) -> dict[str, str] | None:
    """The headers that carry `key` over `protocol` ("grpc" or "http"), as tritonclient's `headers=`; None
    without a key."""
    if not key:
        return None
    if protocol not in ("grpc", "http"):
        raise ValueError(f"protocol must be grpc or http, not {protocol!r}")
    name = GRPC_HEADER_PREFIX + ADMIN_HEADER if protocol == "grpc" else ADMIN_HEADER
    return {name: key}


def admin_key_from_env() -> str | None:
    return os.environ.get(ADMIN_KEY_ENV) or None
