"""The deployment's values, in one place: what the cluster provides (`Site`), how a tier scales (`Scaling`) and
each serving tier (`Tier`, `TIERS`). The manifests (workload.py, network.py, autoscaling.py) only read these."""

from __future__ import annotations

import dataclasses
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

REPO_ROOT = Path(__file__).resolve().parents[3]


def _docker_versions() -> dict[str, str]:
    """docker/versions.env (KEY=VALUE): the images are tagged with the NGC release they are built from."""
    pairs = (line.split("=", 1) for line in (REPO_ROOT / "docker" / "versions.env").read_text().splitlines()
             if "=" in line and not line.lstrip().startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


NGC_RELEASE = _docker_versions()["NGC_RELEASE"]


@dataclass(frozen=True)
class Site:
    """What the cluster provides; shared by every tier."""

    namespace: str = "wan22"
    # Built from docker/Dockerfile.serve and docker/Dockerfile.export and pushed by the operator.
    serve_image: str = f"registry.example.com/wan22-triton-serve:{NGC_RELEASE}"
    export_image: str = f"registry.example.com/wan22-triton-export:{NGC_RELEASE}"
    image_pull_secret: str | None = None
    storage_class: str | None = None  # None: the cluster's default StorageClass
    # Every replica mounts the one exported repository, on whatever node it lands: ReadWriteMany (NFS, CephFS,
    # Filestore, ...). With ReadWriteOnce all replicas must share a node.
    repository_access_mode: str = "ReadWriteMany"
    # An existing claim holding the diffusers checkpoint (Wan2.2-T2V-A14B-Diffusers), filled by the operator.
    checkpoint_claim: str = "wan22-checkpoint"
    checkpoint_subpath: str = "Wan2.2-T2V-A14B-Diffusers"
    # Secret with the admin key (clients.admin.ADMIN_KEY_ENV): created by the operator, never rendered.
    admin_key_secret: str = "wan22-admin-key"
    admin_key_secret_key: str = "key"
    # The video jobs API of each server pod (Tier.video_api, docs/video-api.md). Its key (kept as `default`): a
    # Secret created by the operator, like the admin key.
    api_key_secret: str = "wan22-api-key"
    api_key_secret_key: str = "key"
    # Its job store. None: SQLite on the pod's own volume, with the results (each pod its own jobs, gone with the
    # pod: one replica). Several replicas must share PostgreSQL: the name of a Secret holding its SQLAlchemy URL
    # (postgresql+psycopg://USER:PASSWORD@HOST:5432/DB); the pods may then open connections to that port (and DNS),
    # and the results go to a claim every replica mounts.
    video_api_database_secret: str | None = None
    video_api_database_secret_key: str = "url"
    video_api_database_port: int = 5432
    # Pods run as this user and group; files the export writes are group-owned (fsGroup) so the server reads them.
    run_as_user: int = 10001
    gpu_node_label: str = "nvidia.com/gpu.product"  # set by NVIDIA's GPU feature discovery
    monitoring_namespace: str = "monitoring"  # Prometheus (scrapes 8002) and prometheus-adapter
    service_monitor_labels: Mapping[str, str] = field(default_factory=lambda: {"release": "kube-prometheus-stack"})
    # Namespaces whose pods may call HTTP/gRPC, by their labels (a NetworkPolicy namespaceSelector); empty: the
    # server's own namespace only.
    client_namespace_labels: Mapping[str, str] = field(default_factory=dict)
    # prometheus-adapter's window for the average queue time (one rule for every tier): several requests of ~3
    # minutes finish in it.
    queue_window: str = "5m"


@dataclass(frozen=True)
class Scaling:
    """HorizontalPodAutoscaler bounds for minute-long requests on pods that take many minutes to start."""

    min_replicas: int = 1
    max_replicas: int = 8
    # Target average queue time per request (prometheus-adapter's metric, autoscaling.QUEUE_METRIC).
    target_queue_seconds: int = 30
    # Up: act on a sustained signal, then at most `scale_up_pods` per `scale_up_period_s` (a new pod needs its load
    # and warm-up time before it takes work; the HPA would otherwise keep adding pods meanwhile).
    scale_up_window_s: int = 120
    scale_up_pods: int = 2
    scale_up_period_s: int = 600
    # Down: only after half an hour of low queue times, one pod at a time (each drains its generations first).
    scale_down_window_s: int = 1800
    scale_down_pods: int = 1
    scale_down_period_s: int = 600


@dataclass(frozen=True)
class Tier:
    """One serving tier: its export, its pod and its scaling. Objects are named `wan22-<name>`."""

    name: str
    summary: str
    export_flags: tuple[str, ...]  # `python -m export` flags beside --checkpoint/--repository
    extra_export_flags: tuple[str, ...] = ()  # passed through as given (e.g. multi-GPU modes)
    gpus_per_pod: int = 1
    gpu_product: str = "NVIDIA-H200"  # node selection (Site.gpu_node_label)
    cpu_request: str = "8"
    cpu_limit: str = "16"
    memory: str = "128Gi"  # request = limit: the pod is never the first to be OOM-killed on a busy node
    shm_size: str = "16Gi"  # /dev/shm: the Python backend's tensors between models (docker's --shm-size)
    tmp_size: str = "8Gi"  # /tmp: MP4 encoding, the guard's abandon markers, lock files
    cache_size: str = "16Gi"  # compile caches (TorchInductor, Triton kernels, CUDA)
    repository_size: str = "200Gi"  # the exported repository (the checkpoint's folders, ~70 GB for A14B in BF16)
    # A new export goes to a new claim (and Job): bump this, render, apply; pods roll over to it once it is done.
    repository_version: int = 1
    load_budget_s: int = 2400  # start to all models loaded: ~70 GB from network storage
    # > 0: a warm-up request of this many steps must succeed before the pod takes traffic (compiles first request).
    warmup_steps: int = 0
    warmup_budget_s: int = 900
    # On termination a pod waits this long at most for its generations and queued requests to finish.
    drain_s: int = 900
    export_budget_s: int = 7200
    # The OpenAI-compatible video jobs API beside Triton (the launcher's --video-api-port, through $VIDEO_API_PORT).
    video_api: bool = True
    # Its results (kept at most 50 GiB: video_api's --max-results-gb) and SQLite store: the pod's volume, or the
    # shared results claim with PostgreSQL (Site.video_api_database_secret).
    video_api_storage: str = "64Gi"
    scaling: Scaling = field(default_factory=Scaling)

    @property
    def release(self) -> str:
        return f"wan22-{self.name}"

    def export_args(self) -> list[str]:
        return [*self.export_flags, *self.extra_export_flags]


def shared_job_store(site: Site, tier: Tier) -> bool:
    """The tier's video API keeps its jobs in PostgreSQL and its results on a shared claim (several replicas)."""
    return tier.video_api and site.video_api_database_secret is not None


_GPU_BF16 = ("--engine", "torch", "--device", "gpu", "--precision", "bf16")

TIERS: dict[str, Tier] = {tier.name: tier for tier in (
    Tier(
        name="fast",
        summary="FP8 GEMMs + FP8 attention (cuDNN) + regional compile; 1.63x diffusers BF16 on an H200",
        export_flags=(*_GPU_BF16, "--quantization", "fp8_rowwise", "--attention", "fp8_cudnn",
                      "--compile", "regional"),
        memory="160Gi",
        warmup_steps=4,  # the first request compiles both experts (~40 s on an H200)
    ),
    Tier(
        name="bf16",
        summary="BF16 numerics, eager",
        export_flags=_GPU_BF16,
        memory="160Gi",
    ),
    Tier(
        name="lowmem",
        summary="BF16 on an 80 GB GPU: experts and text encoder in pinned host memory, on the GPU while they work",
        export_flags=(*_GPU_BF16, "--low-memory"),
        gpu_product="NVIDIA-H100-80GB-HBM3",
        memory="192Gi",  # ~70 GB of pinned weights on the host, plus /dev/shm
        drain_s=1200,  # one generation at a time: the queue drains slower
    ),
    Tier(
        name="multigpu",
        summary="the fast tier over 2 GPUs per request, CFG parallel (docs/multi-gpu.md: 3.0x diffusers BF16 "
                "at 4 steps on 2 H200s); --ulysses N / --replicas N instead through extra_export_flags",
        export_flags=(*_GPU_BF16, "--quantization", "fp8_rowwise", "--attention", "fp8_cudnn", "--compile", "regional",
                      "--cfg-parallel", "2"),
        gpus_per_pod=2,  # the plan's devices: cfg_parallel x ulysses x replicas
        warmup_steps=4,
        cpu_request="16",
        cpu_limit="32",
        memory="256Gi",
        shm_size="32Gi",
        scaling=Scaling(max_replicas=4),
    ),
)}


def override(values: Any, assignment: str) -> Any:
    """`values` (a frozen dataclass) with `path=value` set, e.g. `gpus_per_pod=4`, `site.namespace=prod`,
    `scaling.max_replicas=2`, `extra_export_flags=--a 1 --b`; the value is converted to the field's current type."""
    path, sep, text = assignment.partition("=")
    if not sep:
        raise ValueError(f"expected FIELD=VALUE, got {assignment!r}")
    head, _, rest = path.partition(".")
    names = {f.name for f in dataclasses.fields(values)}
    if head not in names:
        raise ValueError(f"{type(values).__name__} has no field {head!r} (fields: {', '.join(sorted(names))})")
    current = getattr(values, head)
    if rest:
        return dataclasses.replace(values, **{head: override(current, f"{rest}={text}")})
    return dataclasses.replace(values, **{head: _convert(current, text, head)})


def _convert(current: Any, text: str, name: str) -> Any:
    if isinstance(current, bool):
        return text.lower() in ("1", "true", "yes")
    if isinstance(current, int):
        return int(text)
    if isinstance(current, tuple):
        return tuple(shlex.split(text))
    if isinstance(current, Mapping):
        return dict(pair.split(":", 1) for pair in text.split(",") if pair)  # key:value,key:value
    if current is None or isinstance(current, str):
        return (text or None) if current is None else text
    raise ValueError(f"{name} cannot be set from the command line")
