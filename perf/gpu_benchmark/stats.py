"""Triton's statistics of a measured request and what the benchmark derives from them.

Per-step times of the Triton side are compute_infer per expert request (one request per step, cond and uncond as
one batch). "Triton overhead" = client end-to-end minus the sum of the component models' compute_infer: queueing,
BLS calls, the orchestrator's scheduler/CFG work, and moving tensors between processes and to the client; split in
`overhead_split_s` into queueing, BLS plus orchestrator, client plus transport. In the low-memory mode the swaps
(each model's weight loads and releases, the orchestrator's release calls) come from the server's events
(wan22_triton.operations.events).
"""

from __future__ import annotations

import time
from typing import Any

from wan22_triton.components.orchestrator import ORCHESTRATOR

from .variants import COMPONENT_MODELS, EXPERTS

SETTLE_S = 0.2  # statistics unchanged this long: every call made so far is in them


def read_stats(client, headers: dict[str, str] | None = None) -> dict[str, dict[str, int]]:
    """Cumulative counts and nanoseconds per model, from a tritonclient.grpc client. Statistics are an admin API:
    `headers` carry the server's admin key (`TritonServer.admin_headers("grpc")`)."""
    out = {}
    for model in client.get_inference_statistics(as_json=True, headers=headers).get("model_stats", []):
        stats = model.get("inference_stats", {})
        row = {"count": int(stats.get("success", {}).get("count", 0))}
        for key in ("queue", "compute_input", "compute_infer", "compute_output"):
            row[f"{key}_ns"] = int(stats.get(key, {}).get("ns", 0))
        row["executions"] = int(model.get("execution_count", 0))
        out[model["name"]] = row
    return out


def read_stats_after(client, requests: int, model: str = ORCHESTRATOR, timeout_s: float = 10.0,
                     headers: dict[str, str] | None = None) -> dict:
    """Statistics once `model` has recorded `requests` requests since the server started, and no model's count
    moved over SETTLE_S. Triton records a Python model's statistics after it has sent its responses, so the
    client (the orchestrator too, for a component) can go on before they are in."""
    deadline = time.monotonic() + timeout_s
    stats = read_stats(client, headers)
    while time.monotonic() < deadline:
        time.sleep(SETTLE_S if stats.get(model, {}).get("count", 0) >= requests else 0.01)
        settled, stats = stats, read_stats(client, headers)
        if stats.get(model, {}).get("count", 0) >= requests and _counts(stats) == _counts(settled):
            break
    return stats


def _counts(stats: dict) -> dict[str, int]:
    return {name: row.get("count", 0) for name, row in stats.items()}


def stats_delta(before: dict, after: dict) -> dict[str, dict[str, float]]:
    """Per model that served anything in between: request count and seconds per statistic."""
    out = {}
    for name, row in after.items():
        prev = before.get(name, {})
        d = {k: row[k] - prev.get(k, 0) for k in row}
        if d["count"]:
            out[name] = {"count": d["count"], **{k[:-3] + "_s": d[k] / 1e9 for k in d if k.endswith("_ns")}}
    return out


def component_compute(models: dict[str, dict]) -> float:
    """The component models' compute_infer seconds (the orchestrator's own excluded)."""
    return sum(models[m]["compute_infer_s"] for m in COMPONENT_MODELS if m in models)


def overhead(e2e_s: float, models: dict[str, dict]) -> dict[str, Any]:
    """Triton overhead of one request: client end to end minus the component models' compute_infer."""
    compute = component_compute(models)
    orchestrator = models.get(ORCHESTRATOR, {})
    return {
        "triton_overhead_s": e2e_s - compute,
        "triton_overhead_pct": 100 * (e2e_s - compute) / e2e_s,
        # Where it goes: every model's queueing; BLS plus the orchestrator's own work (its compute minus the
        # components'); the rest is the client and the transport of the request and the response. The Python
        # backend's compute_output ends after it has sent the responses, while the client already reads them:
        # it belongs to the transport, not to the orchestrator's time.
        "overhead_split_s": {
            "queue_all_models": sum(m.get("queue_s", 0.0) for m in models.values()),
            "bls_and_orchestrator": orchestrator.get("compute_infer_s", 0.0) - compute,
            "client_and_transport": e2e_s - sum(orchestrator.get(k, 0.0) for k in (
                "queue_s", "compute_input_s", "compute_infer_s")),
        },
    }


def count_steps(result: dict[str, Any]) -> None:
    """Steps and mean step time per expert from Triton's statistics (`models`). In the low-memory mode the
    experts' counts include the orchestrator's release-only requests (not steps), and the first step of each
    expert includes its load: `step_s_without_swaps` takes the loads and releases (`swaps`) out."""
    models, swaps = result["models"], result.get("swaps", {})
    releases = {e: sum(c["expert"] == e for c in swaps.get("orchestrator_release_calls", [])) for e in EXPERTS}
    calls_per_step = result.get("parallel", {}).get("cfg_parallel", 1)  # CFG parallel: two executions a step
    steps = {e: (models.get(e, {}).get("count", 0) - releases[e]) // calls_per_step for e in EXPERTS}
    result["steps"] = steps
    result["step_s"] = {e: models[e]["compute_infer_s"] / steps[e] for e in EXPERTS if steps[e]}
    if any(e in swaps for e in EXPERTS):
        result["step_s_without_swaps"] = {
            e: (models[e]["compute_infer_s"] - sum(swaps.get(e, {}).get("load_s", []))
                - sum(swaps.get(e, {}).get("release_s", []))) / steps[e]
            for e in EXPERTS if steps[e]
        }


def swaps(events: list[dict[str, Any]]) -> dict[str, Any]:
    """The low-memory mode's weight movements in a request's events: each model's loads (GB, s) and releases (s),
    and the orchestrator's release calls (after which step, round trip s)."""
    out: dict[str, Any] = {}
    calls = []
    for e in events:
        if e["event"] in ("weights_loaded", "weights_released"):
            row = out.setdefault(e["model"], {"load_s": [], "release_s": []})
            if e["event"] == "weights_loaded":
                row["load_s"].append(e["seconds"])
                row["gb"] = e["gb"]
            else:
                row["release_s"].append(e["seconds"])
        elif e["event"] == "expert_released":
            calls.append({"expert": e["expert"], "after_step": e["after_step"], "round_trip_s": e["seconds"]})
    if calls:
        out["orchestrator_release_calls"] = calls
    return out
