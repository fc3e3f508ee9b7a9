"""What runs: the repository's volume, the export Job that fills it, and the server Deployment that serves it.

The export writes the repository into `repository/` of the claim and, once complete, the marker `.export-done`
beside it; a server pod waits for the marker (init container), then mounts `repository/` read-only at /models, where
the serve image's launcher looks (docker/Dockerfile.serve's CMD). A new export goes to a new claim
(`Tier.repository_version`), so pods serving the old one are never served half-written files.

With `Tier.video_api` the launcher also runs the OpenAI-compatible video jobs API ($VIDEO_API_PORT, the image's
switch for --video-api-port) on the container port `video-api`; its job store is SQLite on the pod's own volume, or
PostgreSQL from a Secret with the results on a claim every replica mounts (values.shared_job_store).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import video_api
from clients.admin import ADMIN_KEY_ENV
from server.launcher import VIDEO_API_PORT_ENV
from video_api import API_KEY_ENV as VIDEO_API_KEY_ENV, DATABASE_ENV as VIDEO_API_DATABASE_ENV
from video_api import RESULTS_ENV as VIDEO_API_RESULTS_ENV
from server.process import STOP_GRACE_S
from server.tritonserver_args import DEFAULT_PORTS, EXIT_TIMEOUT_S
from wan22_triton.components.orchestrator import ORCHESTRATOR, ORCHESTRATOR_STREAM
from wan22_triton.options import Engine

from .meta import EXPORT, SERVER, checkov_skips, labels, metadata, selector_labels
from .security import container_security_context, pod_security_context
from .values import Site, Tier, shared_job_store

# Where the serve image's CMD reads the repository (docker/Dockerfile.serve: --model-repository=/models).
MODELS_DIR = "/models"
REPOSITORY_SUBPATH = "repository"
EXPORT_DONE = ".export-done"
VOLUME_DIR = "/volume"  # the claim's root, in the export Job and the server's init container
CHECKPOINT_DIR = "/checkpoint"
SCRIPTS_DIR = "/opt/wan22-k8s"  # the pod scripts (pod_scripts/), from a ConfigMap
POD_SCRIPTS = Path(__file__).with_name("pod_scripts")
CACHE_DIR = "/var/cache/wan22"
GPU_RESOURCE = "nvidia.com/gpu"
ORCHESTRATORS = (ORCHESTRATOR, ORCHESTRATOR_STREAM)

# Triton's health endpoints (KServe v2): ready = every model READY (the launcher starts tritonserver with
# --strict-readiness; the watchdog makes it not ready while a component reloads), live = the process answers.
READY_PATH = "/v2/health/ready"
LIVE_PATH = "/v2/health/live"
STARTUP_PERIOD_S = 10
READINESS_PERIOD_S = 2  # a pod leaves the Service within seconds of a component dying
LIVENESS_PERIOD_S = 10

# The video jobs API (video_api): its container port's name, its readiness (the service and its job database
# answer), and where it keeps jobs and results (the serve image's defaults, on a volume of the pod or a shared claim).
VIDEO_API = "video-api"
VIDEO_API_READY_PATH = "/health/ready"
JOBS_DIR = "/var/lib/wan22"
RESULTS_DIR = f"{JOBS_DIR}/video_results"
SQLITE_URL = f"sqlite:///{JOBS_DIR}/video_jobs.db"

# The image is built and pushed by the operator; its tag comes from docker/versions.env.
IMAGE_DIGEST_SKIP = {"CKV_K8S_43": "the image is built from this repository's Dockerfile and tagged with its NGC "
                                   "release; set Site images to a digest (name@sha256:...) once pushed"}


def names(tier: Tier) -> dict[str, str]:
    """Object names of a tier; a new repository version makes a new claim and a new Job."""
    return {"deployment": tier.release, "service_account": tier.release, "scripts": f"{tier.release}-pod-scripts",
            "claim": f"{tier.release}-repository-v{tier.repository_version}",
            "export_job": f"{tier.release}-export-v{tier.repository_version}",
            "disruption_budget": tier.release, "video_results": f"{tier.release}-video-results"}


def ports(tier: Tier) -> dict[str, int]:
    """The server container's ports by name: Triton's (HTTP through the guard, gRPC, metrics) and the video API's."""
    return {**DEFAULT_PORTS, **({VIDEO_API: video_api.DEFAULT_PORT} if tier.video_api else {})}


def _claim(site: Site, tier: Tier, name: str, size: str, component: str) -> dict[str, Any]:
    """A ReadWriteMany claim (Site.repository_access_mode): every replica mounts it, on whatever node it lands."""
    spec: dict[str, Any] = {"accessModes": [site.repository_access_mode], "resources": {"requests": {"storage": size}}}
    if site.storage_class:
        spec["storageClassName"] = site.storage_class
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": metadata(name, site, tier, component), "spec": spec}


def repository_claim(site: Site, tier: Tier) -> dict[str, Any]:
    return _claim(site, tier, names(tier)["claim"], tier.repository_size, EXPORT)


def video_results_claim(site: Site, tier: Tier) -> dict[str, Any]:
    """The video API's results, shared by the replicas that share its PostgreSQL job store (any of them serves a
    download)."""
    return _claim(site, tier, names(tier)["video_results"], tier.video_api_storage, SERVER)


def service_account(site: Site, tier: Tier) -> dict[str, Any]:
    """The pods' own account, with no API token: nothing here talks to the Kubernetes API."""
    return {"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": metadata(names(tier)["service_account"], site, tier, SERVER),
            "automountServiceAccountToken": False}


def pod_scripts(site: Site, tier: Tier) -> dict[str, Any]:
    """The warm-up probe and the drain hook (pod_scripts/), mounted into the server container."""
    data = {path.name: path.read_text() for path in sorted(POD_SCRIPTS.glob("*.py"))}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata(names(tier)["scripts"], site, tier, SERVER),
            "data": data}


def export_command(tier: Tier) -> list[str]:
    """`python -m export` of the tier into the claim (the export image's Python)."""
    return ["python3", "-m", "export", "--checkpoint", CHECKPOINT_DIR,
            "--repository", f"{VOLUME_DIR}/{REPOSITORY_SUBPATH}", *tier.export_args()]


def _export_needs_gpu(tier: Tier) -> bool:
    """The torch engine's export copies the checkpoint's folders; only TensorRT builds plans on a GPU."""
    args = tier.export_args()
    return "--engine" in args and args[args.index("--engine") + 1] == Engine.TENSORRT


def _image_pull(site: Site) -> dict[str, Any]:
    return {"imagePullSecrets": [{"name": site.image_pull_secret}]} if site.image_pull_secret else {}


def _writable_volumes(tier: Tier, *, cache: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(volumes, mounts) of what a container writes under a read-only root filesystem."""
    dirs = {"tmp": ("/tmp", tier.tmp_size)}
    if cache:
        dirs["cache"] = (CACHE_DIR, tier.cache_size)
    volumes = [{"name": name, "emptyDir": {"sizeLimit": size}} for name, (_, size) in dirs.items()]
    mounts = [{"name": name, "mountPath": path} for name, (path, _) in dirs.items()]
    return volumes, mounts


def _python_env() -> list[dict[str, str]]:
    # A UID without a passwd entry: HOME and USER for the libraries that look them up (torch's compile caches use
    # getpass.getuser()); no bytecode writes on the read-only root filesystem.
    return [{"name": "HOME", "value": "/tmp"}, {"name": "USER", "value": "wan22"},
            {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"}]


def export_job(site: Site, tier: Tier) -> dict[str, Any]:
    n = names(tier)
    gpus = 1 if _export_needs_gpu(tier) else 0
    writable_volumes, writable_mounts = _writable_volumes(tier, cache=False)
    # Marker off while exporting, on when the whole repository is written: server pods wait for it.
    script = f'rm -f {VOLUME_DIR}/{EXPORT_DONE} && "$@" && touch {VOLUME_DIR}/{EXPORT_DONE}'
    resources: dict[str, dict[str, Any]] = {"requests": {"cpu": "4", "memory": "32Gi"},
                                            "limits": {"cpu": "8", "memory": "32Gi"}}
    if gpus:
        for kind in resources.values():
            kind[GPU_RESOURCE] = gpus
    container = {
        "name": "export",
        "image": site.export_image,
        "imagePullPolicy": "Always",
        "command": ["bash", "-euc", script, "export"],
        "args": export_command(tier),
        "env": _python_env(),
        "resources": resources,
        "securityContext": container_security_context(),
        "volumeMounts": [{"name": "checkpoint", "mountPath": CHECKPOINT_DIR, "subPath": site.checkpoint_subpath,
                          "readOnly": True},
                         {"name": "repository", "mountPath": VOLUME_DIR}, *writable_mounts],
    }
    pod_spec: dict[str, Any] = {
        "serviceAccountName": n["service_account"],
        "automountServiceAccountToken": False,
        "restartPolicy": "Never",
        "securityContext": pod_security_context(site),
        **_image_pull(site),
        "containers": [container],
        "volumes": [{"name": "checkpoint", "persistentVolumeClaim": {"claimName": site.checkpoint_claim,
                                                                      "readOnly": True}},
                    {"name": "repository", "persistentVolumeClaim": {"claimName": n["claim"]}},
                    *writable_volumes],
    }
    if gpus:
        pod_spec.update(_gpu_placement(site, tier))
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": metadata(n["export_job"], site, tier, EXPORT, annotations=checkov_skips(IMAGE_DIGEST_SKIP)),
        "spec": {
            "backoffLimit": 2,
            "activeDeadlineSeconds": tier.export_budget_s,
            "ttlSecondsAfterFinished": 7 * 24 * 3600,  # the log stays a week, then the Job goes
            "template": {"metadata": {"labels": labels(tier, EXPORT)}, "spec": pod_spec},
        },
    }


def _gpu_placement(site: Site, tier: Tier) -> dict[str, Any]:
    return {"nodeSelector": {site.gpu_node_label: tier.gpu_product},
            # GPU nodes are commonly tainted so that only pods asking for GPUs land there.
            "tolerations": [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]}


def _container_ports(tier: Tier) -> list[dict[str, Any]]:
    return [{"name": kind, "containerPort": port, "protocol": "TCP"} for kind, port in ports(tier).items()]


def _http_probe(path: str, period_s: int, timeout_s: int, failures: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": "http"}, "periodSeconds": period_s, "timeoutSeconds": timeout_s,
            "failureThreshold": failures}


def readiness_probe(tier: Tier) -> dict[str, Any]:
    """Triton ready (every model READY); with the video API, its /health/ready too, through ready.py (one probe per
    container): a pod leaves the Service within seconds of either failing."""
    if not tier.video_api:
        return _http_probe(READY_PATH, READINESS_PERIOD_S, 2, 2)
    urls = [f"http://127.0.0.1:{DEFAULT_PORTS['http']}{READY_PATH}",
            f"http://127.0.0.1:{video_api.DEFAULT_PORT}{VIDEO_API_READY_PATH}"]
    return {"exec": {"command": ["python3", f"{SCRIPTS_DIR}/ready.py", "--timeout", "1", *urls]},
            "periodSeconds": READINESS_PERIOD_S, "timeoutSeconds": 3, "failureThreshold": 2}


def startup_probe(tier: Tier) -> dict[str, Any]:
    """Covers the load of the repository (and the warm-up request, for a tier that compiles); liveness and
    readiness start after it succeeds."""
    failures = math.ceil(tier.load_budget_s / STARTUP_PERIOD_S)
    if not tier.warmup_steps:
        return _http_probe(READY_PATH, STARTUP_PERIOD_S, 5, failures)
    command = ["python3", f"{SCRIPTS_DIR}/warmup.py", "--url", f"http://127.0.0.1:{DEFAULT_PORTS['http']}",
               "--model", ORCHESTRATOR, "--steps", str(tier.warmup_steps),
               "--timeout", str(tier.warmup_budget_s - 30)]  # the script gives up before the kubelet does
    return {"exec": {"command": command}, "periodSeconds": STARTUP_PERIOD_S, "timeoutSeconds": tier.warmup_budget_s,
            "failureThreshold": failures}


def termination_grace_s(tier: Tier) -> int:
    """The drain hook's time, then the launcher's bounded stop (Triton's exit timeout + its SIGKILL grace)."""
    return tier.drain_s + EXIT_TIMEOUT_S + STOP_GRACE_S + 10


def _video_api_env(site: Site, tier: Tier) -> list[dict[str, Any]]:
    """The launcher's switch, the key (a Secret), the job store (SQLite on the pod's volume, or PostgreSQL's URL from
    a Secret) and the results folder, each through video_api's own variable."""
    if not tier.video_api:
        return []
    database: dict[str, Any] = (
        {"valueFrom": {"secretKeyRef": {"name": site.video_api_database_secret,
                                        "key": site.video_api_database_secret_key}}}
        if shared_job_store(site, tier) else {"value": SQLITE_URL})
    return [{"name": VIDEO_API_PORT_ENV, "value": str(video_api.DEFAULT_PORT)},
            {"name": VIDEO_API_KEY_ENV,
             "valueFrom": {"secretKeyRef": {"name": site.api_key_secret, "key": site.api_key_secret_key}}},
            {"name": VIDEO_API_DATABASE_ENV, **database},
            {"name": VIDEO_API_RESULTS_ENV, "value": RESULTS_DIR}]


def _video_api_volume(site: Site, tier: Tier) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str | None]:
    """(volumes, mounts, the pod's ephemeral storage it takes) of the video API's store and results."""
    if not tier.video_api:
        return [], [], None
    if shared_job_store(site, tier):
        claim = {"name": "video-results", "persistentVolumeClaim": {"claimName": names(tier)["video_results"]}}
        return [claim], [{"name": "video-results", "mountPath": RESULTS_DIR}], None
    return ([{"name": "video-jobs", "emptyDir": {"sizeLimit": tier.video_api_storage}}],
            [{"name": "video-jobs", "mountPath": JOBS_DIR}], tier.video_api_storage)


def server_container(site: Site, tier: Tier) -> dict[str, Any]:
    _, writable_mounts = _writable_volumes(tier, cache=True)
    _, jobs_mounts, jobs_size = _video_api_volume(site, tier)
    env = [
        {"name": ADMIN_KEY_ENV,
         "valueFrom": {"secretKeyRef": {"name": site.admin_key_secret, "key": site.admin_key_secret_key}}},
        *_python_env(),
        # Compile caches on a volume of their own (the root filesystem is read-only).
        {"name": "XDG_CACHE_HOME", "value": CACHE_DIR},
        {"name": "TORCHINDUCTOR_CACHE_DIR", "value": f"{CACHE_DIR}/torchinductor"},
        {"name": "TRITON_CACHE_DIR", "value": f"{CACHE_DIR}/triton"},
        {"name": "CUDA_CACHE_PATH", "value": f"{CACHE_DIR}/nv"},
        *_video_api_env(site, tier),
    ]
    drain = ["python3", f"{SCRIPTS_DIR}/drain.py",
             "--metrics-url", f"http://127.0.0.1:{DEFAULT_PORTS['metrics']}/metrics",
             "--models", ",".join(ORCHESTRATORS), "--timeout", str(tier.drain_s)]
    ephemeral = f"{sum(_gibibytes(size) for size in (tier.tmp_size, tier.cache_size, jobs_size) if size)}Gi"
    return {
        "name": "tritonserver",
        "image": site.serve_image,
        "imagePullPolicy": "Always",
        # No command: the image's CMD (the launcher: HTTP guard, admin key, explicit model control, bounded stop;
        # the video API through $VIDEO_API_PORT).
        "ports": _container_ports(tier),
        "env": env,
        "resources": {
            "requests": {"cpu": tier.cpu_request, "memory": tier.memory, "ephemeral-storage": ephemeral,
                         GPU_RESOURCE: tier.gpus_per_pod},
            "limits": {"cpu": tier.cpu_limit, "memory": tier.memory, "ephemeral-storage": ephemeral,
                       GPU_RESOURCE: tier.gpus_per_pod},
        },
        "startupProbe": startup_probe(tier),
        "readinessProbe": readiness_probe(tier),
        # Live only says the server answers: a pod whose component cannot be reloaded stays unready, not restarted.
        "livenessProbe": _http_probe(LIVE_PATH, LIVENESS_PERIOD_S, 5, 6),
        "lifecycle": {"preStop": {"exec": {"command": drain}}},
        "securityContext": container_security_context(),
        "volumeMounts": [
            {"name": "repository", "mountPath": MODELS_DIR, "subPath": REPOSITORY_SUBPATH, "readOnly": True},
            {"name": "dshm", "mountPath": "/dev/shm"},
            {"name": "pod-scripts", "mountPath": SCRIPTS_DIR, "readOnly": True},
            *writable_mounts,
            *jobs_mounts,
        ],
    }


def _gibibytes(quantity: str) -> int:
    if not quantity.endswith("Gi"):
        raise ValueError(f"sizes are given in Gi, got {quantity!r}")
    return int(quantity[:-2])


def wait_for_export(site: Site) -> dict[str, Any]:
    """Init container: the pod starts serving only a complete repository (the export Job's marker)."""
    wait = f"until [ -e {VOLUME_DIR}/{EXPORT_DONE} ]; do echo waiting for the export Job; sleep 15; done"
    return {
        "name": "wait-for-export",
        "image": site.serve_image,  # pulled for the server anyway
        "imagePullPolicy": "Always",
        "command": ["bash", "-c", wait],
        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"cpu": "100m", "memory": "64Mi"}},
        "securityContext": container_security_context(),
        "volumeMounts": [{"name": "repository", "mountPath": VOLUME_DIR, "readOnly": True}],
    }


def server_deployment(site: Site, tier: Tier) -> dict[str, Any]:
    n = names(tier)
    writable_volumes, _ = _writable_volumes(tier, cache=True)
    jobs_volumes, _, _ = _video_api_volume(site, tier)
    video_api_secrets = (f"; the video API its key and database URL only from ${VIDEO_API_KEY_ENV} and "
                         f"${VIDEO_API_DATABASE_ENV} (or flags)" if tier.video_api else "")
    skips = {
        **IMAGE_DIGEST_SKIP,
        "CKV_K8S_35": f"the launcher takes the admin key only from ${ADMIN_KEY_ENV} or --admin-key "
                      "(server/tritonserver_args.py) and hands it to tritonserver on its command line"
                      + video_api_secrets,
    }
    pod_spec: dict[str, Any] = {
        "serviceAccountName": n["service_account"],
        "automountServiceAccountToken": False,
        "securityContext": pod_security_context(site),
        "terminationGracePeriodSeconds": termination_grace_s(tier),
        **_gpu_placement(site, tier),
        # Replicas on different nodes where there is room: a node lost takes fewer of them.
        "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                                       "whenUnsatisfiable": "ScheduleAnyway",
                                       "labelSelector": {"matchLabels": selector_labels(tier, SERVER)}}],
        **_image_pull(site),
        "initContainers": [wait_for_export(site)],
        "containers": [server_container(site, tier)],
        "volumes": [
            {"name": "repository", "persistentVolumeClaim": {"claimName": n["claim"], "readOnly": True}},
            # Docker's --shm-size: the Python backend passes tensors between model processes through /dev/shm.
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": tier.shm_size}},
            {"name": "pod-scripts", "configMap": {"name": n["scripts"], "defaultMode": 0o444}},
            *writable_volumes,
            *jobs_volumes,
        ],
    }
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": metadata(n["deployment"], site, tier, SERVER, annotations=checkov_skips(skips)),
        "spec": {
            # No replicas: the HorizontalPodAutoscaler owns the count (autoscaling.py).
            "selector": {"matchLabels": selector_labels(tier, SERVER)},
            "revisionHistoryLimit": 3,
            # GPUs are scarce: one extra pod at a time, none taken out before its successor is ready.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "progressDeadlineSeconds": tier.load_budget_s + tier.warmup_budget_s + 600,
            "template": {"metadata": {"labels": labels(tier, SERVER)}, "spec": pod_spec},
        },
    }


def disruption_budget(site: Site, tier: Tier) -> dict[str, Any]:
    """Node drains take one server at a time (each drains its generations in preStop first)."""
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": metadata(names(tier)["disruption_budget"], site, tier, SERVER),
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector_labels(tier, SERVER)}}}

