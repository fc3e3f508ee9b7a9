"""Autoscaling on queue time, the way Triton deployments do it: Prometheus scrapes Triton's cumulative queue time
and request count per pod; a prometheus-adapter rule turns them into a per-pod custom metric, the average seconds a
request waited in the queue over a window; a HorizontalPodAutoscaler (autoscaling/v2, type Pods) keeps it near a
target.

Only the user-facing orchestrator models count: a component's queue time is part of a generation already running.
"""

from __future__ import annotations

from typing import Any

import yaml

from .meta import SERVER, metadata
from .values import Site, Tier
from .workload import ORCHESTRATORS, names as workload_names

QUEUE_METRIC = "wan22_queue_seconds_avg"  # the custom metric the adapter serves and the HPA reads
QUEUE_DURATION = "nv_inference_queue_duration_us"  # Triton: cumulative queue microseconds (successful requests)
REQUEST_SUCCESS = "nv_inference_request_success"  # Triton: successful requests
ADAPTER_CONFIGMAP = "wan22-prometheus-adapter-rules"


def queue_seconds_query(window: str, matchers: str, group_by: str) -> str:
    """PromQL: seconds in the queue per successful request over `window`, summed over the orchestrator models
    (`matchers`: extra label matchers, `group_by`: the labels kept). No request in the window: 0."""
    selector = f'{{{matchers + "," if matchers else ""}model=~"{"|".join(ORCHESTRATORS)}"}}'
    queued = f"sum by ({group_by}) (increase({QUEUE_DURATION}{selector}[{window}]))"
    served = f"sum by ({group_by}) (increase({REQUEST_SUCCESS}{selector}[{window}]))"
    return f"{queued} / 1e6 / clamp_min({served}, 1)"


def adapter_rule(site: Site) -> dict[str, Any]:
    """One prometheus-adapter rule (its `rules:` list; the Helm chart's `rules.custom`): the metric per pod."""
    return {
        "seriesQuery": f'{QUEUE_DURATION}{{namespace!="",pod!=""}}',
        "resources": {"overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}},
        "name": {"matches": f"^{QUEUE_DURATION}$", "as": QUEUE_METRIC},
        # <<.LabelMatchers>> / <<.GroupBy>>: filled in by the adapter with the pods the HPA asks about.
        "metricsQuery": queue_seconds_query(site.queue_window, "<<.LabelMatchers>>", "<<.GroupBy>>"),
    }


def adapter_configmap(site: Site) -> dict[str, Any]:
    """The rule as the adapter's --config file, for an adapter deployed by hand (mount it at its config path)."""
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": ADAPTER_CONFIGMAP, "namespace": site.monitoring_namespace,
                         "labels": {"app.kubernetes.io/part-of": "wan22-triton"}},
            "data": {"config.yaml": yaml.safe_dump({"rules": [adapter_rule(site)]}, sort_keys=False)}}


def adapter_helm_values(site: Site) -> dict[str, Any]:
    """The rule as values of the prometheus-community/prometheus-adapter chart (merge with your other rules)."""
    return {"rules": {"custom": [adapter_rule(site)]}}


def horizontal_autoscaler(site: Site, tier: Tier) -> dict[str, Any]:
    scaling = tier.scaling
    deployment = workload_names(tier)["deployment"]
    return {
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": metadata(deployment, site, tier, SERVER),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment},
            "minReplicas": scaling.min_replicas,
            "maxReplicas": scaling.max_replicas,
            "metrics": [{"type": "Pods", "pods": {
                "metric": {"name": QUEUE_METRIC},
                "target": {"type": "AverageValue", "averageValue": str(scaling.target_queue_seconds)}}}],
            "behavior": {
                "scaleUp": {"stabilizationWindowSeconds": scaling.scale_up_window_s, "selectPolicy": "Max",
                            "policies": [{"type": "Pods", "value": scaling.scale_up_pods,
                                          "periodSeconds": scaling.scale_up_period_s}]},
                "scaleDown": {"stabilizationWindowSeconds": scaling.scale_down_window_s, "selectPolicy": "Max",
                              "policies": [{"type": "Pods", "value": scaling.scale_down_pods,
                                            "periodSeconds": scaling.scale_down_period_s}]},
            },
        },
    }
