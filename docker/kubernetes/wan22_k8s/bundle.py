"""Which objects make a deployment, in which files, in apply order: once per cluster (the namespace and the
prometheus-adapter rule), then per tier. Every object is a plain dict; render.py writes them as YAML."""

from __future__ import annotations

from typing import Any

from . import autoscaling, network, workload
from .values import Site, Tier, shared_job_store

Manifest = dict[str, Any]


def namespace(site: Site) -> Manifest:
    # The pods meet the "restricted" Pod Security Standard; the namespace enforces it.
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": site.namespace,
                         "labels": {"pod-security.kubernetes.io/enforce": "restricted",
                                    "app.kubernetes.io/part-of": "wan22-triton"}}}


def cluster_files(site: Site) -> dict[str, list[Manifest]]:
    return {"00-namespace.yaml": [namespace(site)],
            "10-prometheus-adapter-rules.yaml": [autoscaling.adapter_configmap(site)]}


def tier_files(site: Site, tier: Tier) -> dict[str, list[Manifest]]:
    """File name -> objects; applying the files in name order works (server pods wait for the export)."""
    return {
        "00-base.yaml": [workload.service_account(site, tier), workload.pod_scripts(site, tier),
                         network.server_network_policy(site, tier), network.export_network_policy(site, tier),
                         workload.repository_claim(site, tier),
                         *([workload.video_results_claim(site, tier)] if shared_job_store(site, tier) else [])],
        "10-export-job.yaml": [workload.export_job(site, tier)],
        "20-server.yaml": [workload.server_deployment(site, tier), workload.disruption_budget(site, tier),
                           network.inference_service(site, tier), network.metrics_service(site, tier)],
        "30-monitoring.yaml": [network.service_monitor(site, tier)],
        "40-autoscaling.yaml": [autoscaling.horizontal_autoscaler(site, tier)],
    }


def tier_manifests(site: Site, tier: Tier) -> list[Manifest]:
    return [doc for _, docs in sorted(tier_files(site, tier).items()) for doc in docs]
