"""Wan2.2 T2V-A14B served by Triton against diffusers' WanPipeline (BF16), side by side on one GPU.

One run (`make perf-gpu`, or `python3 -m perf.gpu_benchmark` on the GPU host after `source gpu-bundle/activate.sh`):

1. writes a configs-only checkpoint of the full Wan2.2-T2V-A14B architecture (perf/gpu_checkpoint.py); every
   component gets RANDOM weights on the GPU from fixed seeds, identical on both sides (wan22_triton/fast_path.py,
   config parameter `random_init_seed`);
2. baseline, in its own process (perf/gpu_baseline.py): an 8192^3 BF16 matmul (the TFLOP/s ceiling of this card),
   then stock diffusers WanPipeline BF16, eager, default attention, no offload: a 1-step warm-up, then the measured
   call; the process exits and frees the GPU;
3. for each variant: export a model repository (ENGINE=torch, --device gpu --precision bf16) with the variant's
   expert options (`compile`, `quantization`, `attention`; default variants: the FP8 tier `fp8_attention` and the
   BF16 tier `flash_attention`; `compile` is the BF16 tier with PyTorch's SDPA), start the real tritonserver, send a 2-step warm-up request (both
   experts; compiles where asked), run the parity probes (text encoder and one high-noise expert forward on the
   baseline's own first-step inputs), then the measured request over gRPC to the BLS orchestrator (frames back
   through system shared memory unless --no-shared-memory), with Triton's statistics read before and after;
   stop the server;
4. prints a table and writes results.json, table.md and gpu_benchmark.png under --out-dir (perf/results/gpu).

Per-step times of the Triton side come from Triton's statistics (compute_infer per expert request, one request per
step, cond and uncond as one batch); the baseline's from synchronised hooks (cond + uncond calls per step).
"Triton overhead" = client end-to-end minus the sum of the component models' compute_infer: queueing, BLS calls,
the orchestrator's scheduler/CFG work, and moving tensors between processes and to the client; split in
`overhead_split_s` into queueing, BLS plus orchestrator, client plus transport.

Low-memory mode (export `low_memory`: experts and text encoder in page-locked host memory, on the GPU only while
they work; wan22_triton/offload.py): the `*_lowmem` variants. `--no-baseline --reference-variant bf16` runs only
the Triton variants and compares each video with the reference variant's; the measured request's swaps (each
model's load/release times from the server log), peak GPU memory of the measured request alone, per process at
the peak, and `--te-cpu-probe` (one UMT5-XXL block on the CPU: the cost of running the text encoder from host
memory instead of swapping it) are recorded:
    python3 -m perf.gpu_benchmark --variants bf16_lowmem,bf16 --no-baseline --reference-variant bf16 \
        --te-cpu-probe --out-dir perf/results/gpu/low_memory

CPU dry run of the whole flow (tiny architecture, no GPU):
    python -m perf.gpu_benchmark --device cpu --preset tiny --height 32 --width 48 --num-frames 9 \
        --variants bf16,compile --out-dir /tmp/gpu-bench-dry
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Expert options (`compile`, `quantization`, `attention`, see wan22_triton.fast_path) and the VAE's `cudnn_benchmark`.
VARIANTS: dict[str, dict[str, str]] = {
    "bf16": {"label": "Triton BF16 eager", "compile": "none", "quantization": "none", "vae_cudnn_benchmark": "0"},
    "compile": {"label": "Triton BF16 + compile", "compile": "regional", "quantization": "none",
                "vae_cudnn_benchmark": "0"},
    "flash_attention": {"label": "Triton BF16 + FlashAttention-4 + compile", "compile": "regional",
                        "quantization": "none", "attention": "flash_attn_4", "vae_cudnn_benchmark": "0"},
    "fp8": {"label": "Triton FP8 + compile", "compile": "regional", "quantization": "fp8_rowwise",
            "vae_cudnn_benchmark": "1"},
    "fp8_attention": {"label": "Triton FP8 + FP8 attention + compile", "compile": "regional",
                      "quantization": "fp8_rowwise", "attention": "fp8_cudnn", "vae_cudnn_benchmark": "1"},
    # low-memory mode (export low_memory): experts and text encoder swapped in from page-locked host memory
    "bf16_lowmem": {"label": "Triton BF16 eager, low memory", "compile": "none", "quantization": "none",
                    "vae_cudnn_benchmark": "0", "low_memory": "1"},
    "compile_lowmem": {"label": "Triton BF16 + compile, low memory", "compile": "regional", "quantization": "none",
                       "vae_cudnn_benchmark": "0", "low_memory": "1"},
}


def is_low_memory(spec: dict[str, str]) -> bool:
    return spec.get("low_memory", "0") == "1"


EXPERTS = ("transformer_high_noise", "transformer_low_noise")
COMPONENT_MODELS = ("text_encoder", *EXPERTS, "vae_decoder")
DEFAULT_PROMPT = (
    "A red panda walks along a mossy branch in a misty forest at sunrise, soft golden light, cinematic, detailed"
)
DEFAULT_NEGATIVE = "blurry, low quality, distorted, static"
_T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[{time.monotonic() - _T0:7.1f}s] {msg}", flush=True)


# --------------------------------------------------------------------------- GPU facts (no CUDA context here)


def nvidia_smi(query: str) -> list[str]:
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout
    except (subprocess.SubprocessError, OSError):
        return []
    return [v.strip() for v in out.splitlines()[0].split(",")] if out.strip() else []


def gpu_used_gb() -> float | None:
    values = nvidia_smi("memory.used")
    return float(values[0]) / 1024 if values else None


class GpuMemoryPeak:
    """Peak device memory in use (all processes) while the block runs: NVML polling, else nvidia-smi."""

    def __init__(self, interval: float = 0.25):
        self.interval = interval
        self.peak_gb: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._read = None
        self._processes = None
        self.processes_at_peak: dict[str, float] = {}  # process (model name where known) -> GB, at the peak
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            self._read = lambda: pynvml.nvmlDeviceGetMemoryInfo(handle).used / 2**30
            self._processes = lambda: {
                p.pid: (p.usedGpuMemory or 0) / 2**30 for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
            }
        except Exception:  # no NVML: nvidia-smi (slower), or nothing on a CPU host
            if shutil.which("nvidia-smi"):
                self._read = gpu_used_gb

    def _run(self) -> None:
        while not self._stop.is_set():
            value = self._read()
            if value is not None and value > (self.peak_gb or 0.0):
                self.peak_gb = value
                if self._processes is not None:
                    try:
                        self.processes_at_peak = {_process_label(pid): gb for pid, gb in self._processes().items()}
                    except Exception:
                        pass
            self._stop.wait(self.interval)

    def __enter__(self) -> "GpuMemoryPeak":
        if self._read is not None:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()


def _process_label(pid: int) -> str:
    """A GPU process by what it serves: a Python-backend stub's command line names its model's folder."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return str(pid)
    for arg in args:
        parts = arg.decode(errors="replace").split("/")
        if len(parts) >= 3 and parts[-1] == "model.py":
            return f"{parts[-3]} ({pid})"
    return f"{Path(args[0].decode(errors='replace')).name} ({pid})"


def wait_gpu_free(limit_gb: float = 2.0, timeout: float = 120.0) -> float | None:
    """Wait until the previous process's memory is released; returns the memory in use then."""
    deadline = time.monotonic() + timeout
    used = gpu_used_gb()
    while used is not None and used > limit_gb and time.monotonic() < deadline:
        time.sleep(1)
        used = gpu_used_gb()
    return used


# --------------------------------------------------------------------------- metrics


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def ssim(a: np.ndarray, b: np.ndarray, stride: int = 4) -> float:
    """Mean SSIM (scikit-image, RGB) over every `stride`-th frame."""
    from skimage.metrics import structural_similarity

    values = [
        structural_similarity(x, y, channel_axis=-1, data_range=255) for x, y in zip(a[::stride], b[::stride])
    ]
    return float(np.mean(values))


# --------------------------------------------------------------------------- Triton side


def stub_env_bin() -> str | None:
    """The numpy<2 venv the Python-backend stub must run in (gpu-bundle's $TRITON_STUB_ENV), made to see this repo."""
    env = os.environ.get("TRITON_STUB_ENV")
    if not env:
        return None
    python = Path(env) / "bin" / "python"
    probe = subprocess.run([str(python), "-c", "import wan22_triton"], capture_output=True, cwd="/")
    if probe.returncode != 0:  # the stub ignores PYTHONPATH: a .pth file in its site-packages instead
        site = subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
        Path(site, "wan22-triton-repo.pth").write_text(str(ROOT) + "\n")
    return str(python.parent)


@contextlib.contextmanager
def stub_env_first(bin_dir: str | None) -> Iterator[None]:
    """tritonserver started with `bin_dir` first on PATH (its python3 runs the stubs)."""
    import wan22_triton.server as server_module

    if not bin_dir:
        yield
        return
    original = server_module.find_tritonserver

    def patched(*args, **kwargs):
        install = original(*args, **kwargs)
        server_module._prepend_path("PATH", [bin_dir], install.env)
        return install

    server_module.find_tritonserver = patched
    try:
        yield
    finally:
        server_module.find_tritonserver = original


def patch_parameters(model_dir: Path, values: dict[str, str]) -> None:
    from export.model_config import parse_pbtxt, to_pbtxt

    config = parse_pbtxt((model_dir / "config.pbtxt").read_text())
    for key, value in values.items():
        config.parameters[key].string_value = str(value)
    (model_dir / "config.pbtxt").write_text(to_pbtxt(config))


def export_variant(checkpoint: Path, repo: Path, spec: dict[str, str], args) -> None:
    from export.repository import ExportOptions, export_repository
    from wan22_triton import components as C
    from wan22_triton.fast_path import component_seed

    if repo.exists():
        shutil.rmtree(repo)
    for model_py in (ROOT / "model_repository").glob("*/1/model.py"):
        target = repo / model_py.relative_to(ROOT / "model_repository")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(model_py.read_text())
    opts = ExportOptions(engine="torch", device=args.device, precision=args.precision,
                         low_memory=is_low_memory(spec), compile=spec["compile"],
                         quantization=spec["quantization"], attention=spec.get("attention", "sdpa"))
    export_repository(checkpoint, repo, opts, log=lambda _: None)
    seed = args.weights_seed
    patch_parameters(repo / C.TEXT_ENCODER, {"random_init_seed": component_seed(seed, "text_encoder")})
    patch_parameters(repo / C.VAE_DECODER, {
        "random_init_seed": component_seed(seed, "vae"), "cudnn_benchmark": spec["vae_cudnn_benchmark"],
    })
    for folder, name in C.EXPERT_MODELS.items():
        patch_parameters(repo / name, {"random_init_seed": component_seed(seed, folder)})


def read_stats(client) -> dict[str, dict[str, int]]:
    out = {}
    for model in client.get_inference_statistics(as_json=True).get("model_stats", []):
        stats = model.get("inference_stats", {})
        row = {"count": int(stats.get("success", {}).get("count", 0))}
        for key in ("queue", "compute_input", "compute_infer", "compute_output"):
            row[f"{key}_ns"] = int(stats.get(key, {}).get("ns", 0))
        row["executions"] = int(model.get("execution_count", 0))
        out[model["name"]] = row
    return out


def read_stats_after(client, requests: int, model: str = "wan22_t2v", timeout_s: float = 10.0) -> dict:
    """Statistics once `model` has recorded `requests` requests since the server started. Triton records a Python
    model's statistics when its execute returns, which can be after the client already has the response."""
    deadline = time.monotonic() + timeout_s
    while True:
        stats = read_stats(client)
        if stats.get(model, {}).get("count", 0) >= requests or time.monotonic() > deadline:
            return stats
        time.sleep(0.01)


def stats_delta(before: dict, after: dict) -> dict[str, dict[str, float]]:
    out = {}
    for name, row in after.items():
        prev = before.get(name, {})
        d = {k: row[k] - prev.get(k, 0) for k in row}
        if d["count"]:
            out[name] = {"count": d["count"], **{k[:-3] + "_s": d[k] / 1e9 for k in d if k.endswith("_ns")}}
    return out


def infer_model(url: str, model: str, inputs: dict[str, np.ndarray], output: str | None) -> np.ndarray | None:
    import tritonclient.grpc as grpcclient

    dtypes = {np.dtype(np.float32): "FP32", np.dtype(object): "BYTES", np.dtype(bool): "BOOL"}
    tensors = []
    for name, array in inputs.items():
        tensor = grpcclient.InferInput(name, list(array.shape), dtypes[array.dtype])
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    with grpcclient.InferenceServerClient(url) as client:
        result = client.infer(model, tensors, outputs=[grpcclient.InferRequestedOutput(output)] if output else None)
    return result.as_numpy(output) if output else None


def request_values(args, steps: int) -> dict[str, Any]:
    return {
        "prompt": args.prompt, "negative_prompt": args.negative_prompt, "num_frames": args.num_frames,
        "height": args.height, "width": args.width, "num_inference_steps": steps,
        "guidance_scale": args.guidance_scale, "guidance_scale_2": args.guidance_scale_2, "seed": args.seed,
    }


def run_variant(name: str, spec: dict[str, str], checkpoint: Path, args, baseline: dict) -> dict[str, Any]:
    import tritonclient.grpc as grpcclient

    from clients import grpc_client
    from wan22_triton.server import TritonServer

    result: dict[str, Any] = {"label": spec["label"], **{k: v for k, v in spec.items() if k != "label"}}
    repo = args.workdir / f"repo-{name}"
    export_variant(checkpoint, repo, spec, args)
    extra = ["--log-info=true", *args.server_args]
    if os.environ.get("TRITON_BACKENDS"):  # gpu-bundle's python backend with its 3.12 stub
        extra.append(f"--backend-directory={os.environ['TRITON_BACKENDS']}")
    server_log = args.out_dir / f"tritonserver-{name}.log"
    server = TritonServer(repo, log_file=server_log, extra_args=extra, startup_timeout=args.startup_timeout)
    peak = GpuMemoryPeak()
    with peak:
        t0 = time.perf_counter()
        with stub_env_first(args.stub_bin):
            server.start()
        result["server_start_s"] = time.perf_counter() - t0
        log(f"{name}: tritonserver ready in {result['server_start_s']:.1f}s (log {server_log})")
        stack = contextlib.ExitStack()
        try:
            url = server.grpc_url
            with grpcclient.InferenceServerClient(url) as client:
                result["tritonserver_version"] = client.get_server_metadata(as_json=True).get("version")
            # One shared-memory region for all of this variant's requests, as a long-lived client keeps it
            # (--shm-region per-request: a fresh one each time, as the one-shot CLI does).
            shm = args.shared_memory
            if shm and args.shm_region == "reused":
                with grpcclient.InferenceServerClient(url) as client:
                    size = grpc_client.video_bytes(client, request_values(args, args.steps), "wan22_t2v")
                shm = stack.enter_context(grpc_client.VideoSharedMemory(url, size))
            t0 = time.perf_counter()
            warm = grpc_client.generate(url, request_values(args, args.warmup_steps), shared_memory=shm)
            result["warmup_s"] = time.perf_counter() - t0
            result["warmup_stage_seconds"] = warm["stage_seconds"]
            log(f"{name}: warm-up request ({args.warmup_steps} steps) {result['warmup_s']:.1f}s")

            # Parity probes on the baseline's own first-step inputs (without a baseline: none).
            result["parity"] = {}
            if args.baseline:
                run_parity_probes(url, args, result, low_memory=is_low_memory(spec))

            with grpcclient.InferenceServerClient(url) as client:
                before = read_stats_after(client, 1)  # the warm-up request's statistics are in
                log_offset = server_log.stat().st_size
                peak_request = GpuMemoryPeak()
                with peak_request:
                    t0 = time.perf_counter()
                    out = grpc_client.generate(url, request_values(args, args.steps), shared_memory=shm)
                    result["e2e_s"] = time.perf_counter() - t0
                after = read_stats_after(client, 2)
            log(f"{name}: measured request ({args.steps} steps) {result['e2e_s']:.2f}s")
            result["peak_gpu_memory_request_gb"] = peak_request.peak_gb
            result["gpu_processes_at_request_peak_gb"] = peak_request.processes_at_peak
            time.sleep(1.0)  # the last release's log lines (they travel from the model processes)
            result["gpu_used_after_request_gb"] = gpu_used_gb()
            with open(server_log, "rb") as f:
                f.seek(log_offset)
                result["swaps"] = parse_swaps(f.read().decode(errors="replace"))
            log(f"{name}: request peak {peak_request.peak_gb} GB, after it {result['gpu_used_after_request_gb']} GB; "
                f"swaps {json.dumps(result['swaps'])}")
            # More measured requests (--measured-requests): end to end and overhead of each, for their spread.
            result["more_requests"] = []
            for i in range(args.measured_requests - 1):
                with grpcclient.InferenceServerClient(url) as client:
                    first = read_stats_after(client, 2 + i)
                    t0 = time.perf_counter()
                    grpc_client.generate(url, request_values(args, args.steps), shared_memory=shm)
                    e2e = time.perf_counter() - t0
                    more = {"e2e_s": e2e, **overhead(e2e, stats_delta(first, read_stats_after(client, 3 + i)))}
                result["more_requests"].append(more)
                log(f"{name}: measured request again {e2e:.2f}s, overhead {more['triton_overhead_s']:.3f}s")
        finally:
            try:
                stack.close()
            finally:
                server.stop()
    result["peak_gpu_memory_gb"] = peak.peak_gb
    result["gpu_processes_at_peak_gb"] = peak.processes_at_peak
    return finish_variant(name, result, out, before, after, args)


def run_parity_probes(url: str, args, result: dict[str, Any], low_memory: bool) -> None:
    """The text encoder and one high-noise expert forward on the baseline's own first-step inputs."""
    ref = np.load(args.workdir / "baseline_first_step.npz")
    embeds = np.concatenate([ref["prompt_embeds"], ref["negative_prompt_embeds"]]).astype(np.float32)
    text = np.array([[args.prompt.encode()], [args.negative_prompt.encode()]], dtype=object)
    served_embeds = infer_model(url, "text_encoder", {"text": text}, "prompt_embeds")
    hidden = np.concatenate([ref["hidden_states"]] * 2).astype(np.float32)
    timestep = np.full((2, 1), float(ref["timestep"].ravel()[0]), dtype=np.float32)
    noise = infer_model(url, EXPERTS[0], {"hidden_states": hidden, "timestep": timestep,
                                          "encoder_hidden_states": embeds}, "noise_pred")
    ref_noise = np.concatenate([ref["noise_pred_cond"], ref["noise_pred_uncond"]])
    result["parity"] = {
        "prompt_embeds_cosine": cosine(served_embeds, embeds),
        "noise_pred_cosine": cosine(noise, ref_noise),
        "noise_pred_cosine_cond": cosine(noise[:1], ref_noise[:1]),
        "noise_pred_rel_l2": float(np.linalg.norm((noise - ref_noise).astype(np.float64))
                                   / np.linalg.norm(ref_noise.astype(np.float64))),
    }
    log(f"parity probes {result['parity']}")
    if low_memory:  # the probe loaded the high-noise expert: back to host memory, as between requests
        infer_model(url, EXPERTS[0], {"release": np.ones((1, 1), dtype=bool)}, None)


def finish_variant(name: str, result: dict[str, Any], out: dict, before: dict, after: dict, args) -> dict[str, Any]:
    result["stage_seconds"] = out["stage_seconds"]
    models = stats_delta(before, after)
    result["models"] = models
    count_steps(result)
    result["denoise_compute_s"] = sum(models[e]["compute_infer_s"] for e in EXPERTS if result["steps"][e])
    result["text_encoder_s"] = models.get("text_encoder", {}).get("compute_infer_s")
    result["vae_decode_s"] = models.get("vae_decoder", {}).get("compute_infer_s")
    result["component_compute_s"] = component_compute(models)
    result.update(overhead(result["e2e_s"], models))
    video = out["video"]
    np.save(args.workdir / f"video-{name}.npy", video)  # for --reference-variant
    result["parity"]["frames_mean_std"] = [float(video.mean()), float(video.std())]
    if args.baseline:
        frames = np.load(args.workdir / "baseline_frames.npy")
        result["parity"].update({
            "psnr_db": psnr(video, frames), "ssim": ssim(video, frames),
            # how much there is to match: random weights may decode to low-contrast frames
            "baseline_frames_mean_std": [float(frames.mean()), float(frames.std())],
        })
    result["status"] = "ok"
    return result


def component_compute(models: dict[str, dict]) -> float:
    """The component models' compute_infer seconds (the orchestrator's own excluded)."""
    return sum(models[m]["compute_infer_s"] for m in COMPONENT_MODELS if m in models)


def overhead(e2e_s: float, models: dict[str, dict]) -> dict[str, Any]:
    """Triton overhead of one request: client end to end minus the component models' compute_infer."""
    compute = component_compute(models)
    orchestrator = models.get("wan22_t2v", {})
    return {
        "triton_overhead_s": e2e_s - compute,
        "triton_overhead_pct": 100 * (e2e_s - compute) / e2e_s,
        # Where it goes: every model's queueing; BLS plus the orchestrator's own work (its compute minus the
        # components'); the rest is the client and the transport of the request and the response.
        "overhead_split_s": {
            "queue_all_models": sum(m.get("queue_s", 0.0) for m in models.values()),
            "bls_and_orchestrator": orchestrator.get("compute_infer_s", 0.0) - compute,
            "client_and_transport": e2e_s - sum(orchestrator.get(k, 0.0) for k in (
                "queue_s", "compute_input_s", "compute_infer_s", "compute_output_s")),
        },
    }


def count_steps(result: dict[str, Any]) -> None:
    """Steps and mean step time per expert from Triton's statistics (`models`). In the low-memory mode the
    experts' counts include the orchestrator's release-only requests (not steps), and the first step of each
    expert includes its load: `step_s_without_swaps` takes the logged loads and releases out."""
    models, swaps = result["models"], result.get("swaps", {})
    releases = {e: sum(c["expert"] == e for c in swaps.get("orchestrator_release_calls", [])) for e in EXPERTS}
    steps = {e: models.get(e, {}).get("count", 0) - releases[e] for e in EXPERTS}
    result["steps"] = steps
    result["step_s"] = {e: models[e]["compute_infer_s"] / steps[e] for e in EXPERTS if steps[e]}
    if any(e in swaps for e in EXPERTS):
        result["step_s_without_swaps"] = {
            e: (models[e]["compute_infer_s"] - sum(swaps.get(e, {}).get("load_s", []))
                - sum(swaps.get(e, {}).get("release_s", []))) / steps[e]
            for e in EXPERTS if steps[e]
        }


SWAP_LINES = {
    "load": re.compile(r'offload (\S+): load #\d+: ([\d.]+) GB -> \S+ in ([\d.]+)s'),
    "release": re.compile(r'offload (\S+): release #\d+ in ([\d.]+)s'),
    "orchestrator_release": re.compile(r'low-memory: released (\S+) after step (\d+), .*? in ([\d.]+)s'),
}


def parse_swaps(text: str) -> dict[str, Any]:
    """The low-memory mode's log lines of one request: each model's loads (GB, s) and releases (s), and the
    orchestrator's release calls (after which step, round trip s)."""
    out: dict[str, Any] = {}
    for m in SWAP_LINES["load"].finditer(text):
        out.setdefault(m.group(1), {"load_s": [], "release_s": []})
        out[m.group(1)]["load_s"].append(float(m.group(3)))
        out[m.group(1)]["gb"] = float(m.group(2))
    for m in SWAP_LINES["release"].finditer(text):
        out.setdefault(m.group(1), {"load_s": [], "release_s": []})["release_s"].append(float(m.group(2)))
    calls = [{"expert": m.group(1), "after_step": int(m.group(2)), "round_trip_s": float(m.group(3))}
             for m in SWAP_LINES["orchestrator_release"].finditer(text)]
    if calls:
        out["orchestrator_release_calls"] = calls
    return out


def compare_to_reference(results: dict[str, Any], args) -> None:
    """Each variant's video against the reference variant's (same seed): equal?, PSNR, max |difference|."""
    ref_name = args.reference_variant
    ref_path = args.workdir / f"video-{ref_name}.npy"
    if not ref_name or not ref_path.exists():
        return
    ref = np.load(ref_path)
    for name, row in results["variants"].items():
        path = args.workdir / f"video-{name}.npy"
        if name == ref_name or row.get("status") != "ok" or not path.exists():
            continue
        video = np.load(path)
        row["vs_reference"] = {
            "reference": ref_name, "equal": bool(np.array_equal(video, ref)), "psnr_db": psnr(video, ref),
            "max_abs_diff": int(np.abs(video.astype(np.int16) - ref.astype(np.int16)).max()),
        }
        log(f"{name} vs {ref_name}: {row['vs_reference']}")


def text_encoder_cpu_probe(checkpoint: Path, tokens: int, batch: int = 2) -> dict[str, Any]:
    """Running the text encoder from host memory instead of swapping it in: one UMT5 block (random weights) on
    the CPU at the request's shape, per dtype, times the number of layers (embedding and final norm left out)."""
    import torch
    from transformers import UMT5Config
    from transformers.models.umt5.modeling_umt5 import UMT5Block

    config = UMT5Config.from_pretrained(checkpoint / "text_encoder")
    out: dict[str, Any] = {"layers": config.num_layers, "tokens": tokens, "batch": batch,
                           "threads": torch.get_num_threads()}
    for dtype in (torch.bfloat16, torch.float32):
        torch.manual_seed(0)
        block = UMT5Block(config, layer_idx=0).to(dtype).eval()
        x = torch.randn(batch, tokens, config.d_model, dtype=dtype)
        with torch.inference_mode():
            block(x[:, :8])  # warm-up (kernel selection), short
            t0 = time.perf_counter()
            block(x)
            seconds = time.perf_counter() - t0
        out[str(dtype).replace("torch.", "")] = {"block_s": seconds, "encoder_s_estimate": seconds * config.num_layers}
        del block, x
    return out


# --------------------------------------------------------------------------- baseline


def run_baseline(checkpoint: Path, args, repeat: bool = False) -> dict[str, Any]:
    """The diffusers side in its own process; `repeat`: again after the variants (drift check, no matmul)."""
    workdir = args.workdir / "repeat" if repeat else args.workdir
    out_json = workdir / "baseline.json"
    cmd = [
        sys.executable, "-m", "perf.gpu_baseline", "--checkpoint", str(checkpoint), "--workdir", str(workdir),
        "--json", str(out_json), "--device", "cuda" if args.device == "gpu" else "cpu", "--precision", args.precision,
        "--weights-seed", str(args.weights_seed), "--prompt", args.prompt, "--negative-prompt", args.negative_prompt,
        "--height", str(args.height), "--width", str(args.width), "--num-frames", str(args.num_frames),
        "--steps", str(args.steps), "--guidance-scale", str(args.guidance_scale),
        "--guidance-scale-2", str(args.guidance_scale_2), "--seed", str(args.seed),
    ]
    if args.device == "gpu" and not repeat:
        cmd.append("--matmul")
    peak = GpuMemoryPeak()
    with peak, open(args.out_dir / "baseline.log", "a" if repeat else "w") as blog:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            blog.write(line)
            if not line.startswith(("Loading", "  deprecate")):
                log("baseline| " + line.rstrip())
        code = proc.wait()
    if code != 0:
        raise RuntimeError(f"baseline process failed with exit code {code} (see baseline.log)")
    result = json.loads(out_json.read_text())
    result["label"] = "diffusers BF16 (baseline, again last)" if repeat else "diffusers BF16 (baseline)"
    result["peak_gpu_memory_gb"] = peak.peak_gb
    result["step_s_each"] = result.pop("step_s")
    result["steps"] = {e: len(v) for e, v in result["step_s_each"].items()}
    result["step_s"] = {e: float(np.mean(v)) for e, v in result["step_s_each"].items() if v}
    result["denoise_compute_s"] = sum(sum(v) for v in result["step_s_each"].values())
    result["component_compute_s"] = result["text_encoder_s"] + result["denoise_compute_s"] + result["vae_decode_s"]
    result["other_s"] = result["e2e_s"] - result["component_compute_s"]
    result["status"] = "ok"
    return result


# --------------------------------------------------------------------------- report


def add_derived(results: dict[str, Any]) -> None:
    base = results.get("baseline", {})
    flops = results["workload"]["transformer_step_pflop"] * 1e15
    matmul = base.get("matmul_bf16_tflops")
    for row in [base, *results["variants"].values(), results.get("baseline_repeat", {})]:
        if row.get("status") != "ok":
            continue
        total_steps = sum(row["steps"].values())
        if total_steps:
            row["step_mean_s"] = row["denoise_compute_s"] / total_steps
            row["transformer_tflops"] = flops / row["step_mean_s"] / 1e12
            if matmul:
                row["transformer_pct_of_matmul"] = 100 * row["transformer_tflops"] / matmul
        if base.get("status") == "ok" and row is not base:
            row["speedup"] = base["e2e_s"] / row["e2e_s"]
            row["step_speedup"] = base["step_mean_s"] / row["step_mean_s"]


def _f(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def render_table(results: dict[str, Any]) -> str:
    head = ("| system | end-to-end s | speed-up | text enc s | high-noise step s | low-noise step s | VAE decode s "
            "| transformer TFLOP/s (% of matmul) | peak GPU GB | Triton overhead s (%) | PSNR dB | SSIM "
            "| noise-pred cos |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    rows = [("baseline", results.get("baseline", {}))] + list(results["variants"].items())
    if results.get("baseline_repeat"):
        rows.append(("baseline_repeat", results["baseline_repeat"]))
    for key, row in rows:
        label = row.get("label", key)
        if row.get("status") != "ok":
            status = " ".join(str(row.get("status", "not run")).split())[:160].replace("|", "/")
            lines.append(f"| {label} | {status} |" + " |" * 11)
            continue
        step = row.get("step_s", {})
        tflops = row.get("transformer_tflops")
        pct = row.get("transformer_pct_of_matmul")
        parity = row.get("parity", {})
        overhead = (f"{row['triton_overhead_s']:.2f} ({row['triton_overhead_pct']:.1f}%)"
                    if "triton_overhead_s" in row else f"({row.get('other_s', 0):.2f} other)")
        lines.append(
            f"| {label} | {row['e2e_s']:.2f} | {'1.000' if key == 'baseline' else _f(row.get('speedup'), '.3f')}x "
            f"| {_f(row.get('text_encoder_s'), '.3f')} | {_f(step.get('transformer_high_noise'), '.3f')} "
            f"| {_f(step.get('transformer_low_noise'), '.3f')} | {_f(row.get('vae_decode_s'), '.2f')} "
            f"| {_f(tflops, '.0f')}{f' ({pct:.0f}%)' if pct else ''} | {_f(row.get('peak_gpu_memory_gb'), '.1f')} "
            f"| {overhead} | {_f(parity.get('psnr_db'), '.1f')} | {_f(parity.get('ssim'), '.4f')} "
            f"| {_f(parity.get('noise_pred_cosine'), '.6f')} |"
        )
    return "\n".join(lines)


def _vs_text(vs: dict[str, Any] | None) -> str:
    if not vs:
        return "-"
    return "identical" if vs["equal"] else f"PSNR {vs['psnr_db']:.1f} dB, max diff {vs['max_abs_diff']}"


def render_low_memory_table(results: dict[str, Any]) -> str:
    """Memory and swap costs per variant (rows with the measured request's peak, i.e. this script's newer runs)."""
    rows = [(k, r) for k, r in results["variants"].items()
            if r.get("status") == "ok" and "peak_gpu_memory_request_gb" in r]
    if not rows:
        return ""
    ref = results["variants"].get(results.get("meta", {}).get("reference_variant", ""), {})
    head = ("| system | end-to-end s | time vs reference | peak GPU GB, whole run | peak GPU GB, measured request "
            "| GPU GB after request | text-encoder load s | expert loads s (GB each) | releases s (expert) "
            "| step s high / low (without swaps) | video vs reference |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for key, r in rows:
        swaps = r.get("swaps", {})
        te = swaps.get("text_encoder", {})
        expert_loads = [f"{e.split('_')[1]} {', '.join(f'{v:.2f}' for v in swaps[e]['load_s'])} ({swaps[e].get('gb', 0):.1f})"
                        for e in EXPERTS if swaps.get(e, {}).get("load_s")]
        releases = [f"{e.split('_')[1]} {', '.join(f'{v:.2f}' for v in swaps[e]['release_s'])}"
                    for e in EXPERTS if swaps.get(e, {}).get("release_s")]
        vs = r.get("vs_reference")
        bare = r.get("step_s_without_swaps") or r.get("step_s", {})
        step = " / ".join(f"{r['step_s'][e]:.3f} ({bare[e]:.3f})" for e in EXPERTS if e in r.get("step_s", {}))
        ratio = (f"{r['e2e_s'] / ref['e2e_s']:.3f}x" if ref.get("status") == "ok" and ref is not r else "-")
        lines.append(
            f"| {r['label']} | {r['e2e_s']:.2f} | {ratio} | {_f(r.get('peak_gpu_memory_gb'), '.1f')} "
            f"| {_f(r.get('peak_gpu_memory_request_gb'), '.1f')} | {_f(r.get('gpu_used_after_request_gb'), '.1f')} "
            f"| {', '.join(f'{v:.2f}' for v in te.get('load_s', [])) or '-'} | {'; '.join(expert_loads) or '-'} "
            f"| {'; '.join(releases) or '-'} | {step or '-'} "
            f"| {_vs_text(vs)} |"
        )
    return "\n".join(lines)


def write_chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [results.get("baseline", {})] + list(results["variants"].values())
    rows = [r for r in rows if r.get("status") == "ok"]
    if not rows:
        return
    def expert(name: str):
        return lambda r: r["step_s"].get(name, 0) * r["steps"].get(name, 0)

    parts = [
        ("text encoder", lambda r: r.get("text_encoder_s") or 0, "#8da0cb"),
        ("high-noise expert", expert("transformer_high_noise"), "#e78ac3"),
        ("low-noise expert", expert("transformer_low_noise"), "#fc8d62"),
        ("VAE decode", lambda r: r.get("vae_decode_s") or 0, "#66c2a5"),
        ("other (Triton/BLS, scheduler, I/O)", lambda r: r["e2e_s"] - r["component_compute_s"], "#b3b3b3"),
    ]
    fig, ax = plt.subplots(figsize=(11, 1.6 + 0.6 * len(rows)))
    labels = [r["label"] for r in rows][::-1]
    left = np.zeros(len(rows))
    for name, value, color in parts:
        widths = np.array([max(value(r), 0.0) for r in rows][::-1])
        ax.barh(labels, widths, left=left, color=color, label=name)
        left += widths
    for i, r in enumerate(rows[::-1]):
        note = f"{r['e2e_s']:.1f} s" + (f"  ({r['speedup']:.2f}x)" if "speedup" in r else "")
        ax.text(r["e2e_s"], i, "  " + note, va="center")
    w = results["workload"]
    ax.set_xlabel("seconds, end to end (one request)")
    ax.set_xlim(0, max(r["e2e_s"] for r in rows) * 1.25)
    ax.set_title(f"Wan2.2-T2V-A14B (random weights) {w['height']}x{w['width']}x{w['num_frames']}, "
                 f"{w['steps']} steps, CFG, {results['meta'].get('gpu', '?')}", pad=26)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=5, fontsize=8, frameon=False)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def save(results: dict[str, Any], args) -> None:
    add_derived(results)
    (args.out_dir / "results.json").write_text(json.dumps(results, indent=2, default=str))
    table = render_table(results)
    low_memory = render_low_memory_table(results)
    (args.out_dir / "table.md").write_text(table + "\n" + (f"\n{low_memory}\n" if low_memory else ""))
    try:
        write_chart(results, args.out_dir / "gpu_benchmark.png")
    except Exception as e:  # the numbers matter more than the picture
        log(f"chart failed: {type(e).__name__}: {e}")


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("gpu", "cpu"), default="gpu")
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--preset", choices=("a14b", "tiny"), default="a14b")
    parser.add_argument("--layers", type=int, default=None, help="override the experts' layer count (smoke tests)")
    parser.add_argument("--variants", default="fp8_attention,flash_attention", help=f"comma list of {list(VARIANTS)}")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--num-frames", type=int, default=81)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--no-shared-memory", dest="shared_memory", action="store_false",
                        help="frames in the gRPC response instead of a system shared-memory region")
    parser.add_argument("--warmup-steps", type=int, default=2, help="Triton warm-up request (2: both experts)")
    parser.add_argument("--guidance-scale", type=float, default=4.0)
    parser.add_argument("--guidance-scale-2", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=42, help="generation seed (initial noise), both sides")
    parser.add_argument("--weights-seed", type=int, default=1234, help="random weights, both sides")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT)
    parser.add_argument("--negative-prompt", default=DEFAULT_NEGATIVE)
    parser.add_argument("--out-dir", type=Path, default=ROOT / "perf" / "results" / "gpu")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/wan22-gpu-bench"))
    parser.add_argument("--startup-timeout", type=float, default=900.0)
    parser.add_argument("--shm-region", choices=("reused", "per-request"), default="reused",
                        help="with shared memory: one region for all requests of a variant, or a fresh one each")
    parser.add_argument("--measured-requests", type=int, default=1,
                        help="measured requests per variant; the table reports the first, results.json all")
    parser.add_argument("--server-arg", action="append", default=[], dest="server_args",
                        help="extra tritonserver argument, repeatable (e.g. --server-arg=--cuda-memory-pool-byte-size=0:1073741824)")
    parser.add_argument("--deadline-s", type=float, default=0.0,
                        help="skip a variant when less than its estimated time is left (0: no limit)")
    parser.add_argument("--no-baseline", dest="baseline", action="store_false",
                        help="Triton variants only (no diffusers run, no parity probes, no repeat)")
    parser.add_argument("--reference-variant", default="",
                        help="compare every variant's video with this variant's (e.g. bf16 for the *_lowmem ones)")
    parser.add_argument("--te-cpu-probe", action="store_true",
                        help="time one UMT5 block on the CPU (text encoder run from host memory, vs swapping it)")
    parser.add_argument("--no-repeat-baseline", dest="repeat_baseline", action="store_false",
                        help="skip running the baseline again after the variants (drift check)")
    parser.add_argument("--resume", action="store_true",
                        help="keep phases already in --out-dir/results.json (baseline files must be in --workdir)")
    return parser.parse_args(argv)


def estimate_s(spec: dict[str, str], results: dict[str, Any]) -> float:
    base = results.get("baseline", {}).get("e2e_s", 60.0)
    compile_s = {"none": 0.0, "regional": 150.0}[spec["compile"]] + (150.0 if spec["quantization"] != "none" else 0)
    swap_s = 60.0 if is_low_memory(spec) else 0.0  # host copies at start, a few swaps
    return 60.0 + 0.5 * base + base + compile_s + swap_s


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; known: {list(VARIANTS)}")
    if args.device == "gpu" and not nvidia_smi("name"):
        raise SystemExit("no NVIDIA GPU here (nvidia-smi); for a CPU dry run: --device cpu --preset tiny ...")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    args.workdir.mkdir(parents=True, exist_ok=True)
    args.stub_bin = stub_env_bin()

    from perf.gpu_checkpoint import write_configs_checkpoint
    from wan22_triton.checkpoint import read_checkpoint
    from wan22_triton.fast_path import transformer_step_flops

    checkpoint = write_configs_checkpoint(args.workdir / "checkpoint", args.preset, args.layers)
    info = read_checkpoint(checkpoint)
    transformer_config = json.loads((checkpoint / "transformer" / "config.json").read_text())
    latent = info.latent_shape(args.num_frames, args.height, args.width)[1:]
    import torch

    from wan22_triton.fast_path import random_component

    meta = random_component("transformer", checkpoint / "transformer", 0, torch.bfloat16, "meta")
    params_b = sum(p.numel() for p in meta.parameters()) / 1e9
    del meta
    gpu = nvidia_smi("name,driver_version,memory.total")
    versions = {"torch": torch.__version__, "python": platform.python_version()}
    for package in ("diffusers", "transformers", "torchao", "nvidia-cudnn-frontend", "flash-attn-4",
                    "nvidia-cutlass-dsl", "tritonclient"):
        with contextlib.suppress(Exception):
            import importlib.metadata

            versions[package] = importlib.metadata.version(package)
    results_path = args.out_dir / "results.json"
    previous = json.loads(results_path.read_text()) if args.resume and results_path.exists() else {}
    results: dict[str, Any] = {
        "meta": {
            "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "command": "python3 -m perf.gpu_benchmark " + " ".join(sys.argv[1:] if argv is None else argv),
            "gpu": gpu[0] if gpu else "cpu",
            "driver": gpu[1] if gpu else None,
            "gpu_memory_mib": gpu[2] if gpu else None,
            "host": platform.node(),
            "reference_variant": args.reference_variant,
            "server_args": args.server_args,
            "versions": versions,
            "checkpoint": (
                f"configs-only Wan2.2-T2V-A14B ({args.preset}"
                f"{f', {args.layers} layers' if args.layers else ''}), RANDOM weights "
                f"(weights seed {args.weights_seed}, fast_path.random_component; identical on both sides)"
            ),
            "baseline": "diffusers.WanPipeline, whole pipeline BF16 (VAE too), eager, default attention, no offload",
            "ours": "tritonserver (gRPC client -> BLS orchestrator -> python-backend models), ENGINE=torch, "
                    f"--device {args.device} --precision {args.precision}; frames returned "
                    + (f"through system shared memory (region {args.shm_region})" if args.shared_memory
                       else "in the gRPC response"),
        },
        "workload": {
            "height": args.height, "width": args.width, "num_frames": args.num_frames, "steps": args.steps,
            "guidance_scale": args.guidance_scale, "guidance_scale_2": args.guidance_scale_2, "flow_shift": 3.0,
            "seed": args.seed, "prompt": args.prompt, "negative_prompt": args.negative_prompt,
            "warmup_steps": args.warmup_steps,
            "latent_shape": [info.in_channels, *latent],
            "transformer_params_b": params_b,
            "transformer_step_pflop": transformer_step_flops(transformer_config, latent, info.text_len, batch=2) / 1e15,
        },
        "baseline": previous.get("baseline", {}),
        "variants": {k: v for k, v in previous.get("variants", {}).items() if v.get("status") == "ok"},
    }
    log(f"{results['meta']['gpu']}: {results['meta']['checkpoint']}; one CFG step = "
        f"{results['workload']['transformer_step_pflop']:.3f} PFLOP")

    if args.te_cpu_probe:
        results["text_encoder_cpu_probe"] = text_encoder_cpu_probe(checkpoint, info.text_len)
        log(f"text encoder on the CPU (probe): {results['text_encoder_cpu_probe']}")
    if not args.baseline:
        results["baseline"] = {"status": "not run (--no-baseline)"}
        args.repeat_baseline = False
    elif results["baseline"].get("status") != "ok" or not (args.workdir / "baseline_frames.npy").exists():
        try:
            results["baseline"] = run_baseline(checkpoint, args)
        except Exception as e:
            results["baseline"] = {"status": f"failed: {type(e).__name__}: {e}"}
            save(results, args)
            raise
        save(results, args)
        log(f"baseline: {results['baseline']['e2e_s']:.2f}s end to end; GPU memory after exit: {wait_gpu_free()} GB")

    for name in names:
        if results["variants"].get(name, {}).get("status") == "ok":
            continue
        spec = VARIANTS[name]
        left = args.deadline_s - (time.monotonic() - _T0) if args.deadline_s else float("inf")
        if left < estimate_s(spec, results):
            results["variants"][name] = {"label": spec["label"], "status": f"skipped: {left:.0f}s left of the deadline"}
            log(f"{name}: skipped ({left:.0f}s left)")
            save(results, args)
            continue
        try:
            results["variants"][name] = run_variant(name, spec, checkpoint, args, results["baseline"])
        except Exception as e:
            log(f"{name}: FAILED {type(e).__name__}: {e}")
            results["variants"][name] = {"label": spec["label"], "status": f"failed: {type(e).__name__}: {e}"[:400]}
        save(results, args)
        log(f"{name}: GPU memory after stop: {wait_gpu_free()} GB")

    compare_to_reference(results, args)
    if args.repeat_baseline:
        try:
            results["baseline_repeat"] = run_baseline(checkpoint, args, repeat=True)
            log(f"baseline again: {results['baseline_repeat']['e2e_s']:.2f}s end to end")
        except Exception as e:
            results["baseline_repeat"] = {"label": "diffusers BF16 (baseline, again last)",
                                          "status": f"failed: {type(e).__name__}: {e}"}
    save(results, args)
    print()
    print(render_table(results))
    print(f"\nresults: {args.out_dir}/results.json, table.md, gpu_benchmark.png")


if __name__ == "__main__":
    main()
