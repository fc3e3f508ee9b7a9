"""Who reaches what: the Services (inference: HTTP + gRPC; metrics), the NetworkPolicies that admit only those
ports, and the ServiceMonitor through which Prometheus scrapes the metrics port."""

from __future__ import annotations

from typing import Any

from server.tritonserver_args import DEFAULT_PORTS

from .meta import EXPORT, SERVER, metadata, selector_labels
from .values import Site, Tier

INFERENCE_PORTS = ("http", "grpc")
METRICS_PORT = "metrics"
# Marks the metrics Service, which the ServiceMonitor selects.
METRICS_LABEL = {"wan22.io/metrics": "triton"}
SCRAPE_INTERVAL = "15s"


def names(tier: Tier) -> dict[str, str]:
    return {"inference": tier.release, "metrics": f"{tier.release}-metrics",
            "server_policy": f"{tier.release}-server", "export_policy": f"{tier.release}-export",
            "service_monitor": tier.release}


def _service_port(kind: str) -> dict[str, Any]:
    port = {"name": kind, "port": DEFAULT_PORTS[kind], "targetPort": kind, "protocol": "TCP"}
    if kind == "grpc":
        port["appProtocol"] = "kubernetes.io/h2c"  # gRPC without TLS, for gateways that balance per request
    return port


def inference_service(site: Site, tier: Tier) -> dict[str, Any]:
    """HTTP (the launcher's guard in front of Triton) and gRPC, for clients in the cluster or a gateway."""
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": metadata(names(tier)["inference"], site, tier, SERVER),
            "spec": {"type": "ClusterIP", "selector": selector_labels(tier, SERVER),
                     "ports": [_service_port(kind) for kind in INFERENCE_PORTS]}}


def metrics_service(site: Site, tier: Tier) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": metadata(names(tier)["metrics"], site, tier, SERVER, extra_labels=METRICS_LABEL),
            "spec": {"type": "ClusterIP", "selector": selector_labels(tier, SERVER),
                     "ports": [_service_port(METRICS_PORT)]}}


def _namespace_named(name: str) -> dict[str, Any]:
    return {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": name}}}


def _policy_ports(kinds) -> list[dict[str, Any]]:
    return [{"protocol": "TCP", "port": DEFAULT_PORTS[kind]} for kind in kinds]


def server_network_policy(site: Site, tier: Tier) -> dict[str, Any]:
    """Inference ports from the client namespaces (by default the server's own: a peer of pods alone), metrics from
    the monitoring namespace; no egress (the server calls nothing outside its pod; probes come from the kubelet,
    which policies do not filter)."""
    clients = ({"namespaceSelector": {"matchLabels": dict(site.client_namespace_labels)}}
               if site.client_namespace_labels else {"podSelector": {}})
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": metadata(names(tier)["server_policy"], site, tier, SERVER),
            "spec": {"podSelector": {"matchLabels": selector_labels(tier, SERVER)},
                     "policyTypes": ["Ingress", "Egress"],
                     "ingress": [{"from": [clients], "ports": _policy_ports(INFERENCE_PORTS)},
                                 {"from": [_namespace_named(site.monitoring_namespace)],
                                  "ports": _policy_ports([METRICS_PORT])}],
                     "egress": []}}


def export_network_policy(site: Site, tier: Tier) -> dict[str, Any]:
    """The export reads one volume and writes another: no traffic at all."""
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": metadata(names(tier)["export_policy"], site, tier, EXPORT),
            "spec": {"podSelector": {"matchLabels": selector_labels(tier, EXPORT)},
                     "policyTypes": ["Ingress", "Egress"], "ingress": [], "egress": []}}


def service_monitor(site: Site, tier: Tier) -> dict[str, Any]:
    """Prometheus Operator's scrape of the metrics Service; its pod and namespace labels are what
    prometheus-adapter maps the queue-time metric onto (autoscaling.py)."""
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
            "metadata": metadata(names(tier)["service_monitor"], site, tier, SERVER,
                                 extra_labels=site.service_monitor_labels),
            "spec": {"selector": {"matchLabels": {**selector_labels(tier, SERVER), **METRICS_LABEL}},
                     "namespaceSelector": {"matchNames": [site.namespace]},
                     "endpoints": [{"port": METRICS_PORT, "path": "/metrics", "interval": SCRAPE_INTERVAL}]}}
