"""Names, labels and metadata shared by every object of a tier, and checkov's in-place exceptions."""

from __future__ import annotations

from typing import Any, Mapping

from .values import Site, Tier

APP = "wan22-t2v"
PART_OF = "wan22-triton"
# Components of a tier (app.kubernetes.io/component): what selectors tell apart.
SERVER, EXPORT = "server", "export"


def selector_labels(tier: Tier, component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": APP, "app.kubernetes.io/instance": tier.release,
            "app.kubernetes.io/component": component}


def labels(tier: Tier, component: str) -> dict[str, str]:
    return {**selector_labels(tier, component), "app.kubernetes.io/part-of": PART_OF,
            "wan22.io/tier": tier.name}


def metadata(name: str, site: Site, tier: Tier, component: str, *,
             annotations: Mapping[str, str] | None = None, extra_labels: Mapping[str, str] | None = None
             ) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": site.namespace,
                            "labels": {**labels(tier, component), **(extra_labels or {})}}
    if annotations:
        meta["annotations"] = dict(annotations)
    return meta


def checkov_skips(reasons: Mapping[str, str]) -> dict[str, str]:
    """checkov's in-place exceptions (`checkov.io/skip<n>: CHECK=reason`), each with the reason it is one."""
    return {f"checkov.io/skip{n}": f"{check}={reason}" for n, (check, reason) in enumerate(sorted(reasons.items()), 1)}
