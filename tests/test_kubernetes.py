"""The Kubernetes deployment (docker/kubernetes/): every tier rendered, every manifest valid against Kubernetes'
schemas (kubernetes-validate) and clean under checkov's policies; probes, autoscaler, GPUs, /dev/shm and the export
flags are what the tier's values say; the pod scripts (warm-up probe, drain hook) against a real tritonserver; the
Grafana dashboard covers every generation metric of wan22_triton/operations/metrics.py.

No cluster here: nothing is applied, scheduled or scaled (docker/kubernetes/README.md says what that leaves open).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from importlib.resources import files
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from referencing import Registry, Resource

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "docker" / "kubernetes"
sys.path.insert(0, str(K8S))

from server.tritonserver_args import DEFAULT_PORTS  # noqa: E402
import video_api  # noqa: E402
from wan22_k8s import autoscaling, bundle, network, workload  # noqa: E402
from wan22_k8s.dashboard import dashboard  # noqa: E402
from wan22_k8s.values import TIERS, Site  # noqa: E402

KUBERNETES_VERSION = "1.30"
CHECKOV = ROOT / ".venv-checkov" / "bin" / "checkov"
# Kinds kubernetes-validate has no schema for (CustomResourceDefinitions of Prometheus Operator).
CUSTOM_KINDS = {"ServiceMonitor"}
SITE = Site()


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


render = _load("wan22_k8s_render", K8S / "render.py")
warmup = _load("wan22_k8s_warmup", workload.POD_SCRIPTS / "warmup.py")
drain = _load("wan22_k8s_drain", workload.POD_SCRIPTS / "drain.py")
ready = _load("wan22_k8s_ready", workload.POD_SCRIPTS / "ready.py")


def metric_families() -> list[str]:
    """The metric family names wan22_triton/operations/metrics.py declares, read by running its constructor."""
    from wan22_triton.operations.metrics import GenerationMetrics

    created: list[str] = []

    class Metric:
        def set(self, value): pass

        def increment(self, value): pass

    class MetricFamily:
        COUNTER, GAUGE = "counter", "gauge"

        def __init__(self, name, description, kind):
            created.append(name)

        def Metric(self, labels):  # noqa: N802 - pb_utils' name
            return Metric()

    GenerationMetrics(type("pb", (), {"MetricFamily": MetricFamily}), "wan22_t2v")
    return created


def find(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"{len(found)} {kind} {name or ''}"
    return found[0]


def server_container(docs: list[dict]) -> dict:
    [container] = find(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return container


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> Path:
    """The checked-in files an operator applies (cluster/, a folder per tier, the adapter's values), copied apart
    from the renderer's sources; tests/test_checked_in.py keeps them equal to a fresh render."""
    out = tmp_path_factory.mktemp("kubernetes")
    for kustomization in K8S.glob(f"*/{render.KUSTOMIZATION}"):
        shutil.copytree(kustomization.parent, out / kustomization.parent.name)
    shutil.copy(K8S / render.ADAPTER_VALUES_FILE, out)
    return out


def manifests_in(folder: Path) -> list[tuple[Path, dict]]:
    return [(path, doc) for path in sorted(folder.rglob("*.yaml")) if path.name != render.ADAPTER_VALUES_FILE
            for doc in yaml.safe_load_all(path.read_text()) if doc]


def tier_docs(tier_name: str) -> list[dict]:
    return bundle.tier_manifests(SITE, TIERS[tier_name])


# --------------------------------------------------------------------------- #
# Schemas and policies
# --------------------------------------------------------------------------- #


def _validate_custom_resource(doc: dict) -> None:
    """kubernetes-validate only knows Kubernetes' own kinds: a ServiceMonitor's metadata and label selector are
    checked against Kubernetes' definitions here, what it points at by test_service_monitor_scrapes_the_metrics_port;
    its other fields (endpoints) against no schema (the CRD's is not available offline)."""
    with pytest.raises(kubernetes_validate.utils.SchemaNotFoundError):  # the day it knows the kind, validate it all
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    schemas = files("kubernetes_validate") / "kubernetes-json-schema" / f"v{KUBERNETES_VERSION}.0-local-strict"
    definitions = json.loads((schemas / "_definitions.json").read_text())
    registry = Resource.from_contents(definitions) @ Registry()
    for part, definition in ((doc["metadata"], "ObjectMeta"), (doc["spec"]["selector"], "LabelSelector")):
        ref = f"{definitions['$id']}#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.{definition}"
        jsonschema.Draft202012Validator({"$ref": ref}, registry=registry).validate(part)


def test_every_manifest_is_valid_kubernetes(rendered):
    docs = manifests_in(rendered)
    kinds: dict[str, int] = {}
    errors = []
    for path, doc in docs:
        kinds[doc["kind"]] = kinds.get(doc["kind"], 0) + 1
        try:
            if doc["kind"] in CUSTOM_KINDS:
                _validate_custom_resource(doc)
            else:
                kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except (kubernetes_validate.utils.ValidationError, jsonschema.ValidationError) as error:
            errors.append(f"{path.relative_to(rendered)} {doc['kind']}/{doc['metadata']['name']}: "
                          f"{'.'.join(map(str, error.path))}: {error.message}")
    assert not errors, "\n".join(errors)
    # Every kind a tier is made of, and the cluster's namespace; one workload and one autoscaler per tier.
    per_tier = {"ServiceAccount", "ConfigMap", "NetworkPolicy", "PersistentVolumeClaim", "Job", "Deployment",
                "PodDisruptionBudget", "Service", "ServiceMonitor", "HorizontalPodAutoscaler"}
    assert per_tier <= set(kinds) and {"Namespace"} <= set(kinds), kinds
    assert kinds["Deployment"] == kinds["Job"] == kinds["HorizontalPodAutoscaler"] == len(TIERS)
    # The adapter's rules are a YAML file inside a ConfigMap: it parses and holds the rule.
    [adapter] = [doc for _, doc in docs if doc["metadata"]["name"] == autoscaling.ADAPTER_CONFIGMAP]
    assert yaml.safe_load(adapter["data"]["config.yaml"]) == {"rules": [autoscaling.adapter_rule(SITE)]}


def test_the_validator_refuses_a_broken_manifest(rendered):
    """The check above can fail: the rendered Deployment with a misspelt field, or a port given as a string, is
    refused by the same strict validation."""
    deployment = next(doc for _, doc in manifests_in(rendered) if doc["kind"] == "Deployment")
    misspelt = copy.deepcopy(deployment)
    misspelt["spec"]["template"]["spec"]["containerz"] = misspelt["spec"]["template"]["spec"].pop("containers")
    bad_port = copy.deepcopy(deployment)
    bad_port["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "http"
    for broken in (misspelt, bad_port):
        with pytest.raises(kubernetes_validate.utils.ValidationError):
            kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def checkov() -> Path:
    if not CHECKOV.is_file():
        pytest.fail(f"{CHECKOV} is missing: run `make setup` (its .venv-checkov rule installs checkov)")
    pinned = re.search(r"^CHECKOV_VERSION := (\S+)", (ROOT / "Makefile").read_text(), flags=re.M)[1]
    version = subprocess.run([CHECKOV, "--version"], capture_output=True, text=True).stdout.strip()
    assert version == pinned, f"{CHECKOV} is {version}, the Makefile pins {pinned}: run `make setup`"
    return CHECKOV


@pytest.mark.slow
def test_checkov_finds_no_failed_check(rendered, tmp_path):
    """One checkov run over the rendered tree and a canary (a tier made insecure on purpose, so we know it checks)."""
    canary_docs = tier_docs("fast")
    canary = server_container(canary_docs)["securityContext"]
    canary.update(privileged=True, readOnlyRootFilesystem=False)
    shutil.copytree(rendered, tmp_path / "deployment")
    (tmp_path / "canary").mkdir()
    (tmp_path / "canary" / "deployment.yaml").write_text(yaml.safe_dump_all(canary_docs))
    result = subprocess.run([checkov(), "--directory", str(tmp_path), "--framework", "kubernetes",
                             "--skip-download", "--output", "json"],
                            capture_output=True, text=True, timeout=120)
    report = json.loads(result.stdout)
    summary, results = report["summary"], report["results"]
    assert summary["parsing_errors"] == 0, result.stderr[-2000:]

    def in_canary(check: dict) -> bool:
        return Path(check["file_abs_path"]).is_relative_to(tmp_path / "canary")

    failed = {(c["file_abs_path"], c["check_id"]) for c in results["failed_checks"] if not in_canary(c)}
    assert not failed, "checkov failed checks:\n" + "\n".join(f"{path}: {check}" for path, check in sorted(failed))
    canary_failed = {c["check_id"] for c in results["failed_checks"] if in_canary(c)}
    assert {"CKV_K8S_16", "CKV_K8S_22"} <= canary_failed, canary_failed  # privileged, writable root filesystem

    # Every exception is one written in place, with its reason.
    annotations = {}
    for _, doc in manifests_in(rendered):
        for key, value in doc["metadata"].get("annotations", {}).items():
            if key.startswith("checkov.io/skip"):
                check, _, reason = value.partition("=")
                assert re.fullmatch(r"CKV2?_K8S_\d+", check) and len(reason) > 20, value
                annotations[(doc["kind"], doc["metadata"]["name"], check)] = reason
    skipped = [c for c in results["skipped_checks"] if not in_canary(c)]
    assert skipped and len(skipped) == len(annotations)
    for check in skipped:
        kind, _, name = check["resource"].split(".", 2)
        assert annotations[(kind, name, check["check_id"])] == check["check_result"]["suppress_comment"]

    # Everything that runs was checked (the workloads, the pods checkov derives from them, the graph checks).
    checked = {c["resource"] for c in results["passed_checks"] if not in_canary(c)}
    for tier in TIERS.values():
        assert f"Deployment.{SITE.namespace}.{tier.release}" in checked
        assert f"Job.{SITE.namespace}.{workload.names(tier)['export_job']}" in checked
    assert any(c["check_id"].startswith("CKV2_K8S") for c in results["passed_checks"])


# --------------------------------------------------------------------------- #
# What each tier's manifests mean
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("tier_name", TIERS)
def test_probes_point_at_triton_health_endpoints(tier_name):
    tier, docs = TIERS[tier_name], tier_docs(tier_name)
    container = server_container(docs)
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    # the launcher's HTTP (the guard), gRPC and metrics ports, and the video jobs API's
    assert ports == {**DEFAULT_PORTS, "video-api": video_api.DEFAULT_PORT} == workload.ports(tier)

    ready, live = container["readinessProbe"], container["livenessProbe"]
    # Ready: Triton's every model READY and the video API's service and database (one probe: ready.py asks both).
    assert ready["exec"]["command"] == [
        "python3", f"{workload.SCRIPTS_DIR}/ready.py", "--timeout", "1",
        f"http://127.0.0.1:{DEFAULT_PORTS['http']}/v2/health/ready",
        f"http://127.0.0.1:{video_api.DEFAULT_PORT}/health/ready"]
    urls, each_s = ready["exec"]["command"][4:], float(ready["exec"]["command"][3])
    assert len(urls) * each_s < ready["timeoutSeconds"]  # the script gives up before the kubelet does
    assert live["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    # Liveness gives a busy server a minute; readiness drops a pod within seconds of a component dying.
    assert live["periodSeconds"] * live["failureThreshold"] >= 60
    assert ready["periodSeconds"] * ready["failureThreshold"] <= 5

    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= tier.load_budget_s
    if tier.warmup_steps:  # ready, then one generation through the HTTP port, before any traffic
        command = startup["exec"]["command"]
        assert command[:2] == ["python3", f"{workload.SCRIPTS_DIR}/warmup.py"]
        options = dict(zip(command[2::2], command[3::2]))
        assert options["--url"] == f"http://127.0.0.1:{DEFAULT_PORTS['http']}"
        assert int(options["--steps"]) == tier.warmup_steps
        assert float(options["--timeout"]) < startup["timeoutSeconds"]  # the script gives up before the kubelet
    else:
        assert startup["httpGet"] == {"path": "/v2/health/ready", "port": "http"}

    # Scale-down and roll-outs: preStop drains through the metrics port, inside the grace period.
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    options = dict(zip(command[2::2], command[3::2]))
    assert options["--metrics-url"] == f"http://127.0.0.1:{DEFAULT_PORTS['metrics']}/metrics"
    grace = find(docs, "Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > float(options["--timeout"]) == tier.drain_s


@pytest.mark.parametrize("tier_name", TIERS)
def test_pod_gets_its_gpus_shm_and_admin_key(tier_name):
    tier, docs = TIERS[tier_name], tier_docs(tier_name)
    pod = find(docs, "Deployment")["spec"]["template"]["spec"]
    container = server_container(docs)
    resources = container["resources"]
    assert resources["limits"][workload.GPU_RESOURCE] == resources["requests"][workload.GPU_RESOURCE] \
        == tier.gpus_per_pod
    assert resources["limits"]["memory"] == resources["requests"]["memory"] == tier.memory
    assert pod["nodeSelector"] == {SITE.gpu_node_label: tier.gpu_product}

    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert volumes[mounts["/dev/shm"]["name"]]["emptyDir"] == {"medium": "Memory", "sizeLimit": tier.shm_size}
    repository = mounts[workload.MODELS_DIR]
    assert repository["readOnly"] and repository["subPath"] == workload.REPOSITORY_SUBPATH
    assert volumes[repository["name"]]["persistentVolumeClaim"]["claimName"] == workload.names(tier)["claim"]
    # A read-only root filesystem, and a writable volume wherever the server writes.
    assert container["securityContext"]["readOnlyRootFilesystem"]
    assert {"/tmp", workload.CACHE_DIR} <= set(mounts)
    assert pod["securityContext"]["runAsNonRoot"] and pod["automountServiceAccountToken"] is False

    [key] = [e for e in container["env"] if e["name"] == "WAN22_ADMIN_KEY"]
    assert key == {"name": "WAN22_ADMIN_KEY", "valueFrom": {"secretKeyRef": {
        "name": SITE.admin_key_secret, "key": SITE.admin_key_secret_key}}}


@pytest.mark.parametrize("tier_name", TIERS)
def test_autoscaler_targets_average_queue_time(tier_name):
    tier, docs = TIERS[tier_name], tier_docs(tier_name)
    hpa = find(docs, "HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                     "name": find(docs, "Deployment")["metadata"]["name"]}
    assert "replicas" not in find(docs, "Deployment")["spec"]  # the autoscaler owns the count
    [metric] = hpa["metrics"]
    assert metric == {"type": "Pods", "pods": {"metric": {"name": autoscaling.QUEUE_METRIC}, "target": {
        "type": "AverageValue", "averageValue": str(tier.scaling.target_queue_seconds)}}}
    assert 1 <= hpa["minReplicas"] == tier.scaling.min_replicas <= hpa["maxReplicas"] == tier.scaling.max_replicas
    up, down = hpa["behavior"]["scaleUp"], hpa["behavior"]["scaleDown"]
    # Minute-long requests on pods that start in minutes: slow to add, slower to remove.
    assert up["stabilizationWindowSeconds"] == tier.scaling.scale_up_window_s
    assert down["stabilizationWindowSeconds"] == tier.scaling.scale_down_window_s > up["stabilizationWindowSeconds"]
    assert [p["periodSeconds"] for p in up["policies"] + down["policies"]] == [
        tier.scaling.scale_up_period_s, tier.scaling.scale_down_period_s]


def test_adapter_rule_derives_queue_time_per_pod():
    rule = autoscaling.adapter_rule(SITE)
    assert rule["name"]["as"] == autoscaling.QUEUE_METRIC
    assert rule["seriesQuery"].startswith("nv_inference_queue_duration_us{")
    assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
    query = rule["metricsQuery"]
    # Queue microseconds over successful requests, over the window, only for the models clients call.
    assert re.search(rf"increase\(nv_inference_queue_duration_us\{{[^}}]*\}}\[{SITE.queue_window}\]\)", query)
    assert re.search(rf"increase\(nv_inference_request_success\{{[^}}]*\}}\[{SITE.queue_window}\]\)", query)
    assert query.count("<<.LabelMatchers>>") == 2 and query.count("<<.GroupBy>>") == 2
    models = re.findall(r'model=~"([^"]*)"', query)
    assert [set(m.split("|")) for m in models] == [set(workload.ORCHESTRATORS)] * 2
    helm = yaml.safe_load((render.to_yaml([autoscaling.adapter_helm_values(SITE)], "values")))
    assert helm["rules"]["custom"] == [rule]


@pytest.mark.parametrize("tier_name", TIERS)
def test_service_monitor_scrapes_the_metrics_port(tier_name):
    docs = tier_docs(tier_name)
    monitor = find(docs, "ServiceMonitor")["spec"]
    services = [d for d in docs if d["kind"] == "Service"
                and monitor["selector"]["matchLabels"].items() <= d["metadata"]["labels"].items()]
    assert [s["metadata"]["name"] for s in services] == [network.names(TIERS[tier_name])["metrics"]]
    # Triton's metrics port and the video API's /metrics
    scraped = {p["name"]: p["port"] for p in services[0]["spec"]["ports"]}
    assert scraped == {"metrics": DEFAULT_PORTS["metrics"], "video-api": video_api.DEFAULT_PORT}
    assert [(e["port"], e["path"]) for e in monitor["endpoints"]] == [(name, "/metrics") for name in scraped]
    inference = find(docs, "Service", TIERS[tier_name].release)["spec"]["ports"]
    assert {p["name"]: p["port"] for p in inference} == {"http": DEFAULT_PORTS["http"], "grpc": DEFAULT_PORTS["grpc"],
                                                         "video-api": video_api.DEFAULT_PORT}
    assert all(p["targetPort"] == p["name"] for p in inference)  # the container's named ports
    assert monitor["namespaceSelector"] == {"matchNames": [SITE.namespace]}


def test_inference_ports_admit_the_own_namespace_unless_client_namespaces_are_named():
    from dataclasses import replace

    def inference_peers(site: Site) -> list[dict]:
        policy = network.server_network_policy(site, TIERS["fast"])["spec"]
        ports = {DEFAULT_PORTS["http"], DEFAULT_PORTS["grpc"], video_api.DEFAULT_PORT}  # the video API as HTTP
        [rule] = [r for r in policy["ingress"] if {p["port"] for p in r["ports"]} == ports]
        [scraped] = [r for r in policy["ingress"] if r is not rule]
        assert {p["port"] for p in scraped["ports"]} == {DEFAULT_PORTS["metrics"], video_api.DEFAULT_PORT}
        assert policy["egress"] == []  # SQLite: the pod calls nothing outside itself
        return rule["from"]

    assert inference_peers(SITE) == [{"podSelector": {}}]  # pods of the server's namespace, no other namespace
    labelled = replace(SITE, client_namespace_labels={"wan22-client": "true"})
    assert inference_peers(labelled) == [{"namespaceSelector": {"matchLabels": {"wan22-client": "true"}}}]


def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: {k: v for k, v in e.items() if k != "name"} for e in container["env"]}


def test_video_api_keeps_its_jobs_on_the_pods_volume_or_in_a_shared_postgresql():
    """Default: the launcher's video API ($VIDEO_API_PORT) with its key from a Secret, SQLite and the results on an
    emptyDir of the pod (counted in its ephemeral storage). With a PostgreSQL URL from a Secret: that URL, the
    results on a ReadWriteMany claim every replica mounts, egress to the database's port and DNS only. Off: none of
    it, and readiness is Triton's alone."""
    from dataclasses import replace

    from server.launcher import VIDEO_API_PORT_ENV
    from video_api import API_KEY_ENV as VIDEO_API_KEY_ENV, DATABASE_ENV as VIDEO_API_DATABASE_ENV
    from video_api import RESULTS_ENV as VIDEO_API_RESULTS_ENV

    tier = TIERS["fast"]
    docs = tier_docs("fast")
    container, pod = server_container(docs), find(docs, "Deployment")["spec"]["template"]["spec"]
    env = _env(container)
    assert env[VIDEO_API_PORT_ENV] == {"value": str(video_api.DEFAULT_PORT)}
    assert env[VIDEO_API_KEY_ENV] == {"valueFrom": {"secretKeyRef": {"name": SITE.api_key_secret,
                                                                     "key": SITE.api_key_secret_key}}}
    assert env[VIDEO_API_DATABASE_ENV] == {"value": f"sqlite:///{workload.JOBS_DIR}/video_jobs.db"}
    assert env[VIDEO_API_RESULTS_ENV] == {"value": workload.RESULTS_DIR}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts[workload.JOBS_DIR]]["emptyDir"] == {"sizeLimit": tier.video_api_storage}
    ephemeral = sum(int(size[:-2]) for size in (tier.tmp_size, tier.cache_size, tier.video_api_storage))
    assert container["resources"]["limits"]["ephemeral-storage"] == f"{ephemeral}Gi"

    postgres = replace(SITE, video_api_database_secret="wan22-video-db")
    shared = bundle.tier_manifests(postgres, tier)
    for doc in shared:
        if doc["kind"] not in CUSTOM_KINDS:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    container, pod = server_container(shared), find(shared, "Deployment")["spec"]["template"]["spec"]
    assert _env(container)[VIDEO_API_DATABASE_ENV] == {"valueFrom": {"secretKeyRef": {
        "name": "wan22-video-db", "key": postgres.video_api_database_secret_key}}}
    claim = find(shared, "PersistentVolumeClaim", workload.names(tier)["video_results"])["spec"]
    assert claim["accessModes"] == ["ReadWriteMany"] and claim["resources"]["requests"]["storage"] == \
        tier.video_api_storage
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert workload.JOBS_DIR not in mounts  # nothing of the jobs on the pod's own volume
    assert {v["name"]: v for v in pod["volumes"]}[mounts[workload.RESULTS_DIR]]["persistentVolumeClaim"] == {
        "claimName": workload.names(tier)["video_results"]}
    egress = find(shared, "NetworkPolicy", network.names(tier)["server_policy"])["spec"]["egress"]
    assert sorted((p["protocol"], p["port"]) for rule in egress for p in rule["ports"]) == [
        ("TCP", 53), ("TCP", 5432), ("UDP", 53)]
    assert len(find(shared, "Deployment")["spec"]["template"]["spec"]["containers"]) == 1  # the launcher's child

    off = bundle.tier_manifests(SITE, replace(tier, video_api=False))
    container = server_container(off)
    assert {p["name"] for p in container["ports"]} == set(DEFAULT_PORTS)
    assert not {VIDEO_API_PORT_ENV, VIDEO_API_KEY_ENV, VIDEO_API_DATABASE_ENV} & set(_env(container))
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert [p["name"] for p in find(off, "Service", tier.release)["spec"]["ports"]] == ["http", "grpc"]


def test_ready_probe_needs_every_url(torch_server, capsys):
    """ready.py: 0 once each URL answers 200; 1 naming the first that does not (nothing listening, or not 200)."""
    triton = f"http://{torch_server.http_url}/v2/health/ready"
    assert ready.main(["--timeout", "2", triton]) == 0
    gone = f"http://127.0.0.1:{_free_port()}/health/ready"
    assert ready.main(["--timeout", "2", triton, gone]) == 1
    assert capsys.readouterr().out.startswith(f"not ready: {gone}: ")
    missing = f"http://{torch_server.http_url}/v2/models/no_such_model/ready"
    assert ready.main(["--timeout", "2", missing, triton]) == 1
    assert f"not ready: {missing}: HTTP 4" in capsys.readouterr().out


def _flag(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args else None


@pytest.mark.parametrize("tier_name", TIERS)
def test_export_job_exports_the_tier(tier_name, tiny_checkpoint, tmp_path):
    """The Job runs the export with the tier's flags, into the folder the server mounts; the same flags given to
    the real export (on the tiny checkpoint: the torch engine's export copies folders, no GPU) write the manifests
    that the tier stands for."""
    from export.__main__ import main as export_main
    from export.model_config import parse_pbtxt, read_manifest
    from tritonclient.grpc import model_config_pb2 as mc
    from wan22_triton.components.orchestrator import ORCHESTRATOR

    tier, docs = TIERS[tier_name], tier_docs(tier_name)
    job = find(docs, "Job")
    pod = job["spec"]["template"]["spec"]
    [container] = pod["containers"]
    args = container["args"]
    assert args[:3] == ["python3", "-m", "export"] and args[7:] == tier.export_args()
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert _flag(args, "--checkpoint") == mounts["checkpoint"]["mountPath"]
    assert mounts["checkpoint"]["readOnly"]
    # --repository is <claim>/repository; the server mounts that sub-folder of the same claim at /models.
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]
              if "persistentVolumeClaim" in v}
    assert _flag(args, "--repository") == f"{mounts['repository']['mountPath']}/{workload.REPOSITORY_SUBPATH}"
    assert claims["repository"] == workload.names(tier)["claim"]
    assert workload.EXPORT_DONE in container["command"][2]  # the marker the server's init container waits for
    assert workload.EXPORT_DONE in find(docs, "Deployment")["spec"]["template"]["spec"]["initContainers"][0][
        "command"][2]
    assert workload.GPU_RESOURCE not in container["resources"]["limits"]  # torch engine: a copy, no GPU

    repository = tmp_path / "repository"
    export_main(["--checkpoint", str(tiny_checkpoint), "--repository", str(repository), *tier.export_args()])
    expert = read_manifest(repository / "transformer_high_noise")
    assert expert.engine == _flag(args, "--engine") and expert.precision == _flag(args, "--precision")
    for option in ("compile", "quantization", "attention"):
        assert getattr(expert.speed, option) == (_flag(args, f"--{option}") or getattr(type(expert.speed)(), option))
    assert expert.low_memory == ("--low-memory" in args)
    assert expert.parallel.devices == tier.gpus_per_pod  # the pod gets exactly the GPUs its parallel plan uses
    kind = "KIND_GPU" if _flag(args, "--device") == "gpu" else "KIND_CPU"
    for config_file in repository.glob("*/config.pbtxt"):
        for group in parse_pbtxt(config_file.read_text()).instance_group:
            assert mc.ModelInstanceGroup.Kind.Name(group.kind) == kind, config_file
            assert set(group.gpus) <= set(range(tier.gpus_per_pod)), f"{config_file}: GPUs the pod does not get"
    [orchestrator] = parse_pbtxt((repository / ORCHESTRATOR / "config.pbtxt").read_text()).instance_group
    assert orchestrator.count == int(_flag(args, "--orchestrator-instances") or 1)


# --------------------------------------------------------------------------- #
# The pod scripts, against a real tritonserver (the tests' tiny one)
# --------------------------------------------------------------------------- #


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _active_generations(metrics_url: str) -> float:
    with urllib.request.urlopen(metrics_url, timeout=10) as answer:
        return drain.busy_count(answer.read().decode(), set(workload.ORCHESTRATORS))


def test_warmup_probe_succeeds_only_after_a_generation(torch_server, capsys):
    assert warmup.main(["--url", f"http://127.0.0.1:{_free_port()}"]) == 1  # nothing listening: not ready
    small = ["--num-frames", "5", "--height", "32", "--width", "32"]  # the tiny server's limits, not A14B's
    url = f"http://{torch_server.http_url}"
    assert warmup.main(["--url", url, "--steps", "2", *small]) == 0
    assert "warm: 2 steps" in capsys.readouterr().out
    assert warmup.main(["--url", url, "--steps", "2", "--num-frames", "4", "--height", "32", "--width", "32"]) == 1
    assert "HTTP 400" in capsys.readouterr().out  # a refused request is no warm-up


def test_drain_waits_for_the_generation_in_progress(torch_server, capsys):
    models = ",".join(workload.ORCHESTRATORS)
    fast = ["--metrics-url", torch_server.metrics_url, "--models", models, "--settle", "0", "--poll", "0.2"]
    assert drain.main([*fast, "--timeout", "30"]) == 0 and "no generation" in capsys.readouterr().out

    from clients.http_client import generate

    values = {"prompt": "drain", "num_frames": 5, "height": 32, "width": 32, "num_inference_steps": 20, "seed": 1}
    request = threading.Thread(target=generate, args=(torch_server.http_url, values))
    request.start()
    deadline = time.monotonic() + 30
    while _active_generations(torch_server.metrics_url) == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _active_generations(torch_server.metrics_url) > 0, "the request never started"
    started = time.monotonic()
    assert drain.main([*fast, "--timeout", "120"]) == 0
    waited = time.monotonic() - started
    request.join(10)  # the generation is over when drain returns; its answer may still be on its way
    assert not request.is_alive() and waited > 0.2, waited  # it polled (0.2 s) at least once more
    assert "no generation" in capsys.readouterr().out

    gone = ["--metrics-url", f"http://127.0.0.1:{_free_port()}/metrics", "--settle", "0"]
    assert drain.main(gone) == 0 and "nothing to wait for" in capsys.readouterr().out


def test_drain_reads_the_metrics_the_server_publishes():
    ours = [gauge for gauge in drain.BUSY_GAUGES if gauge.startswith("wan22_")]
    assert ours and set(ours) <= set(metric_families()), ours


# --------------------------------------------------------------------------- #
# Dashboard, CLI, image contract, README
# --------------------------------------------------------------------------- #


def test_dashboard_shows_every_generation_metric():
    committed = json.loads(render.DASHBOARD_FILE.read_text())
    assert committed == dashboard(), "grafana-dashboard.json is stale: python docker/kubernetes/render.py --dashboard"
    exprs = [target["expr"] for panel in committed["panels"] for target in panel["targets"]]
    families = metric_families()
    assert families and all(name.startswith("wan22_") for name in families)
    for name in [*families, autoscaling.QUEUE_DURATION, autoscaling.REQUEST_SUCCESS, "nv_gpu_utilization",
                 "nv_gpu_memory_used_bytes"]:
        assert any(re.search(rf"\b{name}\b", expr) for expr in exprs), f"no panel shows {name}"
    assert len({panel["id"] for panel in committed["panels"]}) == len(committed["panels"])
    variables = {v["name"] for v in committed["templating"]["list"]}
    used = set(re.findall(r"\$(\w+)", json.dumps(committed["panels"])))
    assert used <= variables, used - variables


def test_cli_prints_one_tier_with_overrides():
    result = subprocess.run([sys.executable, str(K8S / "render.py"), "--print", "lowmem",
                             "--set", "site.namespace=video", "--set", "scaling.max_replicas=3",
                             "--set", "extra_export_flags=--max-queue-seconds 600",
                             "--set", "site.image_pull_secret=registry-login", "--set", "site.storage_class=nfs"],
                            capture_output=True, text=True, check=True)
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    for doc in docs:  # the optional fields, set, are valid too
        if doc["kind"] not in CUSTOM_KINDS:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    assert {d["metadata"]["namespace"] for d in docs} == {"video"}
    assert find(docs, "PersistentVolumeClaim")["spec"]["storageClassName"] == "nfs"
    assert find(docs, "Deployment")["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "registry-login"}]
    assert find(docs, "HorizontalPodAutoscaler")["spec"]["maxReplicas"] == 3
    assert find(docs, "Job")["spec"]["template"]["spec"]["containers"][0]["args"][-2:] == [
        "--max-queue-seconds", "600"]
    wrong = subprocess.run([sys.executable, str(K8S / "render.py"), "--print", "fast", "--set", "gpus=2"],
                           capture_output=True, text=True)
    assert wrong.returncode != 0 and "has no field 'gpus'" in wrong.stderr


def test_serve_image_runs_what_the_pods_expect():
    dockerfile = (ROOT / "docker" / "Dockerfile.serve").read_text()
    [cmd] = re.findall(r"^CMD (\[.*\])$", dockerfile, flags=re.M)
    assert f"--model-repository={workload.MODELS_DIR}" in json.loads(cmd)
    assert "--listen-address=0.0.0.0" in json.loads(cmd)  # the Services reach it
    [exposed] = re.findall(r"^EXPOSE (.*)$", dockerfile, flags=re.M)
    assert sorted(map(int, exposed.split())) == sorted([*DEFAULT_PORTS.values(), video_api.DEFAULT_PORT])
    # the video API's store where the pods mount its volume (the manifests also set both)
    assert f"WAN22_VIDEO_API_DATABASE={workload.SQLITE_URL}" in dockerfile
    assert f"WAN22_VIDEO_API_RESULTS={workload.RESULTS_DIR}" in dockerfile


def test_readme_covers_tiers_and_metrics():
    readme = (K8S / "README.md").read_text()
    for name in [*TIERS, *metric_families(), autoscaling.QUEUE_METRIC, autoscaling.QUEUE_DURATION,
                 autoscaling.REQUEST_SUCCESS]:
        assert f"`{name}" in readme, name
    assert "not run" in readme.lower()
