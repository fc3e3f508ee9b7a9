"""perf_analyzer concurrency sweeps of `wan22_t2v` and of each component model, on real inputs.

    python -m perf.perf_analyzer_sweep --checkpoint checkpoints/tiny-wan2.2-t2v-a14b        # `make perf`
    python -m perf.perf_analyzer_sweep --checkpoint DIR --url localhost:8001 --concurrency 4  # a running server

Without `--url` the checkpoint is exported (`export.repository.export_repository`) into `--repository` (default: a
temporary folder) and served by a tritonserver started here. perf_analyzer reads Triton's statistics, an admin API,
so it sends the admin key (`-H`): the started server's, or with `--url` `--admin-key` / $WAN22_ADMIN_KEY.
Inputs (perf_analyzer `--input-data` JSON):

* the family's orchestrator (`wan22_t2v`, `wan22_i2v`, `wan22_ti2v`): one request per prompt of
  `perf/prompts.json`, the other request inputs from the flags; `--image FILE` as every request's picture (a model
  that requires one, without the flag: a generated gradient at the video's size);
* `text_encoder`: the same prompts; the experts, `vae_encoder` and `vae_decoder`: tensors of the shapes the
  orchestrator sends for that video size, from the checkpoint's `wan22_triton.components` specs, at the batch it
  sends (cond + uncond).

Each model is measured in count windows (`--measurement-request-count` requests each, at least 3 windows per
concurrency for the stability check), so multi-second requests need no long time windows. Written to
`perf/results/<label>/`: `<model>.csv` (perf_analyzer's), `<model>.json` (its input data), `<model>.log`,
`summary.json` (throughput and latency percentiles per concurrency, commands, machine) and `sweep.png`.
"""

from __future__ import annotations

import argparse
import base64
import csv
import io
import datetime as dt
import importlib
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from clients.admin import ADMIN_KEY_ENV, admin_headers, admin_key_from_env
from server.triton_server import TritonServer
from server.tritonserver_args import printable_command
from wan22_triton.checkpoint import CheckpointInfo, read_checkpoint
from wan22_triton.components.common import CompilePoint, ComponentSpec
from wan22_triton.components.expert import (TRANSFORMER_HIGH_NOISE, TRANSFORMER_LOW_NOISE, expert_models,
                                            transformer_spec)
from wan22_triton.components.orchestrator import ORCHESTRATOR, ORCHESTRATOR_MODELS
from wan22_triton.components.text_encoder import TEXT, TEXT_ENCODER, text_encoder_spec
from wan22_triton.components.vae_decoder import VAE_DECODER, vae_decoder_spec
from wan22_triton.components.vae_encoder import VAE_ENCODER, vae_encoder_spec
from wan22_triton.request.contract import (GUIDANCE_SCALE, GUIDANCE_SCALE_2, HEIGHT, IMAGE, NEGATIVE_PROMPT,
                                           NUM_FRAMES, NUM_INFERENCE_STEPS, PROMPT, SEED, WIDTH)
from wan22_triton.options import Device, Engine, Precision

from .gpu_benchmark.measure import bundle_backend_args, stub_env_bin
from .perf_analyzer_env import perf_analyzer_command

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ("concurrency", "warmup", "measurement_request_count", "stability_percentage", "max_trials", "engine",
            "device", "precision")
MODELS = (ORCHESTRATOR, TEXT_ENCODER, TRANSFORMER_HIGH_NOISE, TRANSFORMER_LOW_NOISE, VAE_ENCODER, VAE_DECODER)
# The orchestrator's request inputs this sweep has flags for (the prompts come from --prompts).
REQUEST_FLAGS = (NEGATIVE_PROMPT, NUM_FRAMES, HEIGHT, WIDTH, NUM_INFERENCE_STEPS, SEED, GUIDANCE_SCALE,
                 GUIDANCE_SCALE_2)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m perf.perf_analyzer_sweep", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, required=True, help="diffusers checkpoint (shapes; served unless --url)")
    p.add_argument("--url", help="running server (host:port of --protocol); default: export and start one here")
    p.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    p.add_argument("--admin-key", default=admin_key_from_env(),
                   help=f"with --url: the server's admin key (default ${ADMIN_KEY_ENV}), for its statistics")
    p.add_argument("--repository", type=Path, help="model repository to export into (default: a temporary one)")
    p.add_argument("--engine", type=Engine, choices=list(Engine), default=Engine.TORCH)
    p.add_argument("--device", type=Device, choices=list(Device), default=Device.CPU)
    p.add_argument("--precision", type=Precision, choices=list(Precision), default=Precision.FP32)
    p.add_argument("--replicas", type=int, default=1,
                   help="export: whole pipelines, one per device group (throughput of concurrent requests)")
    p.add_argument("--weights-seed", type=int,
                   help="export: random weights from this seed (a configs-only checkpoint, as the GPU benchmark's)")
    p.add_argument("--compare-to", type=Path,
                   help="another sweep's summary.json: throughput of each model and concurrency over that one's")
    p.add_argument("--models", help="comma-separated subset of: " + ", ".join(MODELS) + " (default: all served)")
    p.add_argument("--concurrency", type=int, default=4, help="sweep concurrency 1..N")
    p.add_argument("--prompts", type=Path, default=Path(__file__).with_name("prompts.json"))
    p.add_argument("--num-frames", type=int, default=9)
    p.add_argument("--height", type=int, default=32)
    p.add_argument("--width", type=int, default=48)
    p.add_argument("--num-inference-steps", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--guidance-scale", type=float)
    p.add_argument("--guidance-scale-2", type=float)
    p.add_argument("--negative-prompt")
    p.add_argument("--image", type=Path, help="PNG/JPEG/WebP sent with every request, to a model that takes one")
    p.add_argument("--data-entries", type=int, default=2, help="input-data entries per component model")
    p.add_argument("--warmup", type=int, default=2,
                   help="unmeasured requests per model before its sweep, times --concurrency (sent at that concurrency)")
    p.add_argument("--measurement-request-count", type=int, default=4, help="requests per count window")
    # perf_analyzer accepts a concurrency once the last 3 windows' max/min throughput and p90 latency ratios are within
    # 1 + this/100, and aborts (no CSV) after --max-trials windows. A shared 2-core box swings several-fold between
    # windows of multi-second requests, hence the loose default; use ~10-20 on a dedicated GPU machine.
    p.add_argument("--stability-percentage", type=float, default=1000.0)
    p.add_argument("--max-trials", type=int, default=5, help="windows per concurrency before giving up (>= 3)")
    p.add_argument("--label", help="results folder name (default: the UTC timestamp)")
    p.add_argument("--results", type=Path, default=ROOT / "perf" / "results")
    return p.parse_args(argv)


# --------------------------------------------------------------------------- input data


def _tensor(array: np.ndarray) -> dict[str, Any]:
    """One batch element as perf_analyzer JSON: little-endian base64 content plus its shape."""
    data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    return {"content": {"b64": base64.b64encode(data.tobytes()).decode("ascii")}, "shape": list(array.shape) or [1]}


def _bytes_tensor(data: bytes) -> dict[str, Any]:
    """One BYTES element as perf_analyzer's b64 content: Triton's serialized form (4-byte little-endian length)."""
    serialized = len(data).to_bytes(4, "little") + data
    return {"content": {"b64": base64.b64encode(serialized).decode("ascii")}, "shape": [1]}


def gradient_png(height: int, width: int) -> bytes:
    """A picture for image-to-video sweeps without --image: a colour gradient at the video's size."""
    from PIL import Image

    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([255 * x // max(width - 1, 1), 255 * y // max(height - 1, 1), np.full_like(x, 128)], axis=-1)
    out = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(out, "PNG")
    return out.getvalue()


def request_image(args: argparse.Namespace, info: CheckpointInfo) -> bytes | None:
    """The picture every orchestrator request carries: --image's, a gradient where the model requires one, else
    none."""
    if args.image is not None:
        return args.image.read_bytes()
    return gradient_png(args.height, args.width) if info.requires_image else None


def orchestrator_data(args: argparse.Namespace, prompts: list[str], image: bytes | None = None) -> list[dict[str, Any]]:
    """One orchestrator request per prompt; BYTES inputs as JSON string lists (the image as b64), numbers as
    one-element lists."""
    flags = {name: getattr(args, name) for name in REQUEST_FLAGS}
    common = {name: [value] for name, value in flags.items() if value is not None}
    if image is not None:
        common[IMAGE] = _bytes_tensor(image)
    return [{PROMPT: [prompt], **common} for prompt in prompts]


def component_spec(name: str, info: CheckpointInfo) -> ComponentSpec:
    specs = {TEXT_ENCODER: text_encoder_spec, VAE_ENCODER: vae_encoder_spec, VAE_DECODER: vae_decoder_spec}
    return specs[name](info) if name in specs else transformer_spec(info, name)


def component_data(name: str, info: CheckpointInfo, args: argparse.Namespace, prompts: list[str]) -> list[dict]:
    """Per-batch-element inputs of a component, at the shapes the orchestrator sends for the requested video."""
    if name == TEXT_ENCODER:
        return [{TEXT: [prompt]} for prompt in prompts]
    sizes = {**CompilePoint(args.num_frames, args.height, args.width, batch=1).sizes(info),
             "video_frames": info.image_frames(args.num_frames)}
    # Batch-of-one samples without their batch axis; timestep [1] -> [] travels as [1] (the config's reshape).
    samples = (component_spec(name, info).sample_inputs(sizes, seed=seed) for seed in range(args.data_entries))
    return [{k: _tensor(v[0]) for k, v in sample.items()} for sample in samples]


# --------------------------------------------------------------------------- perf_analyzer runs


# perf_analyzer picks each BLS composing model's version by its inference count in the window, and fails with this
# when one of them ran nothing inside it: a short count window can fall between a request's calls.
COMPOSING_MISSED = "failed to find the requested model version"


def run_model(name: str, url: str, args: argparse.Namespace, data_file: Path, batch: int, out: Path,
              composing: list[str], admin_key: str | None) -> dict[str, Any]:
    pa, env = perf_analyzer_command()
    base = [*pa, "-m", name, "-u", url, "-i", args.protocol, "-b", str(batch), "--input-data", str(data_file)]
    # -H reaches gRPC calls too, whatever its help says (checked against tritonserver 2.51).
    headers = admin_headers(admin_key, args.protocol) or {}
    base += [arg for header in headers.items() for arg in ("-H", ":".join(header))]
    result: dict[str, Any] = {"batch_size": batch}
    if args.warmup:  # first calls pay lazy initialisation (torch/oneDNN kernels for these shapes, CUDA context...)
        # at the sweep's top concurrency, so that every instance (every replica's) has had its first call: at
        # concurrency 1 only one replica warms up, and the other's first call (twice a warm one) lands in a window
        warmup = [*base, "--concurrency-range", str(args.concurrency),
                  "--request-count", str(args.warmup * args.concurrency)]
        result["warmup_command"] = printable_command(warmup, admin_key)
        subprocess.run(warmup, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    csv_file = out / f"{name}.csv"
    cmd = [
        *base,
        "--concurrency-range", f"1:{args.concurrency}",
        "--measurement-mode", "count_windows",
        "--measurement-request-count", str(args.measurement_request_count),
        "--stability-percentage", f"{args.stability_percentage:g}",
        "--max-trials", str(args.max_trials),
        "--percentile", "90",  # stabilise on p90 rather than the mean
        "-f", str(csv_file),
    ]
    if composing:  # BLS: perf_analyzer adds the called models' server-side statistics to its report (the .log)
        cmd.append("--bls-composing-models=" + ",".join(composing))
    result["command"] = printable_command(cmd, admin_key)
    print(f"[perf] {name}: batch {batch}, concurrency 1..{args.concurrency}", flush=True)
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if composing and proc.returncode != 0 and COMPOSING_MISSED in proc.stdout:
        result["retried"] = COMPOSING_MISSED
        print(f"[perf] {name}: a window saw no call of a composing model; the sweep runs once more", flush=True)
        proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    (out / f"{name}.log").write_text(proc.stdout)
    result["returncode"] = proc.returncode
    if proc.returncode != 0 or not csv_file.is_file():
        result["error"] = proc.stdout.strip().splitlines()[-3:]
        print(f"[perf] {name} FAILED (rc {proc.returncode}): " + " / ".join(result["error"]), file=sys.stderr)
    else:
        result["rows"] = read_csv(csv_file, batch)
    return result


def read_csv(path: Path, batch: int) -> list[dict[str, float]]:
    """perf_analyzer's CSV (latencies in us) -> per-concurrency throughput and latency percentiles in ms."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [
        {
            "concurrency": int(r["Concurrency"]),
            "infer_per_sec": float(r["Inferences/Second"]),
            "requests_per_sec": float(r["Inferences/Second"]) / batch,
            **{f"p{p}_ms": float(r[f"p{p} latency"]) / 1000 for p in (50, 90, 95, 99)},
        }
        for r in sorted(rows, key=lambda r: int(r["Concurrency"]))  # perf_analyzer sorts by throughput
    ]


# --------------------------------------------------------------------------- report


def machine_info(url: str, protocol: str) -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(), "platform": platform.platform(), "cpu_count": len(os.sched_getaffinity(0))
    }
    try:
        info["cpu"] = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        info["cpu"] = platform.processor()
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        pass
    if shutil.which("nvidia-smi"):
        query = ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"]
        smi = subprocess.run(query, capture_output=True, text=True)
        if smi.returncode == 0:
            info["nvidia_smi"] = smi.stdout.strip().splitlines()
    try:
        client = importlib.import_module(f"tritonclient.{protocol}").InferenceServerClient(url)
        meta = client.get_server_metadata()
        info["tritonserver"] = meta.version if protocol == "grpc" else meta["version"]
    except Exception as exc:  # noqa: BLE001 - informational only
        info["tritonserver"] = f"unknown ({exc.__class__.__name__})"
    try:  # the wheel's binary prints no version of its own
        info["tritonclient"] = importlib.metadata.version("tritonclient")
    except importlib.metadata.PackageNotFoundError:
        pass
    return info


def plot(results: dict[str, dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_tp, ax_lat) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, res in results.items():
        rows = res.get("rows") or []
        if not rows:
            continue
        conc = [r["concurrency"] for r in rows]
        label = f"{name} (b={res['batch_size']})"
        ax_tp.plot(conc, [r["infer_per_sec"] for r in rows], marker="o", label=label)
        ax_lat.plot(conc, [r["p90_ms"] for r in rows], marker="o", label=label)
    for ax, ylabel in ((ax_tp, "throughput (inferences/s)"), (ax_lat, "p90 latency (ms)")):
        ax.set_xlabel("concurrency")
        ax.set_ylabel(ylabel)
        ax.set_yscale("log")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(True, which="both", alpha=0.3)
    ax_lat.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def print_table(results: dict[str, dict[str, Any]]) -> None:
    print(f"\n{'model':<24}{'b':>3}{'conc':>6}{'infer/s':>11}{'req/s':>10}{'p50 ms':>11}{'p90 ms':>11}{'p99 ms':>11}")
    for name, res in results.items():
        if "error" in res:
            print(f"{name:<24}{res['batch_size']:>3}  FAILED (see {name}.log)")
        for r in res.get("rows", []):
            print(f"{name:<24}{res['batch_size']:>3}{r['concurrency']:>6}{r['infer_per_sec']:>11.3f}"
                  f"{r['requests_per_sec']:>10.3f}{r['p50_ms']:>11.1f}{r['p90_ms']:>11.1f}{r['p99_ms']:>11.1f}")


# --------------------------------------------------------------------------- main


def throughput_ratio(results: dict[str, Any], other: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per model and concurrency: this sweep's requests/s over `other`'s (e.g. 2 replicas over 1), where both ran."""
    ratios: dict[str, dict[str, float]] = {}
    for model, result in results.items():
        theirs = {r["concurrency"]: r["requests_per_sec"] for r in other.get("models", {}).get(model, {}).get("rows", [])}
        ratios[model] = {str(r["concurrency"]): r["requests_per_sec"] / theirs[r["concurrency"]]
                         for r in result.get("rows", []) if theirs.get(r["concurrency"])}
    return ratios


def sweep(args: argparse.Namespace, url: str, info: CheckpointInfo, out: Path, admin_key: str | None) -> dict[str, Any]:
    prompts = json.loads(args.prompts.read_text())
    image = request_image(args, info)
    if image is not None and not info.takes_image:
        raise SystemExit(f"--image: {info.family} generates video from text only; leave it out")
    encoder = [VAE_ENCODER] if info.takes_image else []
    orchestrator = ORCHESTRATOR_MODELS[info.family]
    served = [TEXT_ENCODER, *expert_models(info), *encoder, VAE_DECODER]
    models = [m.strip() for m in args.models.split(",")] if args.models else [orchestrator, *served]
    unknown = set(models) - {orchestrator, *served}
    if unknown:
        raise SystemExit(f"unknown models {sorted(unknown)}; this checkpoint serves {[orchestrator, *served]}")
    started = dt.datetime.now(dt.timezone.utc)
    results = {}
    for name in models:
        data = (orchestrator_data(args, prompts, image) if name == orchestrator
                else component_data(name, info, args, prompts))
        data_file = out / f"{name}.json"
        data_file.write_text(json.dumps({"data": data}))
        # Not with a version per replica: perf_analyzer 2.50 reads one version's statistics, then aborts on them
        # ("Server side statistics compute counts must be the same"; checked on the CPU).
        # Only the models its requests call: a composing model without calls fails the run (COMPOSING_MISSED).
        called = [m for m in served if m != VAE_ENCODER or image is not None]
        composing = called if name == orchestrator and args.replicas == 1 else []
        # The batch the orchestrator sends: cond + uncond to the text encoder and the experts, one video to the VAE.
        batch = 1 if name == orchestrator else component_spec(name, info).max_batch_size
        results[name] = run_model(name, url, args, data_file, batch, out, composing, admin_key)
    summary = {
        "date": started.isoformat(timespec="seconds"),
        "duration_s": round((dt.datetime.now(dt.timezone.utc) - started).total_seconds(), 1),
        "url": url,
        "protocol": args.protocol,
        "checkpoint": info.path,
        "request": {**{k: getattr(args, k) for k in (NUM_FRAMES, HEIGHT, WIDTH, NUM_INFERENCE_STEPS, SEED)},
                    IMAGE: str(args.image) if args.image else "gradient" if image else None},
        "latent_shape": list(info.latent_shape(args.num_frames, args.height, args.width)),
        "settings": {k: getattr(args, k) for k in SETTINGS},
        "machine": machine_info(url, args.protocol),
        "models": results,
    }
    if args.compare_to:
        summary["throughput_ratio"] = throughput_ratio(results, json.loads(args.compare_to.read_text()))
        summary["compared_to"] = str(args.compare_to)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    req = summary["request"]
    device = summary["machine"].get("gpus", [summary["machine"]["cpu"]])[0]
    title = (f"{Path(info.path).name}: {req[NUM_FRAMES]} frames {req[WIDTH]}x{req[HEIGHT]}, "
             f"{req[NUM_INFERENCE_STEPS]} steps | {device}")
    plot(results, out / "sweep.png", title)
    print_table(results)
    print(f"\n[perf] results in {out}")
    return summary


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.max_trials < 3:
        raise SystemExit("--max-trials must be >= 3: perf_analyzer's stability check compares the last 3 windows")
    info = read_checkpoint(args.checkpoint)
    out = args.results / (args.label or dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S"))
    out.mkdir(parents=True, exist_ok=True)
    if args.url:
        summary = sweep(args, args.url, info, out, args.admin_key)
    else:
        from export.repository import ExportOptions, export_repository

        with tempfile.TemporaryDirectory(prefix="wan22-perf-repo-") as tmp:
            repo = args.repository or Path(tmp)
            from wan22_triton.parallel.plan import ParallelPlan

            opts = ExportOptions(engine=args.engine, device=args.device, precision=args.precision,
                                 orchestrator_instances=args.concurrency, parallel=ParallelPlan(replicas=args.replicas),
                                 random_weights_seed=args.weights_seed)
            export_repository(args.checkpoint, repo, opts)
            # Load what this export configured, not every folder of a reused repository (other engines' models).
            load = [f"--load-model={d.name}" for d in sorted(repo.iterdir()) if (d / "config.pbtxt").is_file()]
            extra = ["--model-control-mode=explicit", *load, *bundle_backend_args()]
            stub_bin = stub_env_bin()  # on a GPU host: the bundle's numpy-1 venv for the Python-backend stub
            with TritonServer(repo, log_file=out / "tritonserver.log", extra_args=extra,
                              path_first=[stub_bin] if stub_bin else []) as server:
                print(f"[perf] tritonserver ready in {server.startup_seconds:.1f}s", flush=True)
                url = server.grpc_url if args.protocol == "grpc" else server.http_url
                summary = sweep(args, url, info, out, server.admin_key)
    return 1 if any("error" in r for r in summary["models"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
