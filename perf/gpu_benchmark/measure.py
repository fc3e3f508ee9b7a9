"""The measurements: the diffusers baseline in its own process, and each Triton variant on the real tritonserver.

A variant: export (variants.py), start tritonserver (with the stub's Python environment first on PATH and the
events file in its environment), a warm-up request (both experts; compiles where asked), the parity probes (text
encoder and one high-noise expert forward on the baseline's own first-step inputs), then the measured request(s)
over gRPC to the BLS orchestrator, frames back through system shared memory unless --no-shared-memory, with
Triton's statistics read before and after (stats.py) and the GPU memory polled (gpu_monitor.py); stop the server.
The baseline's per-step times come from synchronised hooks (cond + uncond calls per step, perf/gpu_baseline.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from wan22_triton.components.expert import ENCODER_HIDDEN_STATES, HIDDEN_STATES, NOISE_PRED, RELEASE_INPUT, TIMESTEP
from wan22_triton.components.orchestrator import ORCHESTRATOR, STAGE_SECONDS, VIDEO
from wan22_triton.components.text_encoder import PROMPT_EMBEDS, TEXT, TEXT_ENCODER
from wan22_triton.components.vae_decoder import VAE_DECODER
from wan22_triton.operations import events
from wan22_triton.options import Device
from wan22_triton.request.contract import (GUIDANCE_SCALE, GUIDANCE_SCALE_2, HEIGHT, NEGATIVE_PROMPT, NUM_FRAMES,
                                           NUM_INFERENCE_STEPS, PROMPT, SEED, WIDTH)

from . import ROOT, log
from .gpu_monitor import GpuMemoryPeak, gpu_used_gb, nvidia_smi
from .quality import cosine, psnr, ssim
from .stats import component_compute, count_steps, overhead, read_stats_after, stats_delta, swaps
from .variants import EXPERTS, Variant, export_variant


def stub_env_bin() -> str | None:
    """The numpy<2 venv the Python-backend stub must run in (gpu-bundle's $TRITON_STUB_ENV), made to see this repo;
    its bin/ goes first on the server's PATH."""
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


def prepare_folders(args: Any, cpu_dry_run: str, need_gpu: bool = True) -> None:
    """A GPU run refuses to start without an NVIDIA GPU (`cpu_dry_run`: the flags to use instead); then --out-dir and
    --workdir exist."""
    if need_gpu and args.device == Device.GPU and not nvidia_smi("name"):
        raise SystemExit(f"no NVIDIA GPU here (nvidia-smi); for a CPU dry run: {cpu_dry_run}")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    args.workdir.mkdir(parents=True, exist_ok=True)


def configs_checkpoint(args: Any) -> Path:
    """The benchmarks' checkpoint in --workdir (configs only: each component makes random weights where it loads,
    --preset and --layers), and `args.stub_bin` for the servers they start."""
    from perf.gpu_checkpoint import write_configs_checkpoint

    args.stub_bin = stub_env_bin()
    return write_configs_checkpoint(args.workdir / "checkpoint", args.preset, args.layers)


def infer_model(url: str, model: str, inputs: dict[str, np.ndarray], output: str | None) -> np.ndarray | None:
    """One request to one served model (the parity probes, a release)."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import np_to_triton_dtype

    tensors = []
    for name, array in inputs.items():
        tensor = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    with grpcclient.InferenceServerClient(url) as client:
        result = client.infer(model, tensors, outputs=[grpcclient.InferRequestedOutput(output)] if output else None)
    return result.as_numpy(output) if output else None


def request_values(args, steps: int) -> dict[str, Any]:
    return {
        PROMPT: args.prompt, NEGATIVE_PROMPT: args.negative_prompt, NUM_FRAMES: args.num_frames,
        HEIGHT: args.height, WIDTH: args.width, NUM_INFERENCE_STEPS: steps,
        GUIDANCE_SCALE: args.guidance_scale, GUIDANCE_SCALE_2: args.guidance_scale_2, SEED: args.seed,
    }


def bundle_backend_args() -> list[str]:
    """gpu-bundle's python backend with its 3.12 stub, where the bundle is active ($TRITON_BACKENDS)."""
    backends = os.environ.get("TRITON_BACKENDS")
    return [f"--backend-directory={backends}"] if backends else []


def start_server(name: str, repo: Path, args):
    """tritonserver on the variant's repository; its log and events file next to the results."""
    from server.triton_server import TritonServer

    extra = ["--log-info=true", *args.server_args, *bundle_backend_args()]
    events_file = args.out_dir / f"events-{name}.jsonl"
    events_file.unlink(missing_ok=True)
    server = TritonServer(repo, log_file=args.out_dir / f"tritonserver-{name}.log", extra_args=extra,
                          startup_timeout=args.startup_timeout, env={events.EVENTS_FILE_ENV: str(events_file)},
                          path_first=[args.stub_bin] if args.stub_bin else [])
    return server, events_file


def run_variant(name: str, variant: Variant, checkpoint: Path, args) -> dict[str, Any]:
    import tritonclient.grpc as grpcclient

    from clients import grpc_client

    result: dict[str, Any] = variant.results_row()
    repo = args.workdir / f"repo-{name}"
    export_variant(checkpoint, repo, variant, args)
    server, events_file = start_server(name, repo, args)
    peak = GpuMemoryPeak()
    with peak:
        t0 = time.perf_counter()
        server.start()
        result["server_start_s"] = time.perf_counter() - t0
        log(f"{name}: tritonserver ready in {result['server_start_s']:.1f}s (log {server.log_file})")
        stack = contextlib.ExitStack()
        try:
            url, key, admin = server.grpc_url, server.admin_key, server.admin_headers("grpc")  # shm, statistics
            with grpcclient.InferenceServerClient(url) as client:
                result["tritonserver_version"] = client.get_server_metadata(as_json=True).get("version")
            # One shared-memory region for all of this variant's requests, as a long-lived client keeps it
            # (--shm-region per-request: a fresh one each time, as the one-shot CLI does).
            shm = args.shared_memory
            if shm and args.shm_region == "reused":
                with grpcclient.InferenceServerClient(url) as client:
                    size = grpc_client.video_bytes(client, request_values(args, args.steps), ORCHESTRATOR)
                shm = stack.enter_context(grpc_client.VideoSharedMemory(url, size, key))
            t0 = time.perf_counter()
            warm = grpc_client.generate(url, request_values(args, args.warmup_steps), shared_memory=shm, admin_key=key)
            result["warmup_s"] = time.perf_counter() - t0
            result["warmup_stage_seconds"] = warm[STAGE_SECONDS]
            log(f"{name}: warm-up request ({args.warmup_steps} steps) {result['warmup_s']:.1f}s")

            # Parity probes on the baseline's own first-step inputs (without a baseline: none).
            result["parity"] = {}
            if args.baseline:
                run_parity_probes(url, args, result, low_memory=variant.low_memory)

            with grpcclient.InferenceServerClient(url) as client:
                before = read_stats_after(client, 1, headers=admin)  # the warm-up request's statistics are in
                events_offset = events.end_offset(events_file)
                peak_request = GpuMemoryPeak()
                with peak_request:
                    t0 = time.perf_counter()
                    out = grpc_client.generate(url, request_values(args, args.steps), shared_memory=shm, admin_key=key)
                    result["e2e_s"] = time.perf_counter() - t0
                after = read_stats_after(client, 2, headers=admin)
            log(f"{name}: measured request ({args.steps} steps) {result['e2e_s']:.2f}s")
            result["peak_gpu_memory_request_gb"] = peak_request.peak_gb
            result["gpu_processes_at_request_peak_gb"] = peak_request.processes_at_peak
            result["gpu_used_after_request_gb"] = gpu_used_gb()
            # Every model writes its events before it answers: all of this request's are in the file.
            result["swaps"] = swaps(events.read_events(events_file, events_offset))
            log(f"{name}: request peak {peak_request.peak_gb} GiB, after it {result['gpu_used_after_request_gb']} GiB; "
                f"swaps {json.dumps(result['swaps'])}")
            # More measured requests (--measured-requests): end to end and overhead of each, for their spread.
            result["more_requests"] = []
            for i in range(args.measured_requests - 1):
                with grpcclient.InferenceServerClient(url) as client:
                    first = read_stats_after(client, 2 + i, headers=admin)
                    t0 = time.perf_counter()
                    grpc_client.generate(url, request_values(args, args.steps), shared_memory=shm, admin_key=key)
                    e2e = time.perf_counter() - t0
                    last = read_stats_after(client, 3 + i, headers=admin)
                    more = {"e2e_s": e2e, **overhead(e2e, stats_delta(first, last))}
                result["more_requests"].append(more)
                log(f"{name}: measured request again {e2e:.2f}s, overhead {more['triton_overhead_s']:.3f}s")
        finally:
            try:
                stack.close()
            finally:
                server.stop()
    result["peak_gpu_memory_gb"] = peak.peak_gb
    result["gpu_processes_at_peak_gb"] = peak.processes_at_peak
    return finish_variant(name, result, out, stats_delta(before, after), args)


def run_parity_probes(url: str, args, result: dict[str, Any], low_memory: bool) -> None:
    """The text encoder and one high-noise expert forward on the baseline's own first-step inputs."""
    ref = np.load(args.workdir / "baseline_first_step.npz")
    embeds = np.concatenate([ref[PROMPT_EMBEDS], ref["negative_prompt_embeds"]]).astype(np.float32)
    text = np.array([[args.prompt.encode()], [args.negative_prompt.encode()]], dtype=object)
    served_embeds = infer_model(url, TEXT_ENCODER, {TEXT: text}, PROMPT_EMBEDS)
    hidden = np.concatenate([ref[HIDDEN_STATES]] * 2).astype(np.float32)
    timestep = np.full((2, 1), float(ref[TIMESTEP].ravel()[0]), dtype=np.float32)
    noise = infer_model(url, EXPERTS[0], {HIDDEN_STATES: hidden, TIMESTEP: timestep,
                                          ENCODER_HIDDEN_STATES: embeds}, NOISE_PRED)
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
        infer_model(url, EXPERTS[0], {RELEASE_INPUT.name: np.ones((1, 1), dtype=bool)}, None)


def finish_variant(name: str, result: dict[str, Any], out: dict, models: dict, args) -> dict[str, Any]:
    """The measured request's per-model times, steps and overhead, and its video against the baseline's."""
    result[STAGE_SECONDS] = out[STAGE_SECONDS]
    result["models"] = models
    count_steps(result)
    result["denoise_compute_s"] = sum(models[e]["compute_infer_s"] for e in EXPERTS if result["steps"][e])
    if "parallel" in result:
        # Executions overlap (CFG halves at once), so the steps' wall time is the orchestrator's denoise stage;
        # per-expert compute sums are not step times here.
        result["denoise_compute_s"] = out[STAGE_SECONDS]["denoise"]
        result["step_s"] = {}
    result["text_encoder_s"] = models.get(TEXT_ENCODER, {}).get("compute_infer_s")
    result["vae_decode_s"] = models.get(VAE_DECODER, {}).get("compute_infer_s")
    result["component_compute_s"] = component_compute(models)
    if "parallel" not in result:  # with concurrent executions, compute sums exceed the wall time
        result.update(overhead(result["e2e_s"], models))
    video = out[VIDEO]
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


def run_baseline(checkpoint: Path, args, repeat: bool = False) -> dict[str, Any]:
    """The diffusers side in its own process; `repeat`: again after the variants (drift check, no matmul)."""
    workdir = args.workdir / "repeat" if repeat else args.workdir
    out_json = workdir / "baseline.json"
    cmd = [
        sys.executable, "-m", "perf.gpu_baseline", "--checkpoint", str(checkpoint), "--workdir", str(workdir),
        "--json", str(out_json), "--device", "cuda" if args.device == Device.GPU else "cpu", "--precision", args.precision,
        "--weights-seed", str(args.weights_seed), "--prompt", args.prompt, "--negative-prompt", args.negative_prompt,
        "--height", str(args.height), "--width", str(args.width), "--num-frames", str(args.num_frames),
        "--steps", str(args.steps), "--guidance-scale", str(args.guidance_scale),
        "--guidance-scale-2", str(args.guidance_scale_2), "--seed", str(args.seed),
    ]
    if args.device == Device.GPU and not repeat:
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
