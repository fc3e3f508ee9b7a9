"""The Grafana dashboard (docker/kubernetes/grafana-dashboard.json, written by `render.py --dashboard`): the
generation metrics of wan22_triton/operations/metrics.py and Triton's queue, request and GPU metrics, per pod of a namespace.

Triton 2.51's custom metrics are counters and gauges: every average is a rate of a `*_seconds_total` over the rate of
its count, over the dashboard's `$window`."""

from __future__ import annotations

from typing import Any

from .autoscaling import REQUEST_SUCCESS, queue_seconds_query
from .workload import ORCHESTRATORS

UID = "wan22-triton-t2v"
SCOPE = 'namespace=~"$namespace",pod=~"$pod"'  # every query's label matchers
ORCHESTRATOR_MATCH = f'model=~"{"|".join(ORCHESTRATORS)}"'
OK = 'outcome="ok"'
PANEL_WIDTH, PANEL_HEIGHT = 12, 8


def _rate(metric: str, extra: str = "") -> str:
    return f"rate({metric}{{{SCOPE}{',' + extra if extra else ''}}}[$window])"


# (title, unit, [(legend, PromQL)]) in reading order: what users get, where the time goes, then Triton and the GPUs.
PANELS: list[tuple[str, str, list[tuple[str, str]]]] = [
    ("Finished requests by outcome", "reqps",
     [("{{outcome}}", f"sum by (outcome) ({_rate('wan22_requests_total')})")]),
    ("Average request seconds (validation to response)", "s",
     [("{{model}}", f"sum by (model) ({_rate('wan22_request_seconds_total')}) / "
                    f"sum by (model) ({_rate('wan22_requests_total')})")]),
    ("Average stage seconds per ok request", "s",
     [("{{stage}}", f"sum by (stage) ({_rate('wan22_stage_seconds_total')}) / ignoring(stage) group_left "
                    f"sum({_rate('wan22_requests_total', OK)})")]),
    ("Seconds per denoising step by expert (BLS round trip)", "s",
     [("{{expert}}", f"sum by (expert) ({_rate('wan22_denoise_step_seconds_total')}) / "
                     f"sum by (expert) ({_rate('wan22_denoise_steps_total')})")]),
    ("Generations in progress", "short",
     [("{{pod}}", f"sum by (pod) (wan22_active_generations{{{SCOPE}}})")]),
    ("Average queue seconds per request (the autoscaler's metric)", "s",
     [("{{pod}}", queue_seconds_query("$window", SCOPE, "pod"))]),
    ("Queued requests (Triton)", "short",
     [("{{pod}}", f"sum by (pod) (nv_inference_pending_request_count{{{SCOPE},{ORCHESTRATOR_MATCH}}})")]),
    ("Successful inferences by model (Triton)", "reqps",
     [("{{model}}", f"sum by (model) ({_rate(REQUEST_SUCCESS)})")]),
    ("GPU utilization", "percentunit",
     [("{{pod}} {{gpu_uuid}}", f"avg by (pod, gpu_uuid) (nv_gpu_utilization{{{SCOPE}}})")]),
    ("GPU memory", "bytes",
     [("used {{pod}} {{gpu_uuid}}", f"sum by (pod, gpu_uuid) (nv_gpu_memory_used_bytes{{{SCOPE}}})"),
      ("total {{pod}} {{gpu_uuid}}", f"sum by (pod, gpu_uuid) (nv_gpu_memory_total_bytes{{{SCOPE}}})")]),
    ("Serving pods (scraped)", "short",
     [("pods", f"count(count by (pod) ({REQUEST_SUCCESS}{{{SCOPE}}}))")]),
]


def _panel(index: int, title: str, unit: str, queries: list[tuple[str, str]]) -> dict[str, Any]:
    return {
        "id": index + 1,
        "type": "timeseries",
        "title": title,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"x": (index % 2) * PANEL_WIDTH, "y": (index // 2) * PANEL_HEIGHT,
                    "w": PANEL_WIDTH, "h": PANEL_HEIGHT},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
        "targets": [{"refId": chr(ord("A") + n), "expr": expr, "legendFormat": legend,
                     "datasource": {"type": "prometheus", "uid": "${datasource}"}}
                    for n, (legend, expr) in enumerate(queries)],
    }


def _query_variable(name: str, query: str) -> dict[str, Any]:
    return {"name": name, "type": "query", "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "query": {"query": query, "refId": name}, "definition": query, "refresh": 2,
            "includeAll": True, "multi": True, "allValue": ".*", "current": {}}


def dashboard() -> dict[str, Any]:
    return {
        "uid": UID,
        "title": "Wan2.2 T2V on Triton",
        "tags": ["wan22", "triton"],
        "schemaVersion": 39,
        "editable": True,
        "time": {"from": "now-6h", "to": "now"},
        "refresh": "30s",
        "annotations": {"list": []},
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus", "current": {}},
            _query_variable("namespace", f"label_values({REQUEST_SUCCESS}, namespace)"),
            _query_variable("pod", f'label_values({REQUEST_SUCCESS}{{namespace=~"$namespace"}}, pod)'),
            {"name": "window", "type": "custom", "query": "5m,15m,1h",
             "current": {"text": "5m", "value": "5m"},
             "options": [{"text": w, "value": w, "selected": w == "5m"} for w in ("5m", "15m", "1h")]},
        ]},
        "panels": [_panel(i, *panel) for i, panel in enumerate(PANELS)],
    }
