"""Who reaches what: the Services (inference: HTTP + gRPC, and the video jobs API; metrics), the NetworkPolicies
that admit only those ports, and the ServiceMonitor through which Prometheus scrapes Triton's metrics port and the
video API's /metrics."""

from __future__ import annotations

from typing import Any

from .meta import EXPORT, SERVER, metadata, selector_labels
from .values import Site, Tier, shared_job_store
from .workload import VIDEO_API, ports

INFERENCE_PORTS = ("http", "grpc")
METRICS_PORT = "metrics"
DNS_PORT = 53
# Marks the metrics Service, which the ServiceMonitor selects.
METRICS_LABEL = {"wan22.io/metrics": "triton"}
SCRAPE_INTERVAL = "15s"


def names(tier: Tier) -> dict[str, str]:
    return {"inference": tier.release, "metrics": f"{tier.release}-metrics",
            "server_policy": f"{tier.release}-server", "export_policy": f"{tier.release}-export",
            "service_monitor": tier.release}


def client_ports(tier: Tier) -> list[str]:
    """The ports clients call: Triton's HTTP (through the guard) and gRPC, and the video jobs API's."""
    return [*INFERENCE_PORTS, *([VIDEO_API] if tier.video_api else [])]


def scraped_ports(tier: Tier) -> list[str]:
    """The ports Prometheus scrapes (/metrics): Triton's metrics port and the video jobs API's."""
    return [METRICS_PORT, *([VIDEO_API] if tier.video_api else [])]


def _service_port(tier: Tier, kind: str) -> dict[str, Any]:
    port = {"name": kind, "port": ports(tier)[kind], "targetPort": kind, "protocol": "TCP"}
    if kind == "grpc":
        port["appProtocol"] = "kubernetes.io/h2c"  # gRPC without TLS, for gateways that balance per request
    return port


def inference_service(site: Site, tier: Tier) -> dict[str, Any]:
    """HTTP (the launcher's guard in front of Triton), gRPC and the video jobs API, for clients in the cluster or a
    gateway."""
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": metadata(names(tier)["inference"], site, tier, SERVER),
            "spec": {"type": "ClusterIP", "selector": selector_labels(tier, SERVER),
                     "ports": [_service_port(tier, kind) for kind in client_ports(tier)]}}


def metrics_service(site: Site, tier: Tier) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": metadata(names(tier)["metrics"], site, tier, SERVER, extra_labels=METRICS_LABEL),
            "spec": {"type": "ClusterIP", "selector": selector_labels(tier, SERVER),
                     "ports": [_service_port(tier, kind) for kind in scraped_ports(tier)]}}


def _namespace_named(name: str) -> dict[str, Any]:
    return {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": name}}}


def _policy_ports(tier: Tier, kinds) -> list[dict[str, Any]]:
    return [{"protocol": "TCP", "port": ports(tier)[kind]} for kind in kinds]


def _egress(site: Site, tier: Tier) -> list[dict[str, Any]]:
    """None, unless the video API's jobs are in PostgreSQL: then its port (anywhere: the database may be outside the
    cluster; narrow it with `to:` in an overlay) and DNS, to find the database's host."""
    if not shared_job_store(site, tier):
        return []
    return [{"ports": [{"protocol": "UDP", "port": DNS_PORT}, {"protocol": "TCP", "port": DNS_PORT}]},
            {"ports": [{"protocol": "TCP", "port": site.video_api_database_port}]}]


def server_network_policy(site: Site, tier: Tier) -> dict[str, Any]:
    """Client ports (Triton's HTTP and gRPC, the video API) from the client namespaces (by default the server's own:
    a peer of pods alone), the metrics ports from the monitoring namespace; no egress (the server calls nothing
    outside its pod) but the video API's PostgreSQL where it has one; probes come from the kubelet, which policies
    do not filter."""
    clients = ({"namespaceSelector": {"matchLabels": dict(site.client_namespace_labels)}}
               if site.client_namespace_labels else {"podSelector": {}})
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": metadata(names(tier)["server_policy"], site, tier, SERVER),
            "spec": {"podSelector": {"matchLabels": selector_labels(tier, SERVER)},
                     "policyTypes": ["Ingress", "Egress"],
                     "ingress": [{"from": [clients], "ports": _policy_ports(tier, client_ports(tier))},
                                 {"from": [_namespace_named(site.monitoring_namespace)],
                                  "ports": _policy_ports(tier, scraped_ports(tier))}],
                     "egress": _egress(site, tier)}}


def export_network_policy(site: Site, tier: Tier) -> dict[str, Any]:
    """The export reads one volume and writes another: no traffic at all."""
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": metadata(names(tier)["export_policy"], site, tier, EXPORT),
            "spec": {"podSelector": {"matchLabels": selector_labels(tier, EXPORT)},
                     "policyTypes": ["Ingress", "Egress"], "ingress": [], "egress": []}}


def service_monitor(site: Site, tier: Tier) -> dict[str, Any]:
    """Prometheus Operator's scrape of the metrics Service (Triton's metrics port, the video API's /metrics); its pod
    and namespace labels are what prometheus-adapter maps the queue-time metric onto (autoscaling.py)."""
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
            "metadata": metadata(names(tier)["service_monitor"], site, tier, SERVER,
                                 extra_labels=site.service_monitor_labels),
            "spec": {"selector": {"matchLabels": {**selector_labels(tier, SERVER), **METRICS_LABEL}},
                     "namespaceSelector": {"matchNames": [site.namespace]},
                     "endpoints": [{"port": kind, "path": "/metrics", "interval": SCRAPE_INTERVAL}
                                   for kind in scraped_ports(tier)]}}
