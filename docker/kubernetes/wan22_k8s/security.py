"""Pod and container security contexts: a high non-root UID, nothing gained at run time, a read-only root
filesystem (what the server writes goes to emptyDir volumes: /tmp, /dev/shm and the compile caches)."""

from __future__ import annotations

from typing import Any

from .values import Site


def pod_security_context(site: Site) -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": site.run_as_user,
        "runAsGroup": site.run_as_user,
        # The export writes the repository group-owned by this group; the server reads it with the same.
        "fsGroup": site.run_as_user,
        # Only the volume's root is checked: a recursive chown of ~70 GB at every mount would delay the start.
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
