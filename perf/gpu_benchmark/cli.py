"""What the GPU benchmarks share on their command lines (perf.gpu_benchmark, perf.lora_benchmark,
perf.first_request_benchmark): the workload and host flags, comma lists checked against their choices, the
deadline, and the record of a run (results.json `meta`; run.json and command.txt beside the results)."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from wan22_triton.options import Device, Precision

from . import ROOT, STARTED
from .gpu_monitor import nvidia_smi

DEFAULT_PROMPT = (
    "A red panda walks along a mossy branch in a misty forest at sunrise, soft golden light, cinematic, detailed"
)
DEFAULT_NEGATIVE = "blurry, low quality, distorted, static"
PACKAGES = ("diffusers", "transformers", "torchao", "nvidia-cudnn-frontend", "flash-attn-4", "nvidia-cutlass-dsl",
            "tritonclient", "peft")
RESULTS = ROOT / "perf" / "results" / "gpu"
COMMIT_ENV = "WAN22_COMMIT"  # the commit of a copied working tree that has no .git


def add_common_args(parser: argparse.ArgumentParser, *, name: str, workdir: str,
                    precision: Precision | None = Precision.BF16,
                    startup_timeout: float = 900.0) -> None:
    """Device, architecture, generation and host flags; --out-dir defaults to perf/results/gpu/NAME."""
    parser.add_argument("--device", type=Device, choices=list(Device), default=Device.GPU)
    parser.add_argument("--precision", type=Precision, choices=(Precision.BF16, Precision.FP32), default=precision,
                        help=None if precision else "default: bf16 on gpu, fp32 on cpu")
    parser.add_argument("--preset", choices=("a14b", "tiny"), default="a14b", help="architecture")
    parser.add_argument("--layers", type=int, default=None, help="override the experts' layer count (smoke tests)")
    parser.add_argument("--guidance-scale", type=float, default=4.0)
    parser.add_argument("--guidance-scale-2", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=42, help="generation seed (initial noise)")
    parser.add_argument("--weights-seed", type=int, default=1234, help="random weights, identical everywhere")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT)
    parser.add_argument("--negative-prompt", default=DEFAULT_NEGATIVE)
    parser.add_argument("--out-dir", type=Path, default=RESULTS / name)
    parser.add_argument("--workdir", type=Path, default=Path(workdir))
    parser.add_argument("--startup-timeout", type=float, default=startup_timeout)
    parser.add_argument("--server-arg", action="append", default=[], dest="server_args",
                        help="extra tritonserver argument, repeatable "
                             "(e.g. --server-arg=--cuda-memory-pool-byte-size=0:1073741824)")
    parser.add_argument("--deadline-s", type=float, default=0.0,
                        help="skip a part when less than its estimated time is left (0: no limit)")


def name_list(text: str, known, what: str) -> list[str]:
    """A comma list of names, each one of `known`."""
    names = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [v for v in names if v not in known]
    if unknown or not names:
        raise SystemExit(f"unknown or no {what} {unknown}; known: {list(known)}")
    return names


def time_left(args) -> float:
    """Seconds left of --deadline-s since this process started (inf without a deadline)."""
    return args.deadline_s - (time.monotonic() - STARTED) if args.deadline_s else float("inf")


def source_commit() -> str | None:
    """$WAN22_COMMIT, else the checkout's commit (`-dirty` with uncommitted changes), else None."""
    if os.environ.get(COMMIT_ENV):
        return os.environ[COMMIT_ENV]
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=10"], cwd=ROOT, text=True,
                             capture_output=True, timeout=20)
        if out.returncode == 0:
            return out.stdout.strip()
    return None


def machine_meta(module: str, argv: list[str] | None) -> dict[str, Any]:
    """Where and when a benchmark ran, with which command, commit and package versions (results.json `meta`)."""
    import torch

    gpu = nvidia_smi("name,driver_version,memory.total")
    versions = {"torch": torch.__version__, "python": platform.python_version()}
    for package in PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[package] = importlib.metadata.version(package)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return {
        "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": f"python3 -m {module} " + " ".join(sys.argv[1:] if argv is None else argv),
        "commit": source_commit(),
        "gpu": gpu[0] if gpu else "cpu", "driver": gpu[1] if gpu else None,
        "gpu_memory_mib": gpu[2] if gpu else None, "cuda_visible_devices": visible,
        "host": platform.node(), "versions": versions,
    }


def write_run_record(out_dir: Path, meta: dict[str, Any]) -> None:
    """run.json (card, driver, date, commit) and command.txt (the exact command) beside the results."""
    card = meta["gpu"] if not meta.get("gpu_memory_mib") else f"{meta['gpu']} ({meta['gpu_memory_mib']} MiB)"
    record = {"tool": meta["command"].split()[2], "card": card, "driver": meta.get("driver"),
              "cuda_visible_devices": meta.get("cuda_visible_devices"), "date_utc": meta["date_utc"],
              "commit": meta.get("commit"), "host": meta.get("host")}
    (out_dir / "run.json").write_text(json.dumps(record, indent=2) + "\n")
    visible = meta.get("cuda_visible_devices")
    (out_dir / "command.txt").write_text((f"CUDA_VISIBLE_DEVICES={visible} " if visible else "")
                                         + meta["command"] + "\n")


def print_results(table: str, out_dir: Path, files: str = "results.json, table.md") -> None:
    print()
    print(table)
    print(f"\nresults: {out_dir}/{files}")
